"""The morning report as text: rich renderables for the terminal, Markdown for notes. Formatting only: every
number comes from report.build_report(). A score always carries its trial count ("0.3077 (1 seed)")."""

from __future__ import annotations

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from research_loop.evaluation import diagnostics
from research_loop.report.data import Report, Summary
from research_loop.report.trust import Interval, Score

NA = "n/a"
UNRECORDED = "device not recorded"


# ----- Numbers as text -----


def plural(count: int, unit: str) -> str:
    return f"{count} {unit}{'s' if count != 1 else ''}"


def format_score(score: Score | None, unit: str = "seed") -> str:
    """`0.3057 ± 0.0061 (3 seeds)`, or `0.3077 (1 seed)`."""
    if score is None:
        return NA
    spread = f" ± {score.sd:.4f}" if score.sd is not None else ""
    return f"{score.mean:.4f}{spread} ({plural(score.trials, unit)})"


def format_gain(gain: float | None) -> str:
    return NA if gain is None else f"{gain:+.4f}"


def format_interval(interval: Interval) -> str:
    if interval.low is None:
        return f"{interval.estimate:+.4f} (no interval)"
    return f"{interval.estimate:+.4f}, 95% CI [{interval.low:+.4f}, {interval.high:+.4f}]"


def format_duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def format_cost(summary: Summary) -> str:
    """Never $0.00 for a night whose model had no price: unknown says so."""
    if not summary.unpriced_runs:
        return f"${summary.cost_usd:.2f}"
    unknown = f"unknown ({plural(summary.unpriced_runs, 'run')} unpriced)"
    return f"${summary.cost_usd:.2f} + {unknown}" if summary.cost_usd > 0 else unknown


def format_tokens(summary: Summary) -> str:
    if not summary.tokens_in and not summary.tokens_out:
        return "tokens n/a"
    return f"{summary.tokens_in:,} tokens in, {summary.tokens_out:,} out"


def training_text(summary: Summary) -> str:
    """`training on cpu 93% of it`; with several devices, each one's share (never "GPU" unless it says so)."""
    share = summary.training_share
    if share is None:
        return "training time n/a"
    of = "of it" if summary.capacity == 1 else f"of {summary.capacity} workers' time"
    devices = {name: seconds for name, seconds in summary.by_device.items() if seconds > 0} or summary.by_device
    if len(devices) == 1:
        (name,) = devices
        return f"training on {name} {share:.0%} {of}" if name else f"training {share:.0%} {of} ({UNRECORDED})"
    capacity = summary.wall_seconds * summary.capacity
    parts = ", ".join(f"{name or UNRECORDED} {seconds / capacity:.0%}" for name, seconds in devices.items())
    return f"training {share:.0%} {of}: {parts}"


def sandbox_text(summary: Summary) -> str:
    parts = ", ".join(f"{name or 'not recorded'} ({plural(count, 'run')})" for name, count in summary.sandboxes.items())
    return f"UNSANDBOXED: {parts}" if summary.sandboxes.get("none") else parts


def title(report: Report) -> str:
    return f"Morning report: autoresearch/{report.tag}"


# ----- The sections as lines and tables -----


