"""progress.png: the night at a glance. Every run a point at its mean strict F1 on val (or CV); runs screened
out after one trial are hollow, so a lucky first seed never reads as beating the best; keeps red with the
running best as a staircase; crashes along the axis; the blind holdout score of each keep as a diamond.

Scatter collections carry gids ("kept", "discarded", "screened", "failed", "holdout") so tests can count points.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from research_loop.records.run_record import RunRecord
from research_loop.report.data import Report
from research_loop.report.render import plural
from research_loop.report.trust import holdout_entry


def _points(records: list[RunRecord]) -> tuple[list[int], list[float]]:
    scored = [record for record in records if record.strict_f1 is not None]
    return [record.run for record in scored], [record.strict_f1 for record in scored]


def running_best(report: Report) -> tuple[list[int], list[float]]:
    """The staircase of the best kept score, carried on to the last run."""
    runs, scores = _points([record for record in report.records if record.status.kept])
    if runs and report.records[-1].run > runs[-1]:
        runs, scores = [*runs, report.records[-1].run], [*scores, scores[-1]]
    return runs, scores


HEADROOM = 0.05  # the F1 axis reaches at least this far above the highest point


def f1_range(values: list[float]) -> tuple[float, float]:
    """The F1 axis: from a little below the lowest point (never below 0: no negative F1 on show) to at least
    HEADROOM above the highest, so one run, or scores that coincide, still get a readable axis."""
    low, high = (min(values), max(values)) if values else (0.0, 0.0)
    pad = max(0.1 * (high - low), 0.01)
    return max(0.0, low - max(pad, HEADROOM)), high + max(pad, HEADROOM)


def progress_figure(report: Report) -> Figure:
    figure = Figure(figsize=(10, 5.5), layout="constrained")
    axes = figure.add_subplot()
    unit, full = report.unit, report.full_trials
    scored = [record for record in report.records if record.status.scored]
    kept = [record for record in scored if record.status.kept]
    confirmed = [record for record in scored if not record.status.kept and record.trials >= full]
    screened = [record for record in scored if not record.status.kept and record.trials < full]
    if confirmed:
        axes.scatter(*_points(confirmed), color="0.45", s=24, gid="discarded", zorder=2,
                     label=f"discarded ({plural(full, unit)})")
    if screened:
        counts = sorted({record.trials for record in screened})
        label = f"screened out ({plural(counts[0], unit)})" if len(counts) == 1 else f"screened out (< {full} {unit}s)"
        axes.scatter(*_points(screened), facecolors="none", edgecolors="0.55", s=24, gid="screened", zorder=2,
                     label=label)
    if kept:
        axes.scatter(*_points(kept), color="red", s=40, gid="kept", zorder=3,
                     label=f"baseline / keep ({plural(full, unit)})")
        axes.step(*running_best(report), where="post", color="red", alpha=0.6, label="best so far")
    failed = [record.run for record in report.records if record.status.failed]
    if failed:
        # Failures have no score: pinned to the bottom edge, whatever the y range.
        axes.scatter(failed, [0.02] * len(failed), transform=axes.get_xaxis_transform(), marker="x", color="red",
                     s=40, label="crash / timeout", gid="failed", clip_on=False, zorder=3)
    holdout = [(record.run, holdout_entry(report.holdout, record.run)) for record in kept]
    holdout = [(run, float(entry["strict_f1"])) for run, entry in holdout if entry and entry.get("strict_f1") is not None]
    if holdout:
        # Hollow and larger: a holdout score equal to the run's val score leaves the red point visible inside.
        axes.scatter(*zip(*holdout), marker="D", facecolors="none", edgecolors="tab:blue", linewidths=1.5, s=90,
                     label="holdout (blind)", gid="holdout", zorder=4)
    collapsed = [record for record in scored if record.run in report.summary.counts.collapsed]
    if collapsed:
        axes.scatter(*_points(collapsed), marker="s", facecolors="none", edgecolors="darkorange", linewidths=1.5,
                     s=110, label="all O (predicted no span)", gid="collapsed", zorder=5)
    axes.set_title(f"autoresearch/{report.tag}: strict F1 by run")
    axes.set_xlabel("run")
    axes.set_ylabel("strict F1 (mean over the trials a run got)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    runs = [record.run for record in report.records] or [0]
    axes.set_xlim(min(runs) - 0.5, max(runs) + 0.5)
    if max(runs) - min(runs) < 10:  # the integer locator falls back to fractions on a range under one run
        axes.set_xticks(range(min(runs), max(runs) + 1))
    for collection in axes.collections:  # a point at F1 0 sits on the axis whole, not cut in half
        collection.set_clip_on(False)
    axes.set_ylim(*f1_range([*_points(scored)[1], *(score for _, score in holdout)]))
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="best")
    return figure


def plot_progress(report: Report, path: Path | str) -> Path:
    """Write progress.png (drawn by Agg without pyplot: no display needed)."""
    path = Path(path)
    progress_figure(report).savefig(path, dpi=120)
    return path
