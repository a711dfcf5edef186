"""The morning report as plain data: what ran, what won, how far to trust it, and what to watch out for.

build_report(repo, tag) reads a night's files (results.tsv, night.json, last_stop.json, the loop-only holdout
scores and predictions, consensus summaries, and every night of the repository for the agent comparison)
into a Report. render.py formats it; plot.py draws progress.png; trust.py does the statistics.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from research_loop.evaluation import diagnostics
from research_loop.evaluation import holdout as holdout_file
from research_loop.evaluation.dataviews import DataViews
from research_loop.evaluation.scoring import import_file
from research_loop.evaluation.trial import predicted_no_span
from research_loop.night.folders import PROGRAM_FILE, Workspace, latest_tag, nights, read_json
from research_loop.records import current_state as state
from research_loop.records.ledger import read_records
from research_loop.records.run_record import RunRecord, Status
from research_loop.report import trust
from research_loop.safe_io import read_text

DEFAULT_CLOSE_AFTER = 5  # the loop's --close-after default, for nights from before night.json recorded it
SHORT_COMMIT = 7


class ReportError(Exception):
    """Nothing to report, or a file the report cannot read; the message is one line naming file, run and field."""


@dataclass(frozen=True)
class Counts:
    runs: int
    baseline: int
    keeps: int
    discards: int
    crashes: int  # crashes and timeouts
    timeouts: int
    invalid: int
    screened: int  # discards that never got past the first trial's screen
    collapsed: tuple[int, ...] = ()  # runs that predicted no span at all (every tag O): the all-O collapse


@dataclass
class Summary:
    """The night in numbers: runs, time, devices, workers, the agent's cost, sandboxes, why it stopped."""

    counts: Counts
    wall_seconds: float
    train_seconds: float
    by_device: dict[str, float]  # training seconds per device ("" when the rows do not say)
    capacity: int  # workers training side by side (night.json)
    workers: dict[str, tuple[int, float]]  # worker -> (trials, busy seconds)
    cost_usd: float  # the priced part
    unpriced_runs: int  # runs whose agent cost is unknown (an unpriced model)
    tokens_in: int
    tokens_out: int
    sandboxes: dict[str, int]  # backend -> runs ("" when not recorded)
    stop_reason: str | None

    @property
    def training_share(self) -> float | None:
        return self.train_seconds / (self.wall_seconds * self.capacity) if self.wall_seconds > 0 else None


@dataclass(frozen=True)
class DirectionRow:
    direction: str
    runs: int
    keeps: int
    best_f1: float | None  # best confirmed mean (runs over every planned trial)
    gain: float | None  # best_f1 minus the baseline's strict F1
    failures_in_a_row: int
    closed: bool


@dataclass(frozen=True)
class KeptChange:
    run: int
    commit: str
    direction: str
    description: str
    score: trust.Score | None
    gain: float | None  # over the best before it


@dataclass(frozen=True)
class AgentRow:
    """One agent over the repository's nights: what it ran, kept and gained."""

    agent: str
    data: str  # the data set, as its entity types (results.tsv's strict_f1_<TYPE> columns)
    nights: int
    runs: int  # train.py runs, the baseline included
    crashes: int  # of those, crashes and timeouts
    invalid: int  # proposals that never ran (invalid or stale)
    collapsed: int  # scored runs that predicted no span at all
    keeps: int
    best_val_gain: float | None
    best_holdout_gain: float | None
    runs_to_first_keep: float | None  # median over the nights that kept something
    hours: float


@dataclass(frozen=True)
class ConsensusResult:
    """LLM consensus over a run's spans (runs/<tag>/<run>/consensus/summary.json) next to the run's own scores;
    each score is (strict F1, relaxed F1) or None."""

    run: int
    models: list[str]
    min_votes: int
    scores: dict[str, tuple[float, float] | None]  # val, holdout, run_val, run_holdout
    cost_usd: float | None
    tokens_in: int
    tokens_out: int
    spans: int
    abstentions: int


