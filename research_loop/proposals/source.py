"""Proposals: the agent asked in a background thread (so runs keep training while it thinks), its failures
waited out with doubling backoff (tenacity), and each answer vetted before it costs a run.

No input ends the night: an AgentError, or any other exception from an agent or its SDK, is retried with
backoff (up to `max_failures` in a row; an AgentError with retryable=False stops the night at once). A
proposal whose text cannot be accepted (control characters, a lone surrogate, not compiling) becomes an
`invalid` row with the reason, which goes back to the agent; a duplicate or a closed direction is sent back
before any training, at most `max_bounces` times.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

from research_loop.agents.base import Agent, AgentError, Context, Proposal, Usage
from research_loop.hygiene import code_problem, line_problem, size_problem
from research_loop.night.stopping import Stop, StopControl

MAX_AGENT_WAIT_S = 300.0  # the back-off never waits longer than this between two asks


def compile_error(text: str) -> str | None:
    """Why train.py cannot be accepted as source, in one line, or None."""
    problem = code_problem(text)
    if problem:
        return f"train.py has {problem}"
    too_large = size_problem(text)
    if too_large:
        return f"train.py is {too_large}"
    try:
        compile(text, "train.py", "exec")
    except SyntaxError as exc:
        return f"train.py does not compile: line {exc.lineno}: {exc.msg}"
    except ValueError as exc:
        return f"train.py does not compile: {exc}"
    return None


def text_error(proposal: Proposal) -> str | None:
    """Why a proposal's text fields cannot be logged, or None."""
    for name, value in (("hypothesis", proposal.hypothesis), ("direction", proposal.direction)):
        problem = line_problem(value)
        if problem:
            return f"the {name} has {problem}"
    return None


@dataclass
class Asked:
    """What one ask produced: a proposal, or the reason the night must stop."""

    proposal: Proposal | None
    usage: Usage  # everything this ask cost, failed attempts included
    stop: Stop | None = None


class ProposalSource:
    """One outstanding ask at a time, answered in a thread; poll() hands back the result when it is there."""

    def __init__(self, agent: Agent, stop: StopControl, note: Callable[[str], None], retry_s: float = 60.0,
                 max_failures: int = 8, on_wait: Callable[[str], None] = lambda what: None,
                 patience_s: float = 1800.0):
        self.agent, self.stop, self.note = agent, stop, note
        self.retry_s, self.max_failures, self.on_wait = retry_s, max_failures, on_wait
        self.patience_s = patience_s  # failing this long in a row ends the night (--agent-patience)
        self.future: Future | None = None
        self.seconds = 0.0  # time spent waiting for the agent, for the timing figures

    @property
    def busy(self) -> bool:
        return self.future is not None

    def ask(self, context: Context) -> None:
        future: Future = Future()
        self.future = future
        threading.Thread(target=self._ask, args=(context, future), daemon=True, name="agent").start()

    def poll(self) -> Asked | None:
        if self.future is None or not self.future.done():
            return None
        asked, self.future = self.future.result(), None
        return asked

    def _ask(self, context: Context, future: Future) -> None:
        usage = Usage()

        def attempt() -> Proposal:
            started = time.monotonic()
            try:
                proposal = self.agent.propose(context)
            except AgentError as exc:
                usage.add(exc.usage)
                raise
            # a bug in an agent or its SDK: an agent error, not the end of the night
            except Exception as exc:
                self.note("agent raised " + traceback.format_exception_only(type(exc), exc)[-1].strip())
                raise AgentError(f"{type(exc).__name__}: {exc}") from exc
            finally:
                self.seconds += time.monotonic() - started
            usage.add(proposal.usage)
            return proposal

        def gave_up(state: RetryCallState) -> Stop:
            error, failing_s = state.outcome.exception(), state.seconds_since_start or 0.0
            if state.attempt_number >= self.max_failures:
                return Stop(f"the agent failed {state.attempt_number} times in a row: {error}", ok=False, kind="drain")
            return Stop(f"the agent stayed unreachable for {failing_s / 60:.0f} min (--agent-patience "
                        f"{self.patience_s / 60:g}): {error}", ok=False, kind="drain")

        def before_sleep(state: RetryCallState) -> None:
            self.note(f"agent error: {state.outcome.exception()}; asking again in {state.upcoming_sleep:.0f} s")
            self.on_wait(f"waiting for the agent (failure {state.attempt_number})")

        doubling = wait_exponential(multiplier=self.retry_s, max=MAX_AGENT_WAIT_S)
        retrying = Retrying(
            retry=retry_if_exception(lambda exc: not isinstance(exc, AgentError) or exc.retryable),
            stop=stop_after_attempt(self.max_failures) | stop_after_delay(self.patience_s),
            wait=lambda state: min(doubling(state), self.patience_s - (state.seconds_since_start or 0.0)),
            sleep=self._sleep, before_sleep=before_sleep, retry_error_callback=gave_up)
        try:
            outcome = retrying(attempt)
        except AgentError as exc:  # retryable=False: asking again cannot help
            future.set_result(Asked(None, usage, Stop(f"the agent cannot go on: {exc}", ok=False, kind="drain")))
        except _Stopped:
            future.set_result(Asked(None, usage, Stop("stopped while waiting for the agent")))
        else:
            stop = outcome if isinstance(outcome, Stop) else None
            future.set_result(Asked(None if stop else outcome, usage, stop))

    def _sleep(self, seconds: float) -> None:
        if not self.stop.sleep(seconds):
            raise _Stopped


class _Stopped(Exception):
    """A stop was asked for while waiting to ask the agent again."""
