"""The morning report: did the night work, what won, can it be trusted, what next; plus progress.png.

build_report() turns results.tsv rows and the loop-only holdout scores into plain data; render_rich() and
render_markdown() only format it; progress_figure() / plot_progress() draw the night.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import stdev

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from . import state
from .ledger import KEPT_STATUSES, RAN_STATUSES, TAIL_COLUMNS, tag_of
from .state import baseline_row, best_row

FAILED_STATUSES = ("crash", "timeout")
NUMBER_COLUMNS = ("relaxed_f1", "peak_vram_gb", "seconds", "cost_usd")  # and every strict_f1* column
CLOSED_AFTER_FAILURES = 5  # a direction with this many non-keeps in a row is worth abandoning
PLATEAU_RUNS = 15
CRASH_SHARE = 0.25
OVERFIT_SDS = 2.0
SHORT_COMMIT = 7
NA = "n/a"


class ReportError(Exception):
    """A results.tsv cell the report cannot read; the message is one line naming the run and field."""


# ----- The report as plain data -----


@dataclass(frozen=True)
class Score:
    """An F1: the mean over seeds, their standard deviation (None for a single seed) and the seed count."""

    mean: float
    sd: float | None = None
    seeds: int = 1


@dataclass(frozen=True)
class Comparison:
    """One metric of the best run against the baseline, on val and on the blind holdout."""

    metric: str
    baseline_val: Score | None
    best_val: Score | None
    baseline_holdout: Score | None
    best_holdout: Score | None

    @property
    def val_gain(self) -> float | None:
        return _gain(self.best_val, self.baseline_val)

    @property
    def holdout_gain(self) -> float | None:
        return _gain(self.best_holdout, self.baseline_holdout)


@dataclass(frozen=True)
class DirectionStats:
    direction: str
    runs: int
    keeps: int
    best_f1: float | None
    gain: float | None  # best_f1 minus the baseline's strict F1
    failures_in_a_row: int  # runs since this direction's last keep
    closed: bool


@dataclass(frozen=True)
class KeptChange:
    run: str
    commit: str
    direction: str
    description: str
    strict_f1: float | None
    gain: float | None  # over the best before it


@dataclass(frozen=True)
class Counts:
    runs: int
    baseline: int
    keeps: int
    discards: int
    crashes: int  # crashes and timeouts
    timeouts: int
    invalid: int


@dataclass(frozen=True)
class Alert:
    kind: str  # "overfit", "crashes", "budget" or "plateau"
    message: str


@dataclass
class Report:
    tag: str | None
    counts: Counts
    wall_seconds: float
    train_seconds: float
    cost_usd: float
    tokens: dict | None
    baseline_run: str | None
    best_run: str | None
    best_commit: str | None
    comparisons: list[Comparison]  # strict, relaxed, then strict per entity type
    directions: list[DirectionStats]
    kept: list[KeptChange]
    alerts: list[Alert]
    stop_reason: str | None = None

    @property
    def gpu_fraction(self) -> float | None:
        return self.train_seconds / self.wall_seconds if self.wall_seconds > 0 else None


def _gain(score: Score | None, reference: Score | None) -> float | None:
    return score.mean - reference.mean if score is not None and reference is not None else None


def _run_of(row: dict) -> str:
    return row.get("run") or "?"


def _number(row: dict, column: str) -> float | None:
    """A numeric cell, None when empty; a ReportError naming run and column when unreadable."""
    value = (row.get(column) or "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ReportError(f"results.tsv run {_run_of(row)}: {column} is not a number: {value!r}") from None


def _seed_scores(row: dict) -> list[float]:
    try:
        return [float(value) for value in (row.get("seed_scores") or "").split(",") if value.strip()]
    except ValueError:
        raise ReportError(f"results.tsv run {_run_of(row)}: seed_scores is not a list of numbers: "
                          f"{row.get('seed_scores')!r}") from None


def _timestamp(row: dict) -> datetime | None:
    value = (row.get("timestamp") or "").strip()
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ReportError(f"results.tsv run {_run_of(row)}: timestamp is not ISO 8601: {value!r}") from None


def entity_types_of(rows: list[dict]) -> list[str]:
    """The entity types that have a strict_f1_<TYPE> column."""
    if not rows:
        return []
    return [column.removeprefix("strict_f1_") for column in rows[0]
            if column.startswith("strict_f1_") and column not in TAIL_COLUMNS]


def count_runs(rows: list[dict]) -> Counts:
    statuses = [row["status"] for row in rows]
    return Counts(runs=len(rows), baseline=statuses.count("baseline"), keeps=statuses.count("keep"),
                  discards=statuses.count("discard"),
                  crashes=sum(status in FAILED_STATUSES for status in statuses),
                  timeouts=statuses.count("timeout"), invalid=statuses.count("invalid"))


def night_seconds(rows: list[dict]) -> float:
    """Wall time of the night. A row is stamped when its run ends, so the night began at the first stamp
    minus the first run's seconds."""
    stamped = [(row, _timestamp(row)) for row in rows]
    stamped = [(row, stamp) for row, stamp in stamped if stamp is not None]
    if not stamped:
        return 0.0
    (first, first_stamp), (_, last_stamp) = stamped[0], stamped[-1]
    return (last_stamp - first_stamp).total_seconds() + (_number(first, "seconds") or 0.0)


