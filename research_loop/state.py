"""CURRENT_STATE.md: the loop's memory between iterations, rebuilt from results.tsv every iteration."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .ledger import KEPT_STATUSES, as_float

CONSTANT_LINE = re.compile(r"^[A-Z][A-Z0-9_]*\s*=")
RECENT_NOTES = 12  # how many recent runs the notes section describes
DESCRIPTION_WIDTH = 90


@dataclass
class Budget:
    """What this invocation has used, and its limits (None = none)."""

    runs: int = 0
    hours: float = 0.0
    cost_usd: float = 0.0
    max_runs: int | None = None
    max_hours: float | None = None
    max_cost_usd: float | None = None


def config_block(train_py: str) -> list[str]:
    """The UPPER_CASE `NAME = value  # comment` lines of train.py's config block (the first run of them)."""
    block: list[str] = []
    for line in train_py.splitlines():
        if CONSTANT_LINE.match(line):
            block.append(line)
        elif block and line.strip() and not line.lstrip().startswith("#"):
            break
    return block


def best_row(rows: list[dict]) -> dict | None:
    """The run the branch stands on: the last baseline/keep row (keeps only ever raise the bar)."""
    kept = [row for row in rows if row["status"] in KEPT_STATUSES]
    return kept[-1] if kept else None


def baseline_row(rows: list[dict]) -> dict | None:
    return next((row for row in rows if row["status"] == "baseline"), None)


def _score(row: dict, column: str = "strict_f1") -> str:
    value = as_float(row.get(column))
    return "" if value is None else f"{value:.4f}"


