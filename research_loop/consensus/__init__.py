"""`agent_loop.py consensus RUN`: LLMs vote on a run's predicted spans (run), asked and cached (ballot),
and counted (votes)."""
