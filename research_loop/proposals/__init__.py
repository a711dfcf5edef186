"""The agent's answers: asked in the background (source), vetted and committed off the branch (intake)."""