def summary_lines(report: Report) -> list[tuple[str, str]]:
    """(label, text) pairs: runs, evaluation, time, workers, cost, sandbox, the best, the stop."""
    summary, counts, unit = report.summary, report.summary.counts, report.unit
    screened = f" ({counts.screened} screened out after one {unit})" if counts.screened else ""
    runs = (f"{counts.runs} runs: baseline {counts.baseline}, keeps {counts.keeps}, discards {counts.discards}"
            f"{screened}, crashes {counts.crashes} (timeouts {counts.timeouts}), invalid {counts.invalid}")
    if counts.collapsed:
        runs += (f"; {plural(len(counts.collapsed), 'run')} predicted no span at all (all O): "
                 f"run{'s' if len(counts.collapsed) != 1 else ''} {', '.join(map(str, counts.collapsed))}")
    night = report.night
    evaluation = (f"{night.get('folds', report.full_trials)}-fold cross-validation over train and val (strict F1 "
                  "pooled over the folds)" if unit == "fold" else "val")
    evaluation += (f"; a confirmed run gets {plural(report.full_trials, unit)}"
                   + (f" (policy {night['policy']})" if night.get("policy") else "")
                   + (f"; agent {night['agent']}" if night.get("agent") else ""))
    lines = [("runs", runs), ("evaluation", evaluation),
             ("time", f"{format_duration(summary.wall_seconds)} wall, {training_text(summary)}")]
    if summary.capacity > 1 or len(summary.workers) > 1:
        wall = summary.wall_seconds or 1.0
        used = "; ".join(f"{name}: {plural(trials, 'trial')}, {seconds / wall:.0%} busy"
                         for name, (trials, seconds) in summary.workers.items())
        lines.append(("workers", f"{summary.capacity}" + (f" ({used})" if used else "")))
    lines += [("LLM", f"{format_cost(summary)}; {format_tokens(summary)}"), ("sandbox", sandbox_text(summary))]
    best, strict = report.best, report.comparisons[0]
    if best is not None:
        held = (f"holdout {format_score(strict.best_holdout, unit)}, {format_gain(strict.holdout_gain)} over the "
                "baseline's" if strict.best_holdout else "not scored on the holdout")
        where = "in cross-validation" if unit == "fold" else "on val"
        text = (f"run {best.run} (commit {best.commit[:7] or NA}): strict F1 {format_score(strict.best_val, unit)} "
                f"{where}, {format_gain(strict.val_gain)} over the baseline; {held}")
        lines.append(("best", text))
    if summary.stop_reason:
        lines.append(("stopped", summary.stop_reason))
    return lines


def trust_lines(report: Report) -> list[str]:
    """How far to trust the best: paired interval, per-fold gains, holdout interval, shrinkage, what is missing."""
    found, unit, lines = report.trust, report.unit, []
    noise = found.noise
    if noise is not None:
        lines.append(noise_line(noise))
    if found.paired is not None:
        lines.append(f"gain on {'the folds' if unit == 'fold' else 'val'}, paired over "
                     f"{plural(found.paired.n, unit)} (t interval): {format_interval(found.paired)}")
    if found.fold_gains:
        lines.append("per fold: " + ", ".join(f"fold {fold} {gain:+.4f}" for fold, gain in found.fold_gains))
    if found.holdout is not None:
        lines.append(f"gain on the blind holdout, paired bootstrap over {found.holdout.n} rows: "
                     f"{format_interval(found.holdout)}")
    shrink = found.shrinkage
    if shrink is not None:
        held = f"{shrink.holdout_gain:+.4f} on the holdout" if shrink.holdout_gain is not None else "no holdout gain"
        lines.append(f"shrinkage: {shrink.selection_gain:+.4f} on the data it was chosen on, {held}; choosing the "
                     f"best of {plural(shrink.proposals, 'proposal')} inflates a gain by about {shrink.optimism:.4f} "
                     f"(sigma_gain {shrink.sigma_gain:.4f} x E[max of {shrink.proposals} normals] "
                     f"{shrink.expected_max:.2f}), so expect about {shrink.shrunk_gain:+.4f}")
    return lines + found.missing


def noise_line(noise) -> str:
    """The night's noise, in words that still make sense when the measured noise is 0."""
    measured_zero = noise.source.startswith("floor") and noise.source.endswith("(measured 0.0000)")
    if noise.sd == 0:
        measured = "not measured yet" if noise.df == 0 else "none measured (sd 0.0000)"
        return f"noise: {measured} and no floor (data/ unreadable): no gain can be judged against the noise"
    if measured_zero and noise.df == 0:
        return (f"noise: not measured yet (too few trials to measure it); the margin uses the floor instead, one "
                f"gold span of a trial's rows, sd {noise.sd:.4f}")
    if measured_zero:
        return (f"noise: the trials measured none (sd 0.0000: identical scores, e.g. deterministic training); "
                f"the margin uses the floor instead, one gold span of a trial's rows, sd {noise.sd:.4f}")
    if noise.source.startswith("floor"):
        return f"noise: sd of one paired difference {noise.sd:.4f} ({noise.source})"
    return f"noise: sd of one paired difference {noise.describe()}"