def training_seconds(rows: list[dict]) -> float:
    """Seconds train.py ran (every seed), over the runs that got to train."""
    return sum(_number(row, "seconds") or 0.0 for row in rows if row["status"] in RAN_STATUSES)


def val_score(row: dict | None, column: str = "strict_f1") -> Score | None:
    """A row's val score; for strict F1 over several seeds, with their sd."""
    value = _number(row, column) if row is not None else None
    if value is None:
        return None
    seeds = _seed_scores(row) if column == "strict_f1" else []
    if len(seeds) < 2:
        return Score(value)
    sd = _number(row, "strict_f1_sd")
    return Score(value, sd if sd is not None else stdev(seeds), len(seeds))


def holdout_entry(holdout: list[dict], run: str | None) -> dict | None:
    """The holdout scoring of a run: its "final" one when there is one, else the latest."""
    entries = [entry for entry in holdout if run is not None and str(entry.get("run")) == str(run)]
    finals = [entry for entry in entries if entry.get("role") == "final"]
    return (finals or entries or [None])[-1]


def holdout_score(entry: dict | None, metric: str, entity_type: str | None = None) -> Score | None:
    if entry is None:
        return None
    if entity_type is not None:
        value = (entry.get("per_type") or {}).get(entity_type)
        return Score(float(value)) if value is not None else None
    value = entry.get(metric)
    if value is None:
        return None
    seeds = [float(score) for score in entry.get("seed_scores") or []] if metric == "strict_f1" else []
    return Score(float(value), stdev(seeds), len(seeds)) if len(seeds) > 1 else Score(float(value))


def compare(best: dict | None, baseline: dict | None, holdout: list[dict], entity_types: list[str]
            ) -> list[Comparison]:
    """Strict, relaxed and per-type F1 of the best run against the baseline, on val and holdout."""
    best_entry = holdout_entry(holdout, best["run"] if best else None)
    base_entry = holdout_entry(holdout, baseline["run"] if baseline else None)
    comparisons = [
        Comparison(label, val_score(baseline, metric), val_score(best, metric),
                   holdout_score(base_entry, metric), holdout_score(best_entry, metric))
        for label, metric in (("strict F1", "strict_f1"), ("relaxed F1", "relaxed_f1"))
    ]
    for name in entity_types:
        column = f"strict_f1_{name}"
        comparisons.append(Comparison(
            f"strict F1 {name}", val_score(baseline, column), val_score(best, column),
            holdout_score(base_entry, "strict_f1", name), holdout_score(best_entry, "strict_f1", name)))
    return comparisons


