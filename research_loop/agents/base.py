"""The one interface every agent implements: propose(context) -> Proposal (and, optionally, observe).

The loop builds a fresh Context for every proposal; everything in it has already been redacted (no
secret-looking strings) and read without following links. An agent never touches files: it returns the
whole new train.py, and the loop vets, commits, sandboxes and scores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass
class Usage:
    """What one proposal cost: tokens from the API's usage fields, and dollars (None: not known)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float | None = 0.0
    calls: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.cost_usd = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        self.calls += other.calls

    @property
    def tokens_in(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens


@dataclass
class Context:
    """Everything an agent may see for one proposal; built fresh every time."""

    repo: Path  # repository root; agents read files only through their tools
    program_md: str  # the human's standing instructions
    current_state_md: str  # the loop's memory (CURRENT_STATE.md)
    recent_results: str  # the header and last rows of results.tsv
    train_py: str  # the train.py to change: the current best
    last_log_path: Path | None = None  # the last run's log, readable through view_file
    last_log_tail: str | None = None  # set when the last run crashed, so the agent can fix or abandon it
    feedback: str | None = None  # why the previous proposal went back (duplicate, closed direction, ...)
    in_flight: list[str] = field(default_factory=list)  # proposals queued or training now, one line each
    task_card: str = ""  # what the data is (written by prepare.py or by the user)
    runs_so_far: int = 0  # rows in this night's results.tsv (the builtin search seeds on it when resuming)


@dataclass
class Proposal:
    """One change to train.py: the whole new file, why, and the direction it belongs to."""

    train_py: str
    hypothesis: str
    direction: str
    usage: Usage = field(default_factory=Usage)
    key: str = ""  # the agent's own handle for it (Optuna's trial number), handed back in observe()


@dataclass(frozen=True)
class Outcome:
    """What became of a proposal, for agents that learn from it (Optuna's tell)."""

    key: str
    status: str  # keep, discard, crash, timeout, invalid
    strict_f1: float | None  # mean over the seeds/folds that ran (None when nothing was scored)
    trials: int  # seeds or folds that ran
    best_strict_f1: float | None  # the best's score at decision time, on the same trials


class AgentError(Exception):
    """The agent could not produce a proposal (API down past all retries, turn limit, ...).

    retryable=False: asking again cannot help (the search space is exhausted), so the loop stops.
    usage: what the failed attempt cost (it counts against the budget)."""

    def __init__(self, message: str, *, retryable: bool = True, usage: Usage | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.usage = usage or Usage()


@runtime_checkable
class Agent(Protocol):
    name: str

    def propose(self, context: Context) -> Proposal: ...


def observe(agent: Agent, outcome: Outcome) -> None:
    """Tell an agent what became of its proposal, when it wants to know."""
    hook = getattr(agent, "observe", None)
    if callable(hook):
        hook(outcome)