@dataclass
class Report:
    tag: str
    night: dict  # night.json ({} for a night from before it existed)
    unit: str  # "seed" or "fold"
    full_trials: int  # trials a confirmed run gets
    records: list[RunRecord]
    summary: Summary
    baseline: RunRecord | None
    best: RunRecord | None
    comparisons: list[trust.Comparison]  # strict, relaxed, then strict per entity type
    trust: trust.Trust
    directions: list[DirectionRow]
    kept: list[KeptChange]
    alerts: list[trust.Alert] = field(default_factory=list)
    holdout: list[dict] = field(default_factory=list)  # the loop-only holdout scorings
    agents: list[AgentRow] = field(default_factory=list)  # only when the repository has several nights
    consensus: list[ConsensusResult] = field(default_factory=list)
    errors: diagnostics.ErrorBreakdown | None = None  # the best's error counts against the baseline's


# ----- Reading a night -----


def read_night_records(ws: Workspace) -> list[RunRecord]:
    try:
        return read_records(ws.results_file(), ws.tag)
    except (ValueError, OSError) as exc:
        raise ReportError(str(exc)) from None


def holdout_gold(repo: Path) -> Path | None:
    """The holdout gold's path (outside the repository); None without prepare.py or a holdout."""
    if not (repo / "prepare.py").is_file():
        return None
    prepare = import_file(repo / "prepare.py", "prepare")
    try:
        return prepare.holdout_gold_path(repo / "data")
    except prepare.DataError:
        return None  # prepared with --holdout-frac 0


def holdout_entries(repo: Path, tag: str, gold: Path | None) -> list[dict]:
    return holdout_file.read_scores(holdout_file.scores_path(gold, repo, tag)) if gold else []


def noise_floor(repo: Path, night: dict) -> float:
    """One gold span's worth of F1 on one trial's scored rows (0 when data/ cannot be read)."""
    try:
        views = DataViews(repo / "data", night.get("eval", "val"), night.get("folds", 5), night.get("split_seed", 2026))
        return 1.0 / views.fold_span_count()
    except (OSError, ValueError, KeyError):
        return 0.0


def timestamp(record: RunRecord) -> datetime | None:
    try:
        return datetime.fromisoformat(record.timestamp) if record.timestamp else None
    except ValueError:
        raise ReportError(f"results.tsv: run {record.run}: timestamp: not ISO 8601: {record.timestamp!r}") from None


def wall_seconds(records: list[RunRecord], night: dict) -> float:
    """The night's working time: from each session's start (night.json's sessions) to its last row, summed, so
    a night resumed the next evening does not count the day between. A night from before sessions were
    recorded: the first stamp minus the first run's seconds (a row is stamped when its run ends) to the last."""
    stamped = [(record, stamp) for record in records if (stamp := timestamp(record))]
    if not stamped:
        return 0.0
    try:
        starts = sorted(datetime.fromisoformat(start) for start in night.get("sessions") or [])
    except (TypeError, ValueError):
        raise ReportError(f"night.json: sessions: not ISO 8601 timestamps: {night['sessions']!r}") from None
    if not starts or starts[0] > stamped[0][1]:
        return (stamped[-1][1] - stamped[0][1]).total_seconds() + stamped[0][0].seconds
    last_row: dict[int, datetime] = {}  # session -> its last stamp
    for _, stamp in stamped:
        session = bisect_right(starts, stamp) - 1
        last_row[session] = max(stamp, last_row.get(session, stamp))
    return sum((stamp - starts[session]).total_seconds() for session, stamp in last_row.items())


# ----- Sections -----