def direction_stats(rows: list[dict], closed_directions: set[str] | None = None) -> list[DirectionStats]:
    """Per direction (the baseline aside): runs, keeps, best strict F1 and its gain, whether it is closed
    (`closed_directions` holds state.direction_key()s; by default, CLOSED_AFTER_FAILURES failures in a row)."""
    base = val_score(baseline_row(rows))
    if closed_directions is None:
        closed_directions = state.closed_directions(rows, CLOSED_AFTER_FAILURES)
    stats = []
    for direction, entry in state.direction_stats(rows).items():
        gain = entry["best"] - base.mean if entry["best"] is not None and base is not None else None
        stats.append(DirectionStats(direction, entry["runs"], entry["keeps"], entry["best"], gain,
                                    entry["failing"], state.direction_key(direction) in closed_directions))
    return sorted(stats, key=lambda stat: (-stat.runs, stat.direction))


def kept_changes(rows: list[dict]) -> list[KeptChange]:
    """The keeps in order, each with its gain over the best before it."""
    changes, previous = [], val_score(baseline_row(rows))
    for row in rows:
        if row["status"] != "keep":
            continue
        score = val_score(row)
        changes.append(KeptChange(
            row["run"], (row.get("commit") or "")[:SHORT_COMMIT], row.get("direction") or "",
            row.get("description") or "", score.mean if score else None, _gain(score, previous)))
        previous = score or previous
    return changes


# ----- Warnings -----


def overfit_alert(strict: Comparison, baseline_sd: float | None) -> Alert | None:
    """Val gains running ahead of holdout gains by more than 2 sd of the baseline's seeds."""
    val_gain, holdout_gain = strict.val_gain, strict.holdout_gain
    if val_gain is None or holdout_gain is None or baseline_sd is None:
        return None
    margin = OVERFIT_SDS * baseline_sd
    if val_gain - holdout_gain <= margin:
        return None
    return Alert("overfit", f"overfitting val? the best run gains {val_gain:+.4f} strict F1 on val but "
                            f"{holdout_gain:+.4f} on the blind holdout (more than {OVERFIT_SDS:g} sd = "
                            f"{margin:.4f} apart)")


def crash_alert(counts: Counts) -> Alert | None:
    if not counts.runs or counts.crashes / counts.runs <= CRASH_SHARE:
        return None
    return Alert("crashes", f"many failed runs: {counts.crashes} of {counts.runs} crashed or timed out "
                            f"({counts.crashes / counts.runs:.0%}); see the logs under runs/")


def budget_alert(stop_reason: str | None) -> Alert | None:
    return Alert("budget", f"stopped: {stop_reason}") if stop_reason else None


def plateau_alert(rows: list[dict]) -> Alert | None:
    """No keep in the last 15 runs, or none in the last third of the night (at least 3 runs, by time)."""
    kept_at = [index for index, row in enumerate(rows) if row["status"] in KEPT_STATUSES]
    since_keep = len(rows) - 1 - kept_at[-1] if kept_at else len(rows)
    if since_keep >= PLATEAU_RUNS:
        return Alert("plateau", f"plateau: no keep in the last {since_keep} runs")
    wall = night_seconds(rows)
    stamps = [_timestamp(row) for row in rows]
    if not wall or stamps[-1] is None:
        return None
    last_third = [row for row, stamp in zip(rows, stamps)
                  if stamp is not None and (stamps[-1] - stamp).total_seconds() < wall / 3]
    if len(last_third) >= 3 and not any(row["status"] in KEPT_STATUSES for row in last_third):
        return Alert("plateau", f"plateau: no keep in the last third of the night ({len(last_third)} runs)")
    return None


# ----- Building the report -----


def build_report(rows: list[dict], holdout: list[dict], *, stop_reason: str | None = None,
                 closed_directions: set[str] | None = None, tokens: dict | None = None) -> Report:
    """Everything the morning report says, as plain data (rows: results.tsv as read by ledger.read_rows)."""
    for row in rows:  # one clear error for a damaged cell, before any arithmetic
        for column in row:
            if column.startswith("strict_f1") or column in NUMBER_COLUMNS:
                _number(row, column)
    counts = count_runs(rows)
    best, baseline = best_row(rows), baseline_row(rows)
    comparisons = compare(best, baseline, holdout, entity_types_of(rows))
    baseline_val = comparisons[0].baseline_val
    alerts = [overfit_alert(comparisons[0], baseline_val.sd if baseline_val else None), crash_alert(counts),
              budget_alert(stop_reason), plateau_alert(rows)]
    return Report(
        tag=tag_of(rows), counts=counts, wall_seconds=night_seconds(rows),
        train_seconds=training_seconds(rows),
        cost_usd=sum(_number(row, "cost_usd") or 0.0 for row in rows), tokens=tokens,
        baseline_run=baseline["run"] if baseline else None, best_run=best["run"] if best else None,
        best_commit=(best.get("commit") or "")[:SHORT_COMMIT] if best else None, comparisons=comparisons,
        directions=direction_stats(rows, closed_directions), kept=kept_changes(rows),
        alerts=[alert for alert in alerts if alert is not None], stop_reason=stop_reason,
    )