def _pair(scores: tuple[float, float] | None, own: tuple[float, float] | None, index: int) -> str:
    if scores is None:
        return NA
    if own is None:
        return f"{scores[index]:.4f}"
    return f"{own[index]:.4f} -> {scores[index]:.4f} ({scores[index] - own[index]:+.4f})"


def tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows of text) for each table of the report."""
    unit, val = report.unit, "CV" if report.unit == "fold" else "val"
    comparison = [[row.metric, format_score(row.baseline_val, unit), format_score(row.best_val, unit),
                   format_gain(row.val_gain), format_score(row.baseline_holdout, unit), format_score(row.best_holdout, unit),
                   format_gain(row.holdout_gain)] for row in report.comparisons]
    kept = [[str(change.run), change.commit, change.direction, change.description, format_score(change.score, unit),
             format_gain(change.gain)] for change in report.kept]
    confirmed = f" ({plural(report.full_trials, unit)})"
    directions = [[row.direction, str(row.runs), str(row.keeps), NA if row.best_f1 is None else
                   f"{row.best_f1:.4f}{confirmed}", format_gain(row.gain), str(row.failures_in_a_row),
                   "yes" if row.closed else "no"] for row in report.directions]
    best = f"run {report.best.run}" if report.best else "best"
    out = [
        (f"Best ({best}) against the baseline",
         ["metric", f"baseline {val}", f"best {val}", f"{val} gain", "baseline holdout", "best holdout", "holdout gain"],
         comparison),
        ("Kept changes", ["run", "commit", "direction", "hypothesis", "strict F1", "gain"], kept),
        ("Directions", ["direction", "runs", "keeps", "best confirmed strict F1", "gain over baseline",
                        "failures in a row", "closed"], directions),
    ]
    if report.errors is not None:
        out.append(error_table(report))
    if report.agents:
        out.append(("Nights by agent (one row per data set)",
                    ["agent", "data", "nights", "runs", "crashes", "all O", "not run", "keeps", "best val gain",
                     "best holdout gain", "runs to first keep", "hours"],
                    [[row.agent, row.data, str(row.nights), str(row.runs), str(row.crashes), str(row.collapsed),
                      str(row.invalid), str(row.keeps),
                      format_gain(row.best_val_gain),
                      format_gain(row.best_holdout_gain),
                      NA if row.runs_to_first_keep is None else f"{row.runs_to_first_keep:g}", f"{row.hours:.1f}"]
                     for row in report.agents]))
    if report.consensus:
        out.append(("LLM consensus (the run's own score -> the consensus)",
                    ["run", "models", "min votes", "val strict F1", "val relaxed F1", "holdout strict F1",
                     "holdout relaxed F1", "spans", "abstentions", "cost", "tokens"],
                    [[str(item.run), ", ".join(item.models), str(item.min_votes),
                      _pair(item.scores["val"], item.scores["run_val"], 0), _pair(item.scores["val"], item.scores["run_val"], 1),
                      _pair(item.scores["holdout"], item.scores["run_holdout"], 0),
                      _pair(item.scores["holdout"], item.scores["run_holdout"], 1), str(item.spans), str(item.abstentions),
                      "unknown" if item.cost_usd is None else f"${item.cost_usd:.2f}",
                      f"{item.tokens_in:,} in, {item.tokens_out:,} out"] for item in report.consensus]))
    return out


def error_table(report: Report) -> tuple[str, list[str], list[list[str]]]:
    """One row per error category, one column per entity type (and all of them): the baseline's count ->
    the best's (val counts, over the trials both ran)."""
    errors, unit = report.errors, report.unit
    same = report.best is report.baseline
    names = [*errors.entity_types, *sorted((set(errors.best) | set(errors.baseline)) - set(errors.entity_types))]
    pick = lambda part, name: diagnostics.total(part) if name == "all" else part.get(name, {})
    rows = []
    for count in ("gold", *diagnostics.COUNTS[2:]):
        cells = []
        for name in [*names, "all"]:
            old, new = pick(errors.baseline, name).get(count, 0), pick(errors.best, name).get(count, 0)
            cells.append(str(new) if same or count == "gold" else f"{old} -> {new}")
        rows.append([diagnostics.HEADINGS[count], *cells])
    what = "the baseline" if same else f"baseline -> best (run {report.best.run})"
    where = "CV" if unit == "fold" else "val"
    return (f"Where the errors are: {what}, {where} counts over {plural(errors.trials, unit)}",
            ["spans", *names, "all"], rows)


