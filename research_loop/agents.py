"""The one interface every agent implements: propose(context) -> Proposal."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class Usage:
    """What one proposal cost: tokens from the API's usage fields, and dollars."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.cost_usd += other.cost_usd
        self.calls += other.calls


@dataclass
class Context:
    """Everything an agent may see for one proposal; built fresh every iteration."""

    repo: Path  # repository root; agents read files only through their tools
    program_md: str  # the human's standing instructions
    current_state_md: str  # the loop's memory (CURRENT_STATE.md)
    recent_results: str  # the header and last rows of results.tsv
    train_py: str  # the current (best) train.py
    last_log_path: Path | None = None  # the last run's log, readable through view_file
    last_log_tail: str | None = None  # set when the last run crashed, so the agent can fix or abandon it
    feedback: str | None = None  # why the previous proposal went back (duplicate, closed direction, ...)


@dataclass
class Proposal:
    """One change to train.py: the whole new file, why, and the direction it belongs to."""

    train_py: str
    hypothesis: str
    direction: str
    usage: Usage = field(default_factory=Usage)


class AgentError(Exception):
    """The agent could not produce a proposal (API down past all retries, turn limit, ...)."""


class Agent(Protocol):
    name: str

    def propose(self, context: Context) -> Proposal: ...
