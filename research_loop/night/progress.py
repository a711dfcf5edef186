"""The live display: what the loop and its workers are doing, the best so far, counts, cost. On a terminal
it is a rich Live panel; elsewhere (nohup, tests) it prints one plain line per finished run and per note."""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from research_loop.hygiene import plain_text
from research_loop.records.current_state import score_text
from research_loop.records.run_record import RunRecord


class Progress:
    """render() runs on rich's refresh thread, so the elapsed times tick; updates come from the loop."""

    def __init__(self, tag: str, enabled: bool = True, console: Console | None = None, unit: str = "seed"):
        self.console = console or Console()
        self.tag, self.unit = tag, unit
        self.live = enabled and self.console.is_terminal
        self.quiet = not enabled
        self.activity = "starting"
        self.activity_since = time.monotonic()
        self.best = "-"
        self.counts = {"runs": 0, "keeps": 0, "crashes": 0}
        self.cost = "$0.00"
        self.message = ""
        self.flight: list[tuple[str, float]] = []  # (what, since) per job in flight
        self.queued = 0
        self.utilisation = ""
        self.lock = threading.Lock()
        self._live: Live | None = None

    def __enter__(self):
        if self.live:
            self._live = Live(self, console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def __rich__(self) -> Table:
        # Text objects, not markup: run descriptions contain brackets.
        now = time.monotonic()
        table = Table.grid(padding=(0, 2))
        table.add_row(Text("autoresearch", style="bold"), Text(self.tag))
        table.add_row(Text("loop"), Text.assemble(self.activity, "  ", (f"{now - self.activity_since:,.0f} s", "dim")))
        with self.lock:
            for what, since in self.flight:
                table.add_row(Text("training"), Text.assemble(what, "  ", (f"{now - since:,.0f} s", "dim")))
            queued, utilisation = self.queued, self.utilisation
        if queued:
            table.add_row(Text("queued"), Text(f"{queued} proposal{'s' if queued != 1 else ''}"))
        table.add_row(Text("best"), Text(self.best))
        runs = f"{self.counts['runs']} (keeps {self.counts['keeps']}, crashes {self.counts['crashes']})"
        table.add_row(Text("runs"), Text(runs))
        if utilisation:
            table.add_row(Text("workers"), Text(utilisation))
        table.add_row(Text("cost"), Text(self.cost))
        if self.message:
            table.add_row(Text("note"), Text(self.message))
        return table

    def doing(self, activity: str) -> None:
        self.activity, self.activity_since = activity, time.monotonic()

    def in_flight(self, jobs: list[tuple[str, float]], queued: int, utilisation: str) -> None:
        with self.lock:
            self.flight, self.queued, self.utilisation = jobs, queued, utilisation

    def note(self, message: str) -> None:
        """Something the human should see now (stop requested, agent retrying, a restored file, ...)."""
        self.message = plain_text(message, 1000)
        if not self.quiet:
            self.console.print(self.message, highlight=False, markup=False, soft_wrap=True)

    def set_best(self, record: RunRecord | None) -> None:
        self.best = f"run {record.run}: strict F1 {score_text(record, self.unit)}" if record else "-"

    def finished(self, record: RunRecord, best: RunRecord | None, cost: str, unsandboxed: bool = False) -> None:
        """A row was appended: update the counts; print it as one line."""
        self.counts["runs"] += 1
        self.counts["keeps"] += record.status.value == "keep"
        self.counts["crashes"] += record.status.failed
        self.set_best(best)
        self.cost = cost
        score = f" strict F1 {score_text(record, self.unit)}" if record.strict_f1 is not None and record.status.scored else ""
        line = (f"run {record.run}: {record.status}{score} [{record.direction or '-'}] {record.description}"
                + (f" ({record.note})" if record.note else "") + (" UNSANDBOXED" if unsandboxed else ""))
        if not self.quiet:
            self.console.print(plain_text(line, 2000), highlight=False, markup=False, soft_wrap=True)