def summarise(ws: Workspace, records: list[RunRecord], night: dict, full_trials: int) -> Summary:
    """Runs by status, training time per device, each worker's trials and busy seconds (trial.json), cost."""
    frame = pd.DataFrame([{"status": record.status.value, "seconds": record.seconds, "device": record.device,
                           "sandbox": record.sandbox, "cost_usd": record.cost_usd, "tokens_in": record.tokens_in,
                           "tokens_out": record.tokens_out, "trials": record.trials} for record in records])
    frame["cost_usd"] = frame["cost_usd"].astype(float)
    status = frame["status"].value_counts()

    def runs(name: str) -> int:
        return int(status.get(name, 0))

    counts = Counts(runs=len(frame), baseline=runs("baseline"), keeps=runs("keep"), discards=runs("discard"),
                    crashes=runs("crash") + runs("timeout"), timeouts=runs("timeout"), invalid=runs("invalid"),
                    screened=int(((frame["status"] == "discard") & (frame["trials"] < full_trials)).sum()),
                    collapsed=tuple(record.run for record in records if predicted_no_span(ws, record)))
    ran = frame[frame["status"] != "invalid"]
    busy: dict[str, list[float]] = {}
    for record in records:  # every trial that ran, scored or not
        keys = zip(record.seeds, record.folds or [None] * len(record.seeds))
        for index, (worker, (seed, fold)) in enumerate(zip(record.workers, keys)):
            trial_json = read_json(ws.trial_dir(record.run, index, seed, fold) / "trial.json")
            busy.setdefault(worker, []).append(float(trial_json.get("seconds", record.seconds / len(record.workers))))
    return Summary(
        counts=counts, wall_seconds=wall_seconds(records, night), train_seconds=float(ran["seconds"].sum()),
        by_device={str(name): float(seconds) for name, seconds in ran.groupby("device")["seconds"].sum().items()},
        capacity=max(int(night.get("workers") or 1), 1),
        workers={name: (len(seconds), sum(seconds)) for name, seconds in sorted(busy.items())},
        cost_usd=float(frame["cost_usd"].sum()), unpriced_runs=int(frame["cost_usd"].isna().sum()),
        tokens_in=int(frame["tokens_in"].sum()), tokens_out=int(frame["tokens_out"].sum()),
        sandboxes={str(name): int(count) for name, count in frame["sandbox"].value_counts().items()},
        stop_reason=ws.last_stop().get("stop_reason"))


def direction_rows(records: list[RunRecord], full_trials: int, closed: set[str]) -> list[DirectionRow]:
    """Per direction (the baseline aside); best and gain count only confirmed runs."""
    baseline = state.baseline_record(records)
    base = baseline.strict_f1 if baseline else None
    rows = [DirectionRow(entry.name, entry.runs, entry.keeps, entry.best,
                         entry.best - base if entry.best is not None and base is not None else None,
                         entry.failing, entry.key() in closed)
            for entry in state.direction_stats(records, full_trials)]
    return sorted(rows, key=lambda row: (-row.runs, row.direction))


def kept_changes(records: list[RunRecord]) -> list[KeptChange]:
    """The keeps in order, each with its gain over the best before it."""
    changes, previous = [], state.baseline_record(records)
    for record in records:
        if record.status is Status.KEEP:
            known = previous is not None and None not in (previous.strict_f1, record.strict_f1)
            changes.append(KeptChange(record.run, record.commit[:SHORT_COMMIT], record.direction, record.description,
                                      trust.as_score(record.strict_f1, record.trials, record.strict_f1_sd),
                                      record.strict_f1 - previous.strict_f1 if known else None))
            previous = record
    return changes


# ----- How far to trust it: the holdout predictions -----