# ----- Text shared by both renderers -----


def format_score(score: Score | None) -> str:
    if score is None:
        return NA
    if score.sd is None:
        return f"{score.mean:.4f}"
    return f"{score.mean:.4f} ± {score.sd:.4f} ({score.seeds} seeds)"


def format_gain(gain: float | None) -> str:
    return NA if gain is None else f"{gain:+.4f}"


def format_duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_tokens(tokens: dict | None) -> str:
    if not tokens:
        return "tokens n/a"
    parts = [("input", "in"), ("output", "out"), ("cache_read", "cache read"), ("cache_write", "cache write")]
    return ", ".join(f"{int(tokens[key]):,} {label}" for key, label in parts if tokens.get(key) is not None)


def title(report: Report) -> str:
    return f"Morning report: autoresearch/{report.tag}" if report.tag else "Morning report"


def summary_lines(report: Report) -> list[tuple[str, str]]:
    """(label, text) pairs: counts, time, cost, and the headline result."""
    counts, fraction = report.counts, report.gpu_fraction
    runs = (f"{counts.runs}: baseline {counts.baseline}, keeps {counts.keeps}, discards {counts.discards}, "
            f"crashes {counts.crashes} (timeouts {counts.timeouts}), invalid {counts.invalid}")
    gpu = f"{fraction:.0%} of it" if fraction is not None else NA
    lines = [("runs", runs), ("time", f"{format_duration(report.wall_seconds)} wall, GPU training {gpu}"),
             ("LLM", f"${report.cost_usd:.2f}; {format_tokens(report.tokens)}")]
    if report.best_run is not None:
        strict = report.comparisons[0]
        best = (f"run {report.best_run} (commit {report.best_commit or NA}): strict F1 "
                f"{format_score(strict.best_val)} on val, {format_gain(strict.val_gain)} over the baseline; "
                f"holdout {format_score(strict.best_holdout)}, "
                f"{format_gain(strict.holdout_gain)} over the baseline's")
        lines.append(("best", best))
    if report.stop_reason:
        lines.append(("stopped", report.stop_reason))
    return lines


def tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows of text) for each table of the report."""
    comparison = [[row.metric, format_score(row.baseline_val), format_score(row.best_val),
                   format_gain(row.val_gain), format_score(row.baseline_holdout),
                   format_score(row.best_holdout), format_gain(row.holdout_gain)]
                  for row in report.comparisons]
    kept = [[change.run, change.commit, change.direction, change.description,
             NA if change.strict_f1 is None else f"{change.strict_f1:.4f}", format_gain(change.gain)]
            for change in report.kept]
    directions = [[stat.direction, str(stat.runs), str(stat.keeps),
                   NA if stat.best_f1 is None else f"{stat.best_f1:.4f}", format_gain(stat.gain),
                   "yes" if stat.closed else "no"] for stat in report.directions]
    best = f"run {report.best_run}" if report.best_run else "best"
    return [
        (f"Best ({best}) against the baseline",
         ["metric", "baseline val", "best val", "val gain", "baseline holdout", "best holdout",
          "holdout gain"], comparison),
        ("Kept changes", ["run", "commit", "direction", "hypothesis", "strict F1", "gain"], kept),
        ("Directions", ["direction", "runs", "keeps", "best strict F1", "gain over baseline", "closed"],
         directions),
    ]


# ----- Renderers -----


def render_rich(report: Report) -> Group:
    """The report as rich renderables: a summary panel, warnings, then the tables."""
    summary = Table.grid(padding=(0, 2))
    for label, text in summary_lines(report):
        summary.add_row(Text(label, style="bold"), Text(text))
    parts = [Panel(summary, title=title(report), expand=False)]
    if report.alerts:
        warnings = Text("\n").join(Text(f"! {alert.message}") for alert in report.alerts)
        parts.append(Panel(warnings, title="Warnings", border_style="red", expand=False))
    else:
        parts.append(Text("No warnings.", style="green"))
    for heading, header, body in tables(report):
        table = Table(title=heading, title_justify="left")
        for column in header:
            table.add_column(column, overflow="fold")
        for cells in body:
            table.add_row(*(Text(cell) for cell in cells))
        parts.append(table)
    return Group(*parts)


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    """The report as Markdown with pipe tables (`report --format md`)."""
    out = [f"# {title(report)}", ""]
    out += [f"- **{label}**: {_markdown_cell(text)}" for label, text in summary_lines(report)]
    out += ["", "## Warnings", ""]
    out += [f"- {_markdown_cell(alert.message)}" for alert in report.alerts] or ["None."]
    for heading, header, body in tables(report):
        out += ["", f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(_markdown_cell(cell) for cell in cells) + " |" for cells in body]
        if not body:
            out += ["", "(none)"]
    return "\n".join(out) + "\n"


# ----- progress.png -----


def _runs_where(rows: list[dict], keep) -> tuple[list[int], list[float]]:
    """Run numbers and val strict F1 of the scored rows that pass keep(row)."""
    picked = [row for row in rows if keep(row) and _number(row, "strict_f1") is not None]
    return [int(row["run"]) for row in picked], [_number(row, "strict_f1") for row in picked]


def _running_best(rows: list[dict]) -> tuple[list[int], list[float]]:
    """The staircase of the best kept score, carried on to the last run."""
    runs, scores = _runs_where(rows, lambda row: row["status"] in KEPT_STATUSES)
    if runs and rows and int(rows[-1]["run"]) > runs[-1]:
        runs, scores = [*runs, int(rows[-1]["run"])], [*scores, scores[-1]]
    return runs, scores


def progress_figure(rows: list[dict], holdout: list[dict]) -> Figure:
    """The night at a glance: val strict F1 per run, keeps, the running best, failures and holdout scores.

    Scatter collections carry gids ("discarded", "kept", "failed", "holdout") so tests can count points.
    """
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    axes = figure.add_subplot()
    runs, scores = _runs_where(rows, lambda row: row["status"] not in KEPT_STATUSES)
    if runs:
        axes.scatter(runs, scores, color="0.6", s=22, label="run (val)", gid="discarded", zorder=2)
    runs, scores = _runs_where(rows, lambda row: row["status"] in KEPT_STATUSES)
    if runs:
        axes.scatter(runs, scores, color="red", s=36, label="baseline / keep (val)", gid="kept", zorder=3)
        axes.step(*_running_best(rows), where="post", color="red", alpha=0.6, label="best so far")
    failed = [int(row["run"]) for row in rows if row["status"] in FAILED_STATUSES]
    if failed:
        # Failures have no score: pin them to the bottom edge, whatever the y range.
        axes.scatter(failed, [0.02] * len(failed), transform=axes.get_xaxis_transform(), marker="x",
                     color="red", s=40, label="crash / timeout", gid="failed", clip_on=False, zorder=3)
    scored_holdout = {str(entry["run"]): holdout_entry(holdout, entry["run"]) for entry in holdout}
    if scored_holdout:
        axes.scatter([int(run) for run in scored_holdout],
                     [float(entry["strict_f1"]) for entry in scored_holdout.values()],
                     marker="D", color="tab:blue", s=36, label="holdout (blind)", gid="holdout", zorder=4)
    tag = tag_of(rows)
    axes.set_title(f"autoresearch/{tag}: strict F1 by run" if tag else "strict F1 by run")
    axes.set_xlabel("run")
    axes.set_ylabel("strict F1")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best")
    return figure


def plot_progress(rows: list[dict], holdout: list[dict], path: Path | str) -> Path:
    """Write progress.png (no display needed: the figure is drawn by Agg without pyplot)."""
    path = Path(path)
    progress_figure(rows, holdout).savefig(path, dpi=120)
    return path