# ----- Renderers -----


def render_rich(report: Report) -> Group:
    """A summary panel, warnings, how far to trust it, then the tables."""
    summary = Table.grid(padding=(0, 2))
    for label, text in summary_lines(report):
        summary.add_row(Text(label, style="bold"), Text(text, style="bold red" if text.startswith("UNSANDBOXED") else ""))
    parts = [Panel(summary, title=title(report), expand=False)]
    if report.alerts:
        warnings = Text("\n").join(Text(f"! {alert.message}") for alert in report.alerts)
        parts.append(Panel(warnings, title="Warnings", border_style="red", expand=False))
    else:
        parts.append(Text("No warnings.", style="green"))
    trust = Text("\n").join(Text(f"- {line}") for line in trust_lines(report))
    parts.append(Panel(trust, title="How far to trust it", expand=False))
    for heading, header, body in tables(report):
        parts.append(FittedTable(heading, header, body))
    return Group(*parts)


def _longest_word(texts: list[str]) -> int:
    return max((len(word) for text in texts for word in text.split()), default=1)


class FittedTable:
    """A table that never breaks a word: as columns when every column fits its longest word in the console's
    width, else one small two-column table per row (column name, value), which wraps only between words."""

    def __init__(self, heading: str, header: list[str], body: list[list[str]]):
        self.heading, self.header, self.body = heading, header, body

    def widths(self, available: int) -> list[int]:
        """Each column at least its longest word; the space left shared by how much more each one would use."""
        cells = [[column, *(row[index] for row in self.body)] for index, column in enumerate(self.header)]
        low = [_longest_word(texts) for texts in cells]
        high = [max(len(text) for text in texts) for texts in cells]
        spare = available - self.needed_width()
        want = [top - bottom for bottom, top in zip(low, high)]
        if spare >= sum(want):
            return high
        extra = [spare * more // sum(want) for more in want]
        return [bottom + more for bottom, more in zip(low, extra)]

    def columns(self, available: int) -> Table:
        table = Table(title=self.heading, title_justify="left")
        for column, width in zip(self.header, self.widths(available)):
            table.add_column(column, overflow="fold", width=width)
        for cells in self.body:
            table.add_row(*(Text(cell) for cell in cells))
        return table

    def needed_width(self) -> int:
        widths = [_longest_word([column, *(row[index] for row in self.body)]) for index, column in enumerate(self.header)]
        return sum(widths) + 3 * len(widths) + 1  # a padding space each side, and the borders

    def __rich_console__(self, console, options):
        if self.needed_width() <= options.max_width:
            yield self.columns(options.max_width)
            return
        yield Text(self.heading, style="italic")
        if not self.body:
            yield Text("(none)")
        for cells in self.body:
            table = Table(show_header=False, box=box.SIMPLE, padding=(0, 1))
            table.add_column(style="bold", min_width=_longest_word(self.header))
            table.add_column(overflow="fold")
            for column, cell in zip(self.header, cells):
                table.add_row(Text(column), Text(cell))
            yield table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report) -> str:
    """The report as Markdown with pipe tables (`report --format md`)."""
    out = [f"# {title(report)}", ""]
    out += [f"- **{label}**: {_cell(text)}" for label, text in summary_lines(report)]
    out += ["", "## Warnings", ""]
    out += [f"- {_cell(alert.message)}" for alert in report.alerts] or ["None."]
    out += ["", "## How far to trust it", ""]
    out += [f"- {_cell(line)}" for line in trust_lines(report)]
    for heading, header, body in tables(report):
        out += ["", f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(_cell(cell) for cell in cells) + " |" for cells in body]
        if not body:
            out += ["", "(none)"]
    return "\n".join(out) + "\n"
