"""When the loop (or calibrate, or export) stops: Ctrl-C, SIGTERM, the STOP file, and the budgets.

Ctrl-C once: no new run starts; the runs in flight finish and are logged; then the loop stops. Ctrl-C twice,
or SIGTERM: the runs in flight are killed and nothing half-done is logged (they run again on resume). The
handlers only set flags; the loop polls them, so no exception ever lands in the middle of a git or file step.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from research_loop.night.folders import STOP_FILE

PRESSED_EARLY = threading.Event()  # Ctrl-C before the loop's own handlers were in place


def catch_early_interrupts() -> None:
    """From the first line of the command on, Ctrl-C only sets a flag; the loop then stops cleanly at its
    first step instead of dying in the middle of its setup."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: PRESSED_EARLY.set())
        signal.signal(signal.SIGTERM, lambda signum, frame: PRESSED_EARLY.set())


class Stop(Exception):
    """Ends the night between steps. ok=False: an error to look at; finished: it ended as planned.

    kind says what may still start: "now" (Ctrl-C, STOP, --max-hours, an error: nothing new), "runs"
    (--max-runs: queued runs up to the budget), "drain" (--max-cost-usd, the agent gave up: the queued runs,
    already paid for, still run)."""

    def __init__(self, reason: str, ok: bool = True, finished: bool = False, kind: str = "now"):
        super().__init__(reason)
        self.reason, self.ok, self.finished, self.kind = reason, ok, finished, kind


@dataclass
class Budget:
    """What this session has used, and its limits (None = none)."""

    runs: int = 0
    hours: float = 0.0
    cost_usd: float = 0.0
    cost_unknown: bool = False  # some proposal's cost could not be priced
    max_runs: int | None = None
    max_hours: float | None = None
    max_cost_usd: float | None = None

    def add_cost(self, cost_usd: float | None) -> None:
        if cost_usd is None:
            self.cost_unknown = True
        else:
            self.cost_usd += cost_usd


class StopControl:
    def __init__(self, repo: Path, budget: Budget, note: Callable[[str], None] = lambda message: None):
        self.repo, self.budget, self.note = Path(repo), budget, note
        self.started = time.monotonic()
        self.stop_requested = PRESSED_EARLY.is_set()
        self.abort_requested = False
        self.requested_by = "Ctrl-C" if self.stop_requested else ""  # what asked for the stop: Ctrl-C or STOP
        self.pressed = threading.Event()  # set by any stop signal, so waits wake at once

    # ----- signals -----

    @contextmanager
    def handlers(self) -> Iterator[StopControl]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        if PRESSED_EARLY.is_set():
            self.stop_requested = True
            self.note("Ctrl-C: stopping before the first run")
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGINT, self._on_interrupt)
        signal.signal(signal.SIGTERM, self._on_terminate)
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_interrupt(self, signum, frame) -> None:
        if self.stop_requested:
            self._on_terminate(signum, frame)
            return
        self.stop_requested, self.requested_by = True, "Ctrl-C"
        self.pressed.set()
        self.note(f"Ctrl-C seen {time.strftime('%H:%M:%S')}: finishing the runs in flight, then stopping "
                  "(Ctrl-C again kills them)")

    def _on_terminate(self, signum, frame) -> None:
        self.stop_requested = self.abort_requested = True
        self.pressed.set()

    # ----- the checks -----

    @property
    def hours(self) -> float:
        return (time.monotonic() - self.started) / 3600

    def reason(self, planned: int = 0) -> Stop | None:
        """Why no new run should start now (planned: runs started or queued, not logged yet), else None."""
        if self.abort_requested:
            return Stop("aborted (Ctrl-C twice or SIGTERM); the runs in flight were stopped and run again "
                        "when you resume")
        if self.stop_requested:
            return Stop("stopped by Ctrl-C")
        stop_file = self.repo / STOP_FILE
        if stop_file.exists():
            stop_file.unlink(missing_ok=True)
            self.stop_requested, self.requested_by = True, "STOP"
            return Stop("stopped by the STOP file (removed)", finished=True)
        budget = self.budget
        budget.hours = self.hours
        if budget.max_runs is not None and budget.runs + planned >= budget.max_runs:
            return Stop(f"--max-runs reached ({budget.max_runs} runs)", finished=True, kind="runs")
        if budget.max_hours is not None and budget.hours >= budget.max_hours:
            return Stop(f"--max-hours reached ({budget.hours:.2f} h)", finished=True)
        if budget.max_cost_usd is not None and budget.cost_usd >= budget.max_cost_usd:
            return Stop(f"--max-cost-usd reached (${budget.cost_usd:.2f})", finished=True, kind="drain")
        return None

    def sleep(self, seconds: float) -> bool:
        """Wait, waking for Ctrl-C or STOP; False when the loop should stop instead."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stop_requested or (self.repo / STOP_FILE).exists():
                return False
            self.pressed.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        return True


@contextmanager
def abort_on_signals() -> Iterator[Callable[[], bool]]:
    """For calibrate and export: a check that turns true on Ctrl-C or SIGTERM (the job is then killed)."""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield pressed.is_set
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: pressed.set())
    try:
        yield pressed.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