def holdout_interval(repo: Path, ws: Workspace, gold: Path | None, best: RunRecord | None,
                     baseline: RunRecord | None, entries: list[dict]) -> tuple[trust.Interval | None, str | None]:
    """The bootstrap interval of the holdout gain from the two runs' pred_holdout.jsonl, or why there is none."""
    if best is None or baseline is None or best is baseline:
        return None, None
    if gold is None:
        return None, "no blind holdout (no data/holdout.jsonl): no holdout gain"
    if not gold.is_file():
        return None, f"the holdout gold is not on this machine ({gold}): no holdout interval"
    if not (repo / "evaluate.py").is_file():
        return None, f"{repo / 'evaluate.py'} not found: no holdout interval"
    evaluate = import_file(repo / "evaluate.py", "evaluate")
    counts = []
    try:
        gold_rows = evaluate.read_tags(gold)
        for record in (best, baseline):
            files = holdout_files(ws, record, trust.holdout_entry(entries, record.run))
            if not files:
                return None, f"run {record.run}: no pred_holdout.jsonl to resample: no holdout interval"
            predictions = {path: evaluate.read_tags(path) for path in files}
            for path, predicted in predictions.items():
                evaluate.score_rows(gold_rows, predicted, pred_name=str(path))  # exactly the gold's rows, or an error
            counts.append([trust.span_counts(gold_rows, predicted, evaluate.spans) for predicted in predictions.values()])
    except evaluate.ScoreError as exc:
        return None, f"no holdout interval: {exc}"
    return trust.bootstrap_gain(*counts), None


def holdout_files(ws: Workspace, record: RunRecord, entry: dict | None) -> list[Path]:
    """The holdout predictions a scoring used, else the run's trial folders' pred_holdout.jsonl."""
    listed = [Path(path) for path in (entry or {}).get("files") or []]
    if listed and all(path.is_file() for path in listed):
        return listed
    folders = [ws.trial_dir(record.run, index, seed, fold) for index, (seed, fold) in enumerate(record.trial_keys)]
    return [folder / "pred_holdout.jsonl" for folder in folders if (folder / "pred_holdout.jsonl").is_file()]


def alerts(report: Report, floor: float) -> list[trust.Alert]:
    summary, strict = report.summary, report.comparisons[0]
    found = [trust.overfit_alert(strict.val_gain, strict.holdout_gain,
                                 strict.baseline_val.sd if strict.baseline_val else None, floor),
             trust.crash_alert(summary.counts.crashes, summary.counts.runs), trust.stop_alert(summary.stop_reason),
             trust.collapse_alert(summary.counts.collapsed), trust.plateau_alert([record.status.kept for record in report.records],
                                 [timestamp(record) for record in report.records], summary.wall_seconds),
             *trust.exposure_alerts(summary.sandboxes.get("none", 0), summary.unpriced_runs, summary.cost_usd)]
    return [alert for alert in found if alert is not None]


# ----- Across nights, and consensus -----


def agent_rows(repo: Path, gold: Path | None) -> list[AgentRow]:
    """Nights by agent, when the repository has more than one night."""
    found = nights(repo)
    if len(found) < 2:
        return []
    rows = []
    for tag, night in found:
        records = read_night_records(ws := Workspace(repo, tag))
        best, baseline = state.best_record(records), state.baseline_record(records)
        strict = trust.compare(best, baseline, holdout_entries(repo, tag, gold), [])[0]
        kept = best is not baseline
        # Runs are train.py runs: a row that never trained (an invalid or stale proposal) cost no compute.
        ran = [record for record in records if record.status is not Status.INVALID]
        proposals = [record for record in ran if record.status is not Status.BASELINE]
        rows.append({"agent": night.get("agent") or "?", "data": "+".join(records[0].per_type if records else ()) or "?",
                     "runs": len(ran), "invalid": len(records) - len(ran), "crashes": sum(record.status.failed for record in records),
                     "collapsed": sum(predicted_no_span(ws, record) for record in records), "keeps": sum(record.status is Status.KEEP for record in records),
                     "val_gain": strict.val_gain if kept else None, "holdout_gain": strict.holdout_gain if kept else None,
                     "first_keep": next((index + 1 for index, record in enumerate(proposals)
                                         if record.status is Status.KEEP), None),
                     "hours": wall_seconds(records, night) / 3600})
    frame = pd.DataFrame(rows).astype({"val_gain": float, "holdout_gain": float, "first_keep": float})
    # Gains on different data sets are not comparable: one row per agent and data set (told by its entity types).
    table = frame.groupby(["agent", "data"], sort=False).agg(
        nights=("runs", "size"), runs=("runs", "sum"), crashes=("crashes", "sum"), invalid=("invalid", "sum"),
        collapsed=("collapsed", "sum"), keeps=("keeps", "sum"), val_gain=("val_gain", "max"), holdout_gain=("holdout_gain", "max"), first_keep=("first_keep", "median"), hours=("hours", "sum"))
    table = table.astype(object).where(table.notna(), None)
    return [AgentRow(str(agent), str(data), *row) for (agent, data), row in zip(table.index, table.itertuples(index=False))]


