"""The command line's work between its options and the pipeline: each `agent_loop.py` command (commands.py)
and `status`."""
