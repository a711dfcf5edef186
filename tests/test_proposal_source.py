"""The agent is asked in a thread and its failures are waited out: doubling waits, a cap on failures in a
row, a patience in minutes, and a stop (Ctrl-C, STOP) that ends the wait at once. Real threads and real
clocks, with waits of a few hundredths of a second."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from research_loop.agents.base import AgentError, Context, Proposal, Usage
from research_loop.night.stopping import Budget, StopControl
from research_loop.proposals.source import ProposalSource


class Failing:
    """Fails `failures` times (an AgentError, or a plain bug when `bug`), then proposes; each failed call costs."""

    def __init__(self, failures: int, bug: bool = False, retryable: bool = True):
        self.failures, self.bug, self.retryable, self.calls = failures, bug, retryable, []

    def propose(self, context):
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            if self.bug:
                raise KeyError("choices")
            raise AgentError("API overloaded", retryable=self.retryable, usage=Usage(input_tokens=10, calls=1))
        return Proposal("x = 1\n", "h", "d", Usage(input_tokens=5, calls=1))


def ask(tmp_path: Path, agent, **options):
    notes, waits = [], []
    stop = StopControl(tmp_path, Budget())
    source = ProposalSource(agent, stop, notes.append, on_wait=waits.append, **options)
    source.ask(Context(repo=tmp_path, program_md="", current_state_md="", recent_results="", train_py=""))
    deadline = time.monotonic() + 30
    while (asked := source.poll()) is None:
        assert time.monotonic() < deadline, "the ask never finished"
        time.sleep(0.01)
    return asked, notes, waits, stop


def test_failures_are_retried_with_doubling_waits_and_every_attempt_is_paid_for(tmp_path):
    agent = Failing(3)
    asked, notes, waits, _ = ask(tmp_path, agent, retry_s=0.05, max_failures=5)
    assert asked.stop is None and asked.proposal.train_py == "x = 1\n"
    assert asked.usage.input_tokens == 3 * 10 + 5 and asked.usage.calls == 4
    gaps = [later - earlier for earlier, later in zip(agent.calls, agent.calls[1:])]
    assert [round(gap, 2) >= wait for gap, wait in zip(gaps, (0.05, 0.1, 0.2))] == [True] * 3
    assert notes[0] == "agent error: API overloaded; asking again in 0 s"
    assert waits == ["waiting for the agent (failure 1)", "waiting for the agent (failure 2)",
                     "waiting for the agent (failure 3)"]


def test_too_many_failures_in_a_row_stop_the_night_with_the_last_error(tmp_path):
    asked, _, _, _ = ask(tmp_path, Failing(10), retry_s=0.01, max_failures=3)
    assert asked.proposal is None and not asked.stop.ok and asked.stop.kind == "drain"
    assert str(asked.stop) == "the agent failed 3 times in a row: API overloaded"
    assert asked.usage.calls == 3


def test_an_agent_that_stays_unreachable_past_its_patience_stops_the_night_in_time(tmp_path):
    agent = Failing(1000)
    started = time.monotonic()
    asked, _, _, _ = ask(tmp_path, agent, retry_s=0.05, max_failures=1000, patience_s=0.6)
    assert str(asked.stop).startswith("the agent stayed unreachable for 0 min (--agent-patience 0.01): ")
    assert 0.6 <= time.monotonic() - started < 5  # the last wait is cut to what is left of the patience
    assert 4 <= len(agent.calls) <= 6  # 0.05 + 0.1 + 0.2 + 0.25 (cut): no wait past the patience


def test_a_bug_in_the_agent_is_noted_and_retried_like_an_agent_error(tmp_path):
    asked, notes, _, _ = ask(tmp_path, Failing(1, bug=True), retry_s=0.01)
    assert asked.stop is None and asked.proposal is not None
    assert notes[0] == "agent raised KeyError: 'choices'"
    assert notes[1] == "agent error: KeyError: 'choices'; asking again in 0 s"


def test_an_error_that_waiting_cannot_fix_stops_at_once(tmp_path):
    agent = Failing(5, retryable=False)
    asked, notes, _, _ = ask(tmp_path, agent, retry_s=0.01)
    assert str(asked.stop) == "the agent cannot go on: API overloaded" and len(agent.calls) == 1
    assert notes == [] and asked.usage.calls == 1


def test_a_stop_while_waiting_for_the_agent_ends_the_wait_at_once(tmp_path):
    agent = Failing(1000)
    threading.Timer(0.3, lambda: (tmp_path / "STOP").write_text("")).start()
    started = time.monotonic()
    asked, _, _, _ = ask(tmp_path, agent, retry_s=60)
    assert str(asked.stop) == "stopped while waiting for the agent" and asked.stop.ok
    assert time.monotonic() - started < 5 and len(agent.calls) == 1