def consensus_result(path: Path) -> ConsensusResult:
    """runs/<tag>/<run>/consensus/summary.json; ReportError names the file and field it cannot read."""
    data = read_json(path)
    try:
        scores = {name: None if data.get(name) is None else
                  (float(data[name]["strict_f1"]), float(data[name]["relaxed_f1"]))
                  for name in ("val", "holdout", "run_val", "run_holdout")}
        models, min_votes = [str(model) for model in data["models"]], int(data["min_votes"])
        cost = None if data.get("cost_usd") is None else float(data["cost_usd"])
        numbers = [int(data.get(name) or 0) for name in ("tokens_in", "tokens_out", "spans", "abstentions")]
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"{path}: unreadable consensus summary ({type(exc).__name__}: {exc})") from None
    return ConsensusResult(int(path.parent.parent.name), models, min_votes, scores, cost, *numbers)


# ----- The report -----


def build_report(repo: Path, tag: str | None = None) -> Report:
    """Everything the morning report says about night `tag` (default: the latest), as plain data."""
    repo = Path(repo)
    tag = tag or latest_tag(repo)
    if tag is None:
        raise ReportError(f"{repo / 'results.tsv'}: no runs yet; start a night with `python agent_loop.py`")
    ws = Workspace(repo, tag)
    records = read_night_records(ws)
    if not records:
        raise ReportError(f"{ws.results_file()}: no runs yet in night {tag}")
    night = ws.night()
    baseline, best = state.baseline_record(records), state.best_record(records)
    planned = int(night.get("trials") or (baseline.trials if baseline else 1) or 1)
    full_trials = planned  # night.json's trials: what the night's policy gives a confirmed run
    gold, floor = holdout_gold(repo), noise_floor(repo, night)
    entries = holdout_entries(repo, tag, gold)
    comparisons = trust.compare(best, baseline, entries, list(records[0].per_type))
    calibration = [float(score) for score in read_json(ws.tag_dir / "calibration.json").get("scores") or []]
    noise = trust.night_noise(records, full_trials, calibration, floor) if baseline else None
    interval, holdout_missing = holdout_interval(repo, ws, gold, best, baseline, entries)
    reopened = state.reopened_directions(read_text(repo / PROGRAM_FILE, default=""))
    closed = state.closed_directions(records, night.get("close_after", DEFAULT_CLOSE_AFTER), reopened, full_trials)
    report = Report(
        tag=tag, night=night, unit="fold" if night.get("eval") == "cv" or records[0].folds else "seed",
        full_trials=full_trials, records=records, summary=summarise(ws, records, night, full_trials),
        baseline=baseline, best=best, comparisons=comparisons,
        trust=trust.assess(best, baseline, records, noise, interval, comparisons[0].holdout_gain, holdout_missing),
        directions=direction_rows(records, full_trials, closed), kept=kept_changes(records), holdout=entries,
        agents=agent_rows(repo, gold),
        consensus=[consensus_result(path) for path in sorted(ws.tag_dir.glob("*/consensus/summary.json"))
                   if path.parent.parent.name.isdigit()],
        errors=diagnostics.error_breakdown(ws, best, baseline))
    report.alerts = alerts(report, floor)
    return report
