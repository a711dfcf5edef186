"""CURRENT_STATE.md: the loop's memory between iterations, rebuilt from the night's records after every row.

One number per run: its mean (or, in cross-validation, its pooled score) over the trials it ran, with the
trial count, so a one-seed screen never reads like a confirmed mean. Direction gains count only runs whose
score is over every planned trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from research_loop.config_block import block_lines
from research_loop.records.run_record import RunRecord, Status

RECENT_NOTES = 12
DESCRIPTION_WIDTH = 90


def best_record(records: list[RunRecord]) -> RunRecord | None:
    """The run the branch stands on: the last baseline/keep (keeps only ever raise the bar)."""
    kept = [record for record in records if record.status.kept]
    return kept[-1] if kept else None


def baseline_record(records: list[RunRecord]) -> RunRecord | None:
    return next((record for record in records if record.status is Status.BASELINE), None)


def direction_key(direction: str) -> str:
    """Directions compare case- and space-insensitively ("Learning rate" is "learning  rate")."""
    return " ".join((direction or "(none)").lower().split())


def score_text(record: RunRecord, unit: str = "trial") -> str:
    """`0.3077 (1 seed)` or `0.3057 (3 seeds)`: a score always says how many trials it stands on."""
    if record.strict_f1 is None:
        return ""
    count = record.trials or 1
    return f"{record.strict_f1:.4f} ({count} {unit}{'s' if count != 1 else ''})"


@dataclass
class DirectionStats:
    name: str
    runs: int = 0
    keeps: int = 0
    best: float | None = None  # the best confirmed score (over every planned trial)
    failing: int = 0  # runs since its last keep

    def key(self) -> str:
        return direction_key(self.name)


def direction_stats(records: list[RunRecord], full_trials: int) -> list[DirectionStats]:
    """Per direction (the baseline aside), in order of first appearance."""
    stats: dict[str, DirectionStats] = {}
    for record in records:
        if record.status is Status.BASELINE:
            continue
        entry = stats.setdefault(direction_key(record.direction), DirectionStats(record.direction or "(none)"))
        entry.runs += 1
        entry.keeps += record.status is Status.KEEP
        confirmed = record.status.scored and record.strict_f1 is not None and record.trials >= full_trials
        if confirmed:
            entry.best = record.strict_f1 if entry.best is None else max(entry.best, record.strict_f1)
        entry.failing = 0 if record.status is Status.KEEP else entry.failing + 1
    return list(stats.values())


def reopened_directions(program_md: str) -> set[str]:
    """Direction keys listed (`- direction: why`) under a "Reopened directions:" heading of program.md."""
    reopened, inside = set(), False
    for line in program_md.splitlines():
        stripped = line.strip()
        if stripped.lower().lstrip("#").strip().startswith("reopened directions"):
            inside = True
        elif inside and stripped.startswith(("- ", "* ")):
            reopened.add(direction_key(stripped[2:].split(":")[0]))
        elif inside and stripped.startswith("#"):
            inside = False
    return reopened


def closed_directions(records: list[RunRecord], close_after: int, reopened: set[str] = frozenset(),
                      full_trials: int = 1) -> set[str]:
    if close_after <= 0:
        return set()
    return {entry.key() for entry in direction_stats(records, full_trials)
            if entry.failing >= close_after and entry.key() not in reopened}


def _cell(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    text = (text or "").replace("|", "/").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


@dataclass
class StateView:
    """What CURRENT_STATE.md shows besides the records."""

    tag: str
    policy_line: str
    noise_line: str = ""
    sandbox_line: str = ""
    budget_line: str = ""
    run_budget_line: str = ""
    best_train_py: str | None = None
    entity_types: list[str] = field(default_factory=list)
    closed: set[str] = field(default_factory=set)
    close_after: int = 0
    full_trials: int = 1
    unit: str = "seed"
    in_flight: list[str] = field(default_factory=list)
    diagnostics_lines: list[str] = field(default_factory=list)  # diagnostics.state_lines: counts only


def render(records: list[RunRecord], view: StateView) -> str:
    best, baseline = best_record(records), baseline_record(records)
    out = [f"# Current state: autoresearch/{view.tag}", "", view.policy_line, ""]
    for line in (view.sandbox_line, view.noise_line, view.run_budget_line):
        if line:
            out += [line, ""]
    out += ["## Best run", ""]
    if best is None:
        out += ["No baseline yet.", ""]
    else:
        per_type = ", ".join(f"{name} {best.per_type.get(name) or 0:.4f}" for name in view.entity_types)
        gain = ""
        if baseline is not None and best is not baseline and baseline.strict_f1 is not None:
            gain = f", {best.strict_f1 - baseline.strict_f1:+.4f} over the baseline"
        out += [(f"Run {best.run} ({best.status}, commit {best.commit[:10]}): strict F1 "
                f"{score_text(best, view.unit)}{gain}, relaxed F1 {best.relaxed_f1 or 0:.4f}; per type: {per_type}."), ""]
        if view.best_train_py is not None:
            out += ["Its config block:", "", "```python", *block_lines(view.best_train_py), "```", ""]
    out += view.diagnostics_lines
    out += ["## Score history", "", (f"Strict F1 is the mean over the {view.unit}s a run got (in brackets); a "
            f"run screened out after one {view.unit} was never confirmed."), "",
            "| run | status | strict F1 | relaxed F1 | seconds | epochs | direction | description |",
            "|---|---|---|---|---|---|---|---|"]
    for record in records:
        relaxed = f"{record.relaxed_f1:.4f}" if record.relaxed_f1 is not None and record.status.scored else ""
        epochs = f"{record.epochs:.2f}" if record.epochs is not None else ""
        out.append(f"| {record.run} | {record.status} | {score_text(record, view.unit)} | {relaxed} | "
                   f"{record.seconds:.0f} | {epochs} | {_cell(record.direction, 40)} | {_cell(record.description)} |")
    out += ["", "## Directions tried", ""]
    if view.close_after:
        out += [(f"A direction closes after {view.close_after} failures in a row; a proposal in a closed direction "
                "is sent back before any training unless program.md lists it under \"Reopened directions:\". "
                f"Best and gain count only runs confirmed on all {view.full_trials} {view.unit}s."), ""]
    out += ["| direction | runs | best confirmed strict F1 | gain over baseline | failures in a row | closed |",
            "|---|---|---|---|---|---|"]
    base = baseline.strict_f1 if baseline is not None else None
    for entry in sorted(direction_stats(records, view.full_trials), key=lambda item: -item.runs):
        best_text = "" if entry.best is None else f"{entry.best:.4f}"
        gain = f"{entry.best - base:+.4f}" if entry.best is not None and base is not None else ""
        closed = "closed" if entry.key() in view.closed else ""
        out.append(f"| {_cell(entry.name, 40)} | {entry.runs} | {best_text} | {gain} | {entry.failing} | {closed} |")
    if view.in_flight:
        out += ["", "## In flight now (do not propose these again)", "", *(f"- {line}" for line in view.in_flight)]
    out += ["", "## Notes (recent runs: hypothesis -> outcome)", ""]
    notes = []
    for record in records[-RECENT_NOTES:]:
        outcome = str(record.status) + (f", strict F1 {score_text(record, view.unit)}" if record.strict_f1 is not None
                                        and record.status.scored else "")
        if record.note:
            outcome += f": {record.note}"
        notes.append(f"- run {record.run} [{record.direction or '-'}] {record.description} -> {outcome}")
    out += notes or ["- (no runs yet)"]
    if view.budget_line:
        out += ["", "## Budget (this session)", "", view.budget_line]
    return "\n".join(out) + "\n"
