"""The live display: current run and its elapsed time, best so far, counts, cost. On a terminal it is a
rich Live panel; elsewhere (nohup, tests) it prints one plain line per finished run."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text


class Progress:
    """What the loop is doing now; render() is called by rich's refresh thread, so elapsed time ticks."""

    def __init__(self, tag: str, enabled: bool = True, console: Console | None = None):
        self.console = console or Console()
        self.tag = tag
        self.live = enabled and self.console.is_terminal
        self.quiet = not enabled
        self.activity = "starting"
        self.activity_since = time.monotonic()
        self.best = "-"
        self.counts = {"runs": 0, "keeps": 0, "crashes": 0}
        self.cost_usd = 0.0
        self.message = ""
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
        # Text objects, not markup strings: run descriptions contain brackets, and rich re-renders this
        # panel inside console.print calls made with markup off.
        elapsed = time.monotonic() - self.activity_since
        table = Table.grid(padding=(0, 2))
        table.add_row(Text("autoresearch", style="bold"), Text(self.tag))
        table.add_row(Text("now"), Text.assemble(self.activity, "  ", (f"{elapsed:,.0f} s", "dim")))
        table.add_row(Text("best"), Text(self.best))
        runs = f"{self.counts['runs']} (keeps {self.counts['keeps']}, crashes {self.counts['crashes']})"
        table.add_row(Text("runs"), Text(runs))
        table.add_row(Text("cost"), Text(f"${self.cost_usd:.2f}"))
        if self.message:
            table.add_row(Text("note"), Text(self.message))
        return table

    def doing(self, activity: str) -> None:
        self.activity, self.activity_since = activity, time.monotonic()

    def note(self, message: str) -> None:
        """Something the human should see now (stop requested, agent retrying, ...)."""
        self.message = message
        if not self.quiet:
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def finished(self, row: dict, best: str, cost_usd: float) -> None:
        """A row was appended: update the counts; off a terminal, print it as one line."""
        self.counts["runs"] += 1
        self.counts["keeps"] += row["status"] == "keep"
        self.counts["crashes"] += row["status"] in ("crash", "timeout")
        self.best, self.cost_usd = best, cost_usd
        score = f" strict F1 {float(row['strict_f1']):.4f}" if row.get("strict_f1") not in (None, "") else ""
        line = f"run {row['run']}: {row['status']}{score} [{row.get('direction') or '-'}] {row.get('description', '')}"
        if row.get("note"):
            line += f" ({row['note']})"
        if not self.quiet:
            self.console.print(line, highlight=False, markup=False, soft_wrap=True)  # above a live panel
