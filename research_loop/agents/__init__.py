"""The agents that propose changes to train.py, behind one interface (base.py); registry.py builds one."""

from .base import Agent, AgentError, Context, Outcome, Proposal, Usage

__all__ = ["Agent", "AgentError", "Context", "Outcome", "Proposal", "Usage"]