def _cell(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    text = (text or "").replace("|", "/")
    return text if len(text) <= width else text[: width - 1] + "…"


def direction_key(direction: str) -> str:
    """Directions compare case- and space-insensitively ("Learning rate" is "learning  rate")."""
    return " ".join((direction or "(none)").lower().split())


def direction_stats(rows: list[dict]) -> dict[str, dict]:
    """Per direction (as first written): runs, keeps, best strict F1, failures in a row (since its last keep)."""
    stats: dict[str, dict] = {}
    names: dict[str, str] = {}
    for row in rows:
        if row["status"] == "baseline":
            continue
        key = direction_key(row.get("direction", ""))
        name = names.setdefault(key, row.get("direction") or "(none)")
        entry = stats.setdefault(name, {"runs": 0, "keeps": 0, "best": None, "failing": 0})
        entry["runs"] += 1
        entry["keeps"] += row["status"] == "keep"
        score = as_float(row.get("strict_f1"))
        if score is not None and row["status"] in ("keep", "discard"):
            entry["best"] = score if entry["best"] is None else max(entry["best"], score)
        entry["failing"] = 0 if row["status"] == "keep" else entry["failing"] + 1
    return stats


def reopened_directions(program_md: str) -> set[str]:
    """Direction keys listed (`- direction: why`, one per line) under a "Reopened directions:" heading."""
    reopened, inside = set(), False
    for line in program_md.splitlines():
        stripped = line.strip()
        if stripped.lower().lstrip("#").strip().startswith("reopened directions"):
            inside = True
        elif inside and stripped.startswith(("- ", "* ")):
            reopened.add(direction_key(stripped[2:].split(":")[0]))
        elif inside and stripped.startswith("#"):
            inside = False  # the next section
    return reopened


def closed_directions(rows: list[dict], close_after: int, reopened: set[str] = frozenset()) -> set[str]:
    """Direction keys with `close_after` or more failures in a row and no reopening in program.md."""
    if close_after <= 0:
        return set()
    return {direction_key(name) for name, entry in direction_stats(rows).items()
            if entry["failing"] >= close_after and direction_key(name) not in reopened}


def direction_table(rows: list[dict], closed: set[str] = frozenset()) -> list[str]:
    """Per direction: runs, best strict F1, gain over the baseline, failures in a row, closed or open."""
    baseline = baseline_row(rows)
    base_f1 = as_float(baseline["strict_f1"]) if baseline else None
    lines = ["| direction | runs | best strict F1 | gain over baseline | failures in a row | closed |",
             "|---|---|---|---|---|---|"]
    for direction, entry in sorted(direction_stats(rows).items(), key=lambda item: -item[1]["runs"]):
        best = entry["best"]
        gain = f"{best - base_f1:+.4f}" if best is not None and base_f1 is not None else ""
        best_text = "" if best is None else f"{best:.4f}"
        is_closed = "closed" if direction_key(direction) in closed else ""
        lines.append(f"| {_cell(direction, 40)} | {entry['runs']} | {best_text} | {gain} | {entry['failing']} "
                     f"| {is_closed} |")
    return lines


def history_table(rows: list[dict]) -> list[str]:
    lines = ["| run | status | strict F1 | relaxed F1 | direction | description |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['run']} | {row['status']} | {_score(row)} | {_score(row, 'relaxed_f1')} | "
                     f"{_cell(row.get('direction', ''), 40)} | {_cell(row.get('description', ''))} |")
    return lines


def notes(rows: list[dict]) -> list[str]:
    """The hypotheses and outcomes of recent runs, and what went wrong."""
    lines = []
    for row in rows[-RECENT_NOTES:]:
        outcome = row["status"]
        if row.get("strict_f1"):
            outcome += f", strict F1 {_score(row)}"
        if row.get("note"):
            outcome += f": {row['note']}"
        lines.append(f"- run {row['run']} [{row.get('direction') or '-'}] {row.get('description') or ''} -> {outcome}")
    return lines or ["- (no runs yet)"]


def render(tag: str, rows: list[dict], best_train_py: str | None, entity_types: list[str], budget: Budget,
           policy_name: str, noise_line: str = "", closed: set[str] = frozenset(), close_after: int = 0,
           train_args: str = "") -> str:
    """The whole CURRENT_STATE.md text."""
    best = best_row(rows)
    out = [f"# Current state: autoresearch/{tag}", "", f"Acceptance: {policy_name} (strict F1 on val).", ""]
    if train_args:
        out += [(f"Every run is `python train.py --out DIR --seed S {train_args}`: these options override "
                "the config block's values."), ""]
    if noise_line:
        out += [noise_line, ""]
    out += ["## Best run", ""]
    if best is None:
        out += ["No baseline yet.", ""]
    else:
        per_type = ", ".join(f"{name} {_score(best, f'strict_f1_{name}')}" for name in entity_types)
        headline = (f"Run {best['run']} ({best['status']}, commit {best['commit'][:10]}): strict F1 {_score(best)}, "
                    f"relaxed F1 {_score(best, 'relaxed_f1')}; per type: {per_type}.")
        out += [headline, ""]
        if best_train_py is not None:
            out += ["Its config block:", "", "```python", *config_block(best_train_py), "```", ""]
    out += ["## Score history", "", *history_table(rows), ""]
    out += ["## Directions tried", ""]
    if close_after:
        out += [(f"A direction closes after {close_after} failures in a row; a proposal in a closed direction "
                 "is sent back before any training unless program.md lists it under \"Reopened directions:\"."), ""]
    out += [*direction_table(rows, closed), ""]
    out += ["## Notes (recent runs: hypothesis -> outcome)", "", *notes(rows), ""]
    limits = [f"runs {budget.runs}" + (f" of {budget.max_runs}" if budget.max_runs else ""),
              f"hours {budget.hours:.2f}" + (f" of {budget.max_hours:g}" if budget.max_hours else ""),
              f"cost ${budget.cost_usd:.2f}" + (f" of ${budget.max_cost_usd:g}" if budget.max_cost_usd else "")]
    out += ["## Budget (this session)", "", "; ".join(limits) + ".", ""]
    return "\n".join(out)


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside path, then os.replace it, so a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
