"""The morning report: the recorded night of tests/fixtures/results_sample.tsv (an old-format results.tsv whose
numbers must not change), and small synthetic nights written into temporary repositories (night.json,
results.tsv, trial folders with predictions, a holdout gold and its loop-only scores in a temporary cache).
Expected values are computed here, from the fixture with csv/statistics or by hand, not by the report code."""

import csv
import io
import json
import math
import random
import shutil
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import mean, stdev

import numpy as np
import pytest
from rich.console import Console

import evaluate
import prepare
from research_loop.evaluation import holdout
from research_loop.evaluation.scoring import Scorer
from research_loop.night.folders import Workspace
from research_loop.records.ledger import Ledger, read_records
from research_loop.records.run_record import RunRecord, Status
from research_loop.report import trust
from research_loop.report.data import ReportError, build_report
from research_loop.report.plot import plot_progress, progress_figure
from research_loop.report.render import render_markdown, render_rich

PROJECT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE = FIXTURES / "results_sample.tsv"
BASELINE_SEEDS = [0.4810, 0.4932, 0.4875]  # the fixture's baseline seed_scores
FIXTURE_TYPES = ["ClinicalImpacts", "SocialImpacts"]
T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student t quantiles (0.975; df), from a table


def rich_text(report) -> str:
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(render_rich(report))
    return console.export_text()


def kinds(report) -> set[str]:
    return {alert.kind for alert in report.alerts}


def offsets(figure, gid: str) -> int:
    return sum(len(collection.get_offsets()) for collection in figure.axes[0].collections
               if collection.get_gid() == gid)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache for every test: the holdout gold and the loop-only holdout scores live there."""
    monkeypatch.setenv("NER_AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----- A repository with data/ (and the holdout gold in the cache) -----

TYPES = ["Clinical", "Social"]


def gold_rows(count: int, prefix: str, seed: int) -> dict[str, list[str]]:
    """Rows of 8 tokens with one or two spans each."""
    rng, rows = random.Random(seed), {}
    for index in range(count):
        tags = ["O"] * 8
        for start in rng.sample([0, 3, 6], rng.choice([1, 2])):
            kind = rng.choice(TYPES)
            tags[start] = f"B-{kind}"
            if rng.random() < 0.5:
                tags[start + 1] = f"I-{kind}"
        rows[f"{prefix}{index}"] = tags
    return rows


def predict(gold: dict[str, list[str]], quality: float, seed: int) -> dict[str, list[str]]:
    """Each gold span found with probability `quality`; a false span in some rows."""
    rng, out = random.Random(seed), {}
    for row_id, tags in gold.items():
        predicted = ["O"] * len(tags)
        for kind, start, end in evaluate.spans(tags):
            if rng.random() < quality:
                predicted[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        if rng.random() > quality and predicted[-1] == "O" and tags[-1] == "O":
            predicted[-1] = "B-Clinical"
        out[row_id] = predicted
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def make_repo(tmp_path: Path, holdout_rows: int = 60) -> Path:
    """prepare.py and evaluate.py, data/ (train, val, tokens-only holdout, manifest), the holdout gold in the cache."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    for name in ("prepare.py", "evaluate.py"):
        shutil.copy2(PROJECT / name, repo / name)
    for split, count in (("train", 30), ("val", 20)):
        write_jsonl(repo / "data" / f"{split}.jsonl", [{"id": row_id, "tokens": [f"w{i}" for i in range(8)], "tags": tags}
                                                       for row_id, tags in gold_rows(count, split, 1).items()])
    gold = gold_rows(holdout_rows, "h", 2)
    write_jsonl(repo / "data" / "holdout.jsonl", [{"id": row_id, "tokens": [f"w{i}" for i in range(8)]} for row_id in gold])
    labels = ["O", *(f"{prefix}-{kind}" for kind in TYPES for prefix in "BI")]
    (repo / "data" / "manifest.json").write_text(json.dumps({"labels": labels, "entity_types": TYPES}))
    write_jsonl(prepare.holdout_gold_path(repo / "data"), [{"id": row_id, "tags": tags} for row_id, tags in gold.items()])
    return repo


def holdout_gold(repo: Path) -> dict[str, list[str]]:
    return evaluate.read_tags(prepare.holdout_gold_path(repo / "data"))


def val_spans(repo: Path) -> int:
    rows = [json.loads(line) for line in (repo / "data" / "val.jsonl").read_text().splitlines()]
    return sum(len(evaluate.spans(row["tags"])) for row in rows)


# ----- Synthetic nights -----

START = datetime(2026, 3, 20, 22, 0, tzinfo=timezone.utc)


def record(run: int, status: str, scores: list[float] = (), *, tag: str = "n1", folds: list[int] = (),
           device: str = "cpu", sandbox: str = "bwrap", cost: float | None = 0.1, direction: str = "learning rate",
           seconds: float = 100.0, workers: list[str] = ()) -> RunRecord:
    """A results.tsv row; relaxed and per-type scores follow strict."""
    scores = list(scores)
    item = RunRecord(run=run, tag=tag, status=Status(status), commit=f"{run:040x}", device=device, sandbox=sandbox,
                     cost_usd=cost, tokens_in=1000, tokens_out=100, direction=direction,
                     description=f"idea {run}", seconds=seconds, timestamp=(START + timedelta(minutes=10 * run)).isoformat())
    trials = len(scores) or 1
    item.folds = list(folds)
    item.seeds = [42] * trials if folds else [42 + index for index in range(trials)]
    item.workers = list(workers)
    if scores:
        item.set_scores(scores, [score + 0.1 for score in scores],
                        {"Clinical": [score - 0.02 for score in scores], "Social": [score + 0.02 for score in scores]})
    return item


def write_night(repo: Path, tag: str, records: list[RunRecord], night: dict | None = None, stop: str | None = None,
                current: bool = True, holdout_quality: dict[int, float] | None = None, types=None) -> Workspace:
    """night.json, results.tsv (the repository's when current, else the archived runs/<tag>/ copy), last_stop.json,
    and for each run in holdout_quality: pred_holdout.jsonl per trial and the loop's holdout scoring."""
    ws = Workspace(repo, tag)
    ws.tag_dir.mkdir(parents=True, exist_ok=True)
    if night is not None:
        ws.write_night({"tag": tag, "started": (START + timedelta(days=len(list((repo / "runs").iterdir())))).isoformat(),
                        **night})
    path = ws.results_path if current else ws.tag_dir / "results.tsv"
    ledger = Ledger(path, repo.parent / f"mirror-{tag}.tsv", types or TYPES)
    for item in records:
        ledger.append(item)
    if stop:
        ws.write_stop(stop, ok=True, finished=True)
    for run, quality in (holdout_quality or {}).items():
        gold_path, scorer = prepare.holdout_gold_path(repo / "data"), Scorer(evaluate, TYPES)
        item = next(item for item in records if item.run == run)
        files = []
        for index, (seed, fold) in enumerate(item.trial_keys):
            path = ws.trial_dir(run, index, seed, fold) / "pred_holdout.jsonl"
            predicted = predict(holdout_gold(repo), quality, seed=run * 100 + index)
            write_jsonl(path, [{"id": row_id, "tags": tags} for row_id, tags in predicted.items()])
            files.append(path)
        role = "baseline" if item.status is Status.BASELINE else "keep"
        entry = holdout.score_run(scorer, gold_path, files, run, item.commit, role)
        holdout.append_score(holdout.scores_path(gold_path, repo, tag), entry)
    return ws


def confirm_night(**overrides) -> list[RunRecord]:
    """A baseline on 3 seeds, two screened-out discards, a confirmed discard, a keep, a crash, an invalid."""
    return [
        record(0, "baseline", [0.50, 0.52, 0.51], **overrides),
        record(1, "discard", [0.49], **overrides),
        record(2, "discard", [0.50], direction="loss", **overrides),
        record(3, "discard", [0.52, 0.51, 0.50], direction="loss", **overrides),
        record(4, "keep", [0.54, 0.55, 0.55], direction="post-processing", **overrides),
        record(5, "crash", **overrides),
        record(6, "invalid", **overrides),
    ]


# ----- The recorded night (tests/fixtures/results_sample.tsv, an old-format file) -----


@pytest.fixture(scope="module")
def raw() -> list[dict]:
    """The fixture read independently of the package."""
    with FIXTURE.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def last_keep(raw: list[dict]) -> dict:
    return [row for row in raw if row["status"] == "keep"][-1]


@pytest.fixture
def fixture_repo(tmp_path) -> Path:
    """A repository whose results.tsv is the fixture, with a holdout split (its gold is not needed)."""
    repo = tmp_path / "recorded"
    (repo / "data").mkdir(parents=True)
    shutil.copy2(PROJECT / "prepare.py", repo / "prepare.py")
    write_jsonl(repo / "data" / "holdout.jsonl", [{"id": "h0", "tokens": ["a"]}])
    shutil.copy2(FIXTURE, repo / "results.tsv")
    return repo


def fixture_holdout(repo: Path, raw: list[dict], baseline_f1: float = 0.4705, best_gain: float = 0.0397) -> None:
    """Holdout scorings as the loop writes them: the baseline, every keep, and the final best."""
    best_run = last_keep(raw)["run"]
    entries = [{"run": "1", "commit": raw[0]["commit"], "role": "baseline", "strict_f1": baseline_f1,
                "relaxed_f1": baseline_f1 + 0.12,
                "per_type": {"ClinicalImpacts": baseline_f1 - 0.04, "SocialImpacts": baseline_f1 + 0.05},
                "seed_scores": [baseline_f1 - 0.005, baseline_f1, baseline_f1 + 0.005]}]
    for row in raw:
        if row["status"] == "keep":
            score = baseline_f1 + best_gain * (0.5 if row["run"] != best_run else 1.0)
            entries.append({"run": row["run"], "commit": row["commit"], "role": "keep", "strict_f1": score,
                            "relaxed_f1": score + 0.12, "per_type": {"ClinicalImpacts": score - 0.04,
                                                                      "SocialImpacts": score + 0.05},
                            "seed_scores": [score]})
    best = entries[-1]["strict_f1"]
    entries.append(dict(entries[-1], role="final", seed_scores=[best - 0.002, best, best + 0.002]))
    path = holdout.scores_path(prepare.holdout_gold_path(repo / "data"), repo, "mar14")
    path.unlink(missing_ok=True)
    for entry in entries:
        holdout.append_score(path, entry)


def rewrite(repo: Path, records: list[RunRecord]) -> None:
    """results.tsv with these records (in the current format)."""
    (repo / "results.tsv").unlink()
    ledger = Ledger(repo / "results.tsv", repo.parent / "mirror.tsv", FIXTURE_TYPES)
    for item in records:
        ledger.append(item)


def extra_runs(status: str, count: int, seconds: float = 1000.0) -> list[RunRecord]:
    """The fixture's runs then `count` more of one status, each ending `seconds` + 200 s after the previous."""
    records = read_records(FIXTURE)
    for _ in range(count):
        last = records[-1]
        stamp = datetime.fromisoformat(last.timestamp) + timedelta(seconds=seconds + 200)
        item = RunRecord(run=last.run + 1, tag="mar14", status=Status(status), commit=f"{last.run + 1:040x}",
                         seconds=seconds, seeds=[42], direction="loss", description="another idea",
                         timestamp=stamp.isoformat(), cost_usd=0.2)
        if status == "discard":
            item.set_scores([0.51], [0.63], {name: [0.50] for name in FIXTURE_TYPES})
        records.append(item)
    return records


def test_fixture_holds_a_realistic_night(raw):
    statuses = Counter(row["status"] for row in raw)
    assert 20 <= len(raw) <= 30 and "device" not in raw[0]  # the old format, quoted cells and all
    assert (statuses["baseline"], statuses["crash"], statuses["timeout"], statuses["invalid"]) == (1, 3, 1, 1)
    assert raw[0]["seed_scores"] == ",".join(f"{s:.4f}" for s in BASELINE_SEEDS)


def test_counts_match_the_fixture(fixture_repo, raw):
    statuses = Counter(row["status"] for row in raw)
    counts = build_report(fixture_repo).summary.counts
    assert counts.runs == len(raw) and counts.baseline == 1
    assert counts.keeps == statuses["keep"] and counts.discards == statuses["discard"]
    assert counts.crashes == statuses["crash"] + statuses["timeout"] and counts.timeouts == statuses["timeout"]
    assert counts.invalid == statuses["invalid"]
    assert counts.screened == sum(row["status"] == "discard" and "," not in row["seed_scores"] for row in raw)


def test_wall_time_and_training_share_without_a_device_column(fixture_repo, raw):
    # Rows are stamped when a run ends: the night starts at the first stamp minus the first run's seconds.
    first, last = (datetime.fromisoformat(raw[i]["timestamp"]) for i in (0, -1))
    wall = (last - first).total_seconds() + float(raw[0]["seconds"])
    trained = sum(float(row["seconds"]) for row in raw if row["status"] != "invalid")
    report = build_report(fixture_repo)
    assert report.summary.wall_seconds == pytest.approx(wall)
    assert report.summary.training_share == pytest.approx(trained / wall)
    text = render_markdown(report)
    assert f"training {trained / wall:.0%} of it (device not recorded)" in text and "GPU" not in text


def test_a_night_resumed_the_next_evening_does_not_count_the_day_between(tmp_path):
    repo = make_repo(tmp_path)
    first = [record(0, "baseline", [0.50]), record(1, "discard", [0.48]), record(2, "keep", [0.52])]
    second = [record(3, "discard", [0.49]), record(4, "keep", [0.55])]
    resumed_at = START + timedelta(hours=20)
    for index, item in enumerate(second, start=1):
        item.timestamp = (resumed_at + timedelta(minutes=10 * index)).isoformat()
    sessions = [(START - timedelta(seconds=100)).isoformat(), resumed_at.isoformat()]
    write_night(repo, "n1", first + second, night={"agent": "builtin", "sessions": sessions})
    report = build_report(repo)
    wall = (20 * 60 + 100) + 20 * 60  # each session's start to its last row
    assert report.summary.wall_seconds == pytest.approx(wall)
    assert report.summary.training_share == pytest.approx(500 / wall)
    assert "0 h 42 min wall" in render_markdown(report)  # not 20 h


def test_cost_and_tokens(fixture_repo, raw):
    report = build_report(fixture_repo)
    cost = sum(float(row["cost_usd"]) for row in raw)
    tokens_in, tokens_out = (sum(int(row[name]) for row in raw) for name in ("tokens_in", "tokens_out"))
    assert report.summary.cost_usd == pytest.approx(cost) and report.summary.unpriced_runs == 0
    assert f"${cost:.2f}; {tokens_in:,} tokens in, {tokens_out:,} out" in render_markdown(report)


def test_best_is_the_last_keep_with_gains_on_val_and_holdout(fixture_repo, raw):
    best = last_keep(raw)
    fixture_holdout(fixture_repo, raw, baseline_f1=0.4705, best_gain=0.0397)
    report = build_report(fixture_repo)
    assert report.best.run == int(best["run"]) and report.best.commit == best["commit"]
    strict, relaxed, *per_type = report.comparisons
    best_seeds = [float(value) for value in best["seed_scores"].split(",")]
    assert strict.best_val.mean == pytest.approx(mean(best_seeds), abs=5e-5)
    assert strict.best_val.sd == pytest.approx(stdev(best_seeds), abs=5e-5) and strict.best_val.trials == 3
    assert strict.baseline_val.sd == pytest.approx(stdev(BASELINE_SEEDS), abs=5e-5)
    assert strict.val_gain == pytest.approx(mean(best_seeds) - mean(BASELINE_SEEDS), abs=1e-4)
    assert relaxed.val_gain == pytest.approx(float(best["relaxed_f1"]) - float(raw[0]["relaxed_f1"]))
    for name, comparison in zip(FIXTURE_TYPES, per_type):
        column = f"strict_f1_{name}"
        assert name in comparison.metric
        assert comparison.val_gain == pytest.approx(float(best[column]) - float(raw[0][column]))
    assert strict.holdout_gain == pytest.approx(0.0397)
    assert strict.best_holdout.trials == 3  # the "final" scoring (3 seeds) wins over the 1-seed "keep" one
    assert strict.best_holdout.sd == pytest.approx(0.002)
    assert relaxed.holdout_gain == pytest.approx(0.0397) and per_type[0].holdout_gain == pytest.approx(0.0397)


def test_without_holdout_the_holdout_columns_say_na(fixture_repo):
    report = build_report(fixture_repo)
    assert report.comparisons[0].best_holdout is None and report.comparisons[0].holdout_gain is None
    strict_line = next(line for line in render_markdown(report).splitlines() if line.startswith("| strict F1 |"))
    assert strict_line.count("n/a") == 3


def test_kept_changes_in_order_with_trial_counts(fixture_repo, raw):
    keeps = [row for row in raw if row["status"] == "keep"]
    report = build_report(fixture_repo)
    assert [change.run for change in report.kept] == [int(row["run"]) for row in keeps]
    assert [change.commit for change in report.kept] == [row["commit"][:7] for row in keeps]
    assert [change.description for change in report.kept] == [row["description"] for row in keeps]
    assert report.kept[0].gain == pytest.approx(float(keeps[0]["strict_f1"]) - float(raw[0]["strict_f1"]))
    assert report.kept[1].gain == pytest.approx(float(keeps[1]["strict_f1"]) - float(keeps[0]["strict_f1"]))
    kept_line = next(line for line in render_markdown(report).splitlines() if line.startswith(f"| {keeps[0]['run']} |"))
    assert f"{keeps[0]['strict_f1']} ± {keeps[0]['strict_f1_sd']} (3 seeds)" in kept_line


def test_direction_table_counts_only_confirmed_means(fixture_repo, raw):
    proposals = [row for row in raw if row["status"] != "baseline"]
    table = {row.direction: row for row in build_report(fixture_repo).directions}
    assert set(table) == {row["direction"] for row in proposals}
    for direction, row in table.items():
        mine = [item for item in proposals if item["direction"] == direction]
        confirmed = [float(item["strict_f1"]) for item in mine if item["seed_scores"].count(",") == 2]
        trailing = 0
        for item in mine:
            trailing = 0 if item["status"] == "keep" else trailing + 1
        assert row.runs == len(mine) and row.keeps == sum(item["status"] == "keep" for item in mine)
        assert row.best_f1 == (max(confirmed) if confirmed else None), direction
        if confirmed:
            assert row.gain == pytest.approx(max(confirmed) - float(raw[0]["strict_f1"]))
        assert row.failures_in_a_row == trailing and row.closed == (trailing >= 5), direction
    # A one-seed discard of "label scheme" scored 0.5170: it was never confirmed, so it is no best.
    assert table["label scheme"].best_f1 is None
    assert table["learning rate"].closed and not table["post-processing"].closed


def test_closed_directions_follow_the_nights_close_after_and_program_md(fixture_repo):
    (fixture_repo / "runs" / "mar14").mkdir(parents=True)
    (fixture_repo / "runs" / "mar14" / "night.json").write_text(json.dumps({"tag": "mar14", "close_after": 3}))
    (fixture_repo / "program.md").write_text("## Reopened directions:\n- loss: worth a second look\n")
    table = {row.direction: row.closed for row in build_report(fixture_repo).directions}
    assert table["label scheme"] and table["learning rate"] and not table["loss"]


def test_the_recorded_night_has_no_warnings(fixture_repo, raw):
    fixture_holdout(fixture_repo, raw)
    assert build_report(fixture_repo).alerts == []


def test_plateau_after_15_runs_without_a_keep(fixture_repo):
    # Proposals that never compile take no time, so only the count of runs can call this a plateau.
    rewrite(fixture_repo, extra_runs("invalid", 10, seconds=0.0))
    assert "plateau" not in kinds(build_report(fixture_repo))
    rewrite(fixture_repo, extra_runs("invalid", 11, seconds=0.0))  # 4 + 11 runs since the last keep
    report = build_report(fixture_repo)
    assert any("no keep in the last 15 runs" in alert.message for alert in report.alerts)


def test_plateau_when_the_last_third_of_the_night_kept_nothing(fixture_repo):
    rewrite(fixture_repo, extra_runs("discard", 10, seconds=3000.0))
    assert any("last third of the night" in alert.message for alert in build_report(fixture_repo).alerts)


def test_one_discard_after_a_keep_is_no_plateau(fixture_repo):
    records = read_records(FIXTURE)[:2]
    rewrite(fixture_repo, records)
    extra = extra_runs("discard", 1, seconds=3000.0)[-1]
    extra.run = 3
    rewrite(fixture_repo, [*records, extra])
    assert "plateau" not in kinds(build_report(fixture_repo))


def test_crash_warning_above_a_quarter_of_the_runs(fixture_repo):
    # The fixture has 4 crashes/timeouts in 25 runs; 3 more make exactly 25 %, 4 more pass it.
    rewrite(fixture_repo, extra_runs("crash", 3, seconds=40.0))
    assert "crashes" not in kinds(build_report(fixture_repo))
    rewrite(fixture_repo, extra_runs("crash", 4, seconds=40.0))
    report = build_report(fixture_repo)
    assert "crashes" in kinds(report) and "8 of 29" in render_markdown(report)


def test_overfit_alert_when_holdout_gains_lag_val_gains_by_2_sd(fixture_repo, raw):
    val_gain = float(last_keep(raw)["strict_f1"]) - float(raw[0]["strict_f1"])
    two_sd = 2 * float(raw[0]["strict_f1_sd"])
    fixture_holdout(fixture_repo, raw, best_gain=val_gain - two_sd + 0.002)
    assert "overfit" not in kinds(build_report(fixture_repo))
    fixture_holdout(fixture_repo, raw, best_gain=val_gain - two_sd - 0.002)
    lagging = build_report(fixture_repo)
    assert "overfit" in kinds(lagging) and "overfit" in render_markdown(lagging).lower()


def test_no_overfit_alert_without_the_baselines_holdout(fixture_repo, raw):
    fixture_holdout(fixture_repo, raw, best_gain=0.0)
    path = holdout.scores_path(prepare.holdout_gold_path(fixture_repo / "data"), fixture_repo, "mar14")
    entries = [entry for entry in holdout.read_scores(path) if entry["role"] != "baseline"]
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    assert "overfit" not in kinds(build_report(fixture_repo))


def test_a_planned_stop_is_said_but_not_a_warning(fixture_repo):
    assert not kinds(build_report(fixture_repo)) & {"budget", "stopped"}
    Workspace(fixture_repo, "mar14").tag_dir.mkdir(parents=True)
    for planned in ("--max-runs reached (25 runs)", "--max-hours reached (9.00 h)", "stopped by the STOP file (removed)"):
        Workspace(fixture_repo, "mar14").write_stop(planned, ok=True, finished=True)
        report = build_report(fixture_repo)
        text = render_markdown(report)
        assert not kinds(report) & {"budget", "stopped"}
        assert f"- **stopped**: {planned}" in text
        assert text.split("## Warnings")[1].split("##")[0].strip() == "None."
    Workspace(fixture_repo, "mar14").write_stop("--max-cost-usd reached ($20.00)", ok=True, finished=True)
    assert "budget" in kinds(build_report(fixture_repo))  # the agent's spending, not the user's plan, ended it
    Workspace(fixture_repo, "mar14").write_stop("stopped by Ctrl-C", ok=True, finished=False)
    text = rich_text(build_report(fixture_repo))
    assert "Warnings" in text and "! stopped: stopped by Ctrl-C" in text


def test_markdown_has_the_numbers_in_pipe_tables(fixture_repo, raw):
    fixture_holdout(fixture_repo, raw)
    text = render_markdown(build_report(fixture_repo))
    best = last_keep(raw)
    assert text.startswith("# Morning report: autoresearch/mar14")
    assert f"{best['strict_f1']} ± {best['strict_f1_sd']} (3 seeds)" in text and f"run {best['run']}" in text
    assert f"+{float(best['strict_f1']) - float(raw[0]['strict_f1']):.4f}" in text
    assert "0.4705 ± 0.0050 (3 seeds)" in text  # the baseline's holdout score
    assert f"{len(raw)} runs: baseline 1" in text
    assert "|---|---|---|---|---|---|---|" in text
    learning_rate = [row for row in raw if row["direction"] == "learning rate"]
    assert any(line.startswith(f"| learning rate | {len(learning_rate)} |") and line.endswith("| yes |")
               for line in text.splitlines())
    for row in raw:
        if row["status"] == "keep":
            assert row["description"] in text


def test_rich_rendering_shows_the_best_score(fixture_repo, raw):
    fixture_holdout(fixture_repo, raw)
    text = rich_text(build_report(fixture_repo))
    assert last_keep(raw)["strict_f1"] in text and "learning rate" in text and "How far to trust it" in text


def test_an_unreadable_cell_is_a_one_line_error(fixture_repo):
    lines = FIXTURE.read_text().splitlines()
    lines[4] = lines[4].replace("\t0.4710\t", "\t0.4.710\t", 1)  # run 4's strict_f1
    (fixture_repo / "results.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=r"results.tsv: run 4: strict_f1: not a number: '0.4.710'$"):
        build_report(fixture_repo)


def test_no_night_and_no_runs_are_one_line_errors(tmp_path):
    with pytest.raises(ReportError, match=r"no runs yet; start a night"):
        build_report(tmp_path)
    repo = make_repo(tmp_path)
    write_night(repo, "empty", [], night={"agent": "builtin"})
    with pytest.raises(ReportError, match=r"no runs yet in night empty$"):
        build_report(repo)


def test_progress_figure_of_the_recorded_night(fixture_repo, raw, tmp_path):
    fixture_holdout(fixture_repo, raw)
    report = build_report(fixture_repo)
    figure = progress_figure(report)
    scored = [row for row in raw if row["strict_f1"]]
    assert offsets(figure, "screened") + offsets(figure, "discarded") + offsets(figure, "kept") == len(scored)
    assert offsets(figure, "screened") == sum(row["status"] == "discard" for row in raw)  # every discard: 1 seed
    assert offsets(figure, "kept") == sum(row["status"] in ("baseline", "keep") for row in raw)
    assert offsets(figure, "failed") == sum(row["status"] in ("crash", "timeout") for row in raw)
    assert offsets(figure, "holdout") == sum(row["status"] in ("baseline", "keep") for row in raw)
    staircase = figure.axes[0].lines[0]
    assert list(staircase.get_xdata())[-1] == int(raw[-1]["run"])
    assert list(staircase.get_ydata())[-1] == pytest.approx(float(last_keep(raw)["strict_f1"]))
    assert "mar14" in figure.axes[0].get_title()
    assert "screened out (1 seed)" in figure.axes[0].get_legend_handles_labels()[1]
    path = plot_progress(report, tmp_path / "progress.png")
    assert path == tmp_path / "progress.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----- Summary: devices, workers, cost, sandbox -----


def test_a_cpu_night_says_cpu_never_gpu(tmp_path):
    repo = make_repo(tmp_path)
    records = confirm_night()
    write_night(repo, "n1", records, night={"agent": "builtin", "policy": "confirm", "trials": 3})
    report = build_report(repo)
    trained = sum(item.seconds for item in records if item.status is not Status.INVALID)
    share = trained / report.summary.wall_seconds
    for text in (render_markdown(report), rich_text(report)):
        assert f"training on cpu {share:.0%} of it" in text
        assert "GPU" not in text and "gpu" not in text


def test_a_mixed_night_lists_each_device_with_its_share(tmp_path):
    repo = make_repo(tmp_path)
    records = confirm_night()
    for item in records[3:]:
        item.device = "cuda:0"
    write_night(repo, "n1", records, night={"agent": "builtin"})
    report = build_report(repo)
    wall = report.summary.wall_seconds
    cpu = sum(item.seconds for item in records[:3])
    cuda = sum(item.seconds for item in records[3:] if item.status is not Status.INVALID)
    assert report.summary.by_device == {"cpu": cpu, "cuda:0": cuda}
    assert f"training {(cpu + cuda) / wall:.0%} of it: cpu {cpu / wall:.0%}, cuda:0 {cuda / wall:.0%}" in render_markdown(report)


def test_workers_and_their_utilisation(tmp_path):
    repo = make_repo(tmp_path)
    records = confirm_night(workers=["local-0"])
    records[0].workers = ["local-0", "local-1", "local-1"]
    records[3].workers = ["local-0", "local-1", "local-0"]
    records[4].workers = ["local-1", "local-0", "local-1"]
    records[6].workers = []  # an invalid proposal never ran
    ws = write_night(repo, "n1", records, night={"agent": "builtin", "workers": 2})
    for index, seconds in enumerate((30.0, 50.0, 20.0)):  # the baseline's trials, as trial.json says
        path = ws.trial_dir(0, index, 42 + index, None) / "trial.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"seconds": seconds, "worker": records[0].workers[index]}))
    report = build_report(repo)
    per_trial = 100.0 / 3  # no trial.json: the row's seconds shared out
    # local-0: the baseline's first trial, runs 1 and 2, two trials of run 3, one of run 4, the crash (run 5).
    busy = {"local-0": 30.0 + 100.0 + 100.0 + 3 * per_trial + 100.0, "local-1": 50.0 + 20.0 + 3 * per_trial}
    assert report.summary.capacity == 2
    assert report.summary.workers == {"local-0": (7, pytest.approx(busy["local-0"])),
                                      "local-1": (5, pytest.approx(busy["local-1"]))}
    wall = report.summary.wall_seconds
    text = render_markdown(report)
    assert f"**workers**: 2 (local-0: 7 trials, {busy['local-0'] / wall:.0%} busy; local-1: 5 trials, " in text
    assert "of 2 workers' time" in text


def test_an_unsandboxed_run_is_in_plain_sight(tmp_path):
    repo = make_repo(tmp_path)
    records = confirm_night()
    records[4].sandbox = records[5].sandbox = "none"
    write_night(repo, "n1", records, night={"agent": "builtin"})
    report = build_report(repo)
    assert "unsandboxed" in kinds(report)
    text = render_markdown(report)
    assert "- **sandbox**: UNSANDBOXED: bwrap (5 runs), none (2 runs)" in text
    assert "UNSANDBOXED: 2 run(s) ran train.py" in text
    records[4].sandbox = records[5].sandbox = "bwrap"
    (repo / "results.tsv").unlink()
    write_night(repo, "n1", records)
    assert "UNSANDBOXED" not in render_markdown(build_report(repo))


def test_an_unpriced_cost_is_never_shown_as_zero(tmp_path):
    repo = make_repo(tmp_path)
    write_night(repo, "n1", confirm_night(cost=None), night={"agent": "openai"})
    report = build_report(repo)
    text = render_markdown(report)
    assert "**LLM**: unknown (7 runs unpriced); 7,000 tokens in, 700 out" in text and "$0.00" not in text
    assert "unpriced" in kinds(report)
    records = confirm_night()
    records[1].cost_usd = None
    (repo / "results.tsv").unlink()
    write_night(repo, "n1", records)
    report = build_report(repo)
    assert "$0.60 + unknown (1 run unpriced)" in render_markdown(report)
    assert report.summary.cost_usd == pytest.approx(0.6)


# ----- One number per run -----


def test_every_score_carries_its_trial_count(tmp_path):
    repo = make_repo(tmp_path)
    records = confirm_night()
    write_night(repo, "n1", records, night={"agent": "builtin", "policy": "confirm", "trials": 3},
                holdout_quality={0: 0.6, 4: 0.8})
    report = build_report(repo)
    text = render_markdown(report)
    assert "2 screened out after one seed" in text
    assert f"{records[0].strict_f1:.4f} ± {records[0].strict_f1_sd:.4f} (3 seeds)" in text
    table = text.split("## Best (run 4) against the baseline")[1].split("## Kept changes")[0]
    rows = [line for line in table.splitlines() if line.startswith(("| strict F1", "| relaxed F1"))]
    assert len(rows) == 2 + len(TYPES)
    for line in rows:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert all(cell.endswith("(3 seeds)") for cell in (cells[1], cells[2], cells[4], cells[5])), line
    # Direction gains count only confirmed means: "learning rate" has one 1-seed run (0.49), no confirmed one.
    directions = {row.direction: row for row in report.directions}
    assert directions["learning rate"].best_f1 is None
    assert directions["loss"].best_f1 == pytest.approx(0.51)
    assert "| loss | 2 | 0 | 0.5100 (3 seeds) | +0.0000 |" in text


# ----- How far to trust it -----


def test_the_paired_interval_matches_a_hand_computation(tmp_path):
    repo = make_repo(tmp_path)
    write_night(repo, "n1", confirm_night(), night={"agent": "builtin", "trials": 3})
    paired = build_report(repo).trust.paired
    differences = [0.54 - 0.50, 0.55 - 0.52, 0.55 - 0.51]  # the keep's seeds minus the baseline's, seed by seed
    half = T_975[2] * stdev(differences) / math.sqrt(3)
    assert paired.estimate == pytest.approx(mean(differences))
    assert (paired.low, paired.high, paired.n) == (pytest.approx(mean(differences) - half),
                                                   pytest.approx(mean(differences) + half), 3)
    assert "gain on val, paired over 3 seeds (t interval): " \
           f"{mean(differences):+.4f}, 95% CI [{mean(differences) - half:+.4f}, {mean(differences) + half:+.4f}]" \
           in render_markdown(build_report(repo))


def test_cross_validation_shows_the_gain_of_each_fold(tmp_path):
    repo = make_repo(tmp_path)
    base, best = [0.50, 0.47, 0.53, 0.49, 0.51], [0.52, 0.50, 0.53, 0.52, 0.52]
    folds = list(range(5))
    records = [record(0, "baseline", base, folds=folds), record(1, "discard", [0.49], folds=[0]),
               record(2, "keep", best, folds=folds)]
    write_night(repo, "n1", records, night={"agent": "builtin", "eval": "cv", "folds": 5, "trials": 5})
    report = build_report(repo)
    gains = [b - a for a, b in zip(base, best)]
    assert report.unit == "fold"
    assert report.trust.fold_gains == [(fold, pytest.approx(gain)) for fold, gain in zip(folds, gains)]
    half = T_975[4] * stdev(gains) / math.sqrt(5)
    assert report.trust.paired.low == pytest.approx(mean(gains) - half)
    text = render_markdown(report)
    assert "per fold: " + ", ".join(f"fold {fold} {gain:+.4f}" for fold, gain in zip(folds, gains)) in text
    assert "gain on the folds, paired over 5 folds" in text and "(5 folds)" in text
    assert "1 screened out after one fold" in text


def test_the_holdout_bootstrap_is_seeded_and_brackets_the_gain(tmp_path):
    repo = make_repo(tmp_path, holdout_rows=80)
    write_night(repo, "n1", confirm_night(), night={"agent": "builtin", "trials": 3}, holdout_quality={0: 0.55, 4: 0.8})
    first, again = build_report(repo), build_report(repo)
    interval = first.trust.holdout
    assert interval == again.trust.holdout and interval.n == 80
    # Its point estimate is the gain of the loop's own holdout scorings (evaluate.py's score_rows, mean over seeds).
    assert interval.estimate == pytest.approx(first.comparisons[0].holdout_gain)
    assert interval.low < interval.estimate < interval.high
    assert f"gain on the blind holdout, paired bootstrap over 80 rows: {interval.estimate:+.4f}, 95% CI " \
           f"[{interval.low:+.4f}, {interval.high:+.4f}]" in render_markdown(first)


def test_the_bootstrap_is_wider_with_fewer_rows():
    gold = gold_rows(400, "h", 5)
    best = [trust.span_counts(gold, predict(gold, 0.8, seed), evaluate.spans) for seed in (1, 2, 3)]
    base = [trust.span_counts(gold, predict(gold, 0.6, seed), evaluate.spans) for seed in (4, 5, 6)]
    every = trust.bootstrap_gain(best, base, resamples=1000, seed=3)
    fewer = trust.bootstrap_gain([counts[:50] for counts in best], [counts[:50] for counts in base], resamples=1000, seed=3)
    assert every.n == 400 and fewer.n == 50
    assert fewer.high - fewer.low > 2 * (every.high - every.low)  # about sqrt(8) wider
    assert every.contains(every.estimate) and fewer.contains(fewer.estimate)
    assert trust.bootstrap_gain(best, base, resamples=1000, seed=4) != every


def test_a_resamples_f1_is_what_score_rows_gives_for_those_rows():
    gold = gold_rows(30, "h", 9)
    predicted = predict(gold, 0.7, 1)
    counts = trust.span_counts(gold, predicted, evaluate.spans)
    ids = list(gold)
    draw = np.random.default_rng(0).integers(0, len(ids), len(ids))
    resampled_gold = {f"{ids[i]}#{k}": gold[ids[i]] for k, i in enumerate(draw)}
    resampled_pred = {f"{ids[i]}#{k}": predicted[ids[i]] for k, i in enumerate(draw)}
    expected = evaluate.score_rows(resampled_gold, resampled_pred)["strict"]["f1"]
    assert trust.strict_f1(counts[draw].sum(axis=0)) == pytest.approx(expected)
    assert trust.strict_f1(counts.sum(axis=0)) == pytest.approx(evaluate.score_rows(gold, predicted)["strict"]["f1"])


def test_expected_maximum_of_normals():
    assert trust.expected_max_normal(1) == pytest.approx(0.0, abs=1e-9)
    assert trust.expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-6)
    assert trust.expected_max_normal(3) == pytest.approx(1.5 / math.sqrt(math.pi), abs=1e-6)
    assert 2.50 < trust.expected_max_normal(100) < 2.51


def test_the_shrinkage_line(tmp_path):
    repo = make_repo(tmp_path)
    records = confirm_night()
    write_night(repo, "n1", records, night={"agent": "builtin", "trials": 3}, holdout_quality={0: 0.55, 4: 0.8})
    report = build_report(repo)
    shrink, noise = report.trust.shrinkage, report.trust.noise
    # The night's noise: the prior sqrt(2) x the pooled seed sd (too few paired differences yet), floored at one
    # val span; the baseline's 3 seeds and the confirmed discard's last 2 seeds.
    pooled = math.sqrt((2 * stdev([0.50, 0.52, 0.51]) ** 2 + stdev([0.51, 0.50]) ** 2) / 3)
    assert noise.sd == pytest.approx(max(math.sqrt(2) * pooled, 1 / val_spans(repo)))
    proposals = 4  # the scored ones: three discards and a keep
    assert shrink.proposals == proposals and shrink.sigma_gain == pytest.approx(noise.sd / math.sqrt(3))
    assert shrink.optimism == pytest.approx(noise.sd / math.sqrt(3) * trust.expected_max_normal(proposals))
    assert shrink.selection_gain == pytest.approx(records[4].strict_f1 - records[0].strict_f1, abs=1e-5)
    assert shrink.holdout_gain == pytest.approx(report.comparisons[0].holdout_gain)
    assert f"shrinkage: {shrink.selection_gain:+.4f} on the data it was chosen on, {shrink.holdout_gain:+.4f} on the " \
           f"holdout; choosing the best of 4 proposals inflates a gain by about {shrink.optimism:.4f}" \
           in render_markdown(report)


def test_missing_pieces_are_said_not_failed(tmp_path):
    repo = make_repo(tmp_path)
    write_night(repo, "n1", confirm_night()[:4], night={"agent": "builtin", "trials": 3})  # no keep
    report = build_report(repo)
    assert report.trust.paired is None and report.trust.shrinkage is None
    assert "no keep: the baseline is still the best" in render_markdown(report)
    # One trial per run (monotonic): no paired interval, and no holdout predictions to resample.
    records = [record(0, "baseline", [0.50], tag="n2"), record(1, "keep", [0.53], tag="n2")]
    write_night(repo, "n2", records, night={"agent": "builtin", "policy": "monotonic", "trials": 1}, current=False)
    report = build_report(repo, "n2")
    assert report.trust.paired.low is None and report.full_trials == 1
    text = render_markdown(report)
    assert "share 1 trial(s): no paired interval" in text and "+0.0300 (no interval)" in text
    assert "no pred_holdout.jsonl to resample" in text


def test_a_night_without_a_holdout_split_says_so(tmp_path):
    repo = make_repo(tmp_path)
    (repo / "data" / "holdout.jsonl").unlink()
    write_night(repo, "n1", confirm_night(), night={"agent": "builtin"})
    text = render_markdown(build_report(repo))
    assert "no blind holdout (no data/holdout.jsonl)" in text and "not scored on the holdout" in text


# ----- Across nights, and consensus -----


def test_nights_by_agent(tmp_path):
    repo = make_repo(tmp_path)
    builtin_one = [record(0, "baseline", [0.50, 0.50, 0.50], tag="a"), record(1, "discard", [0.48], tag="a"),
                   record(2, "invalid", tag="a"), record(3, "keep", [0.53, 0.53, 0.53], tag="a")]
    optuna = [record(0, "baseline", [0.50, 0.50, 0.50], tag="b"), *(record(run, "discard", [0.49], tag="b")
                                                                     for run in (1, 2, 3)), record(4, "invalid", tag="b"),
              record(5, "crash", tag="b")]
    builtin_two = [record(0, "baseline", [0.50, 0.50, 0.50], tag="c"), record(1, "discard", [0.49], tag="c"),
                   record(2, "discard", [0.48], tag="c"), record(3, "keep", [0.52, 0.52, 0.52], tag="c")]
    write_night(repo, "a", builtin_one, night={"agent": "builtin"}, current=False, holdout_quality={0: 0.6, 3: 0.7})
    write_night(repo, "b", optuna, night={"agent": "optuna"}, current=False)
    write_night(repo, "c", builtin_two, night={"agent": "builtin"})
    # A night on another data set (other entity types): its gain is not pooled with the others'.
    other = [record(0, "baseline", [0.20, 0.20, 0.20], tag="d"), record(1, "keep", [0.40, 0.40, 0.40], tag="d"),
             record(2, "crash", tag="d")]
    for item in other:
        item.per_type = {"Disease": item.strict_f1} if item.strict_f1 is not None else {}
    write_night(repo, "d", other, night={"agent": "builtin"}, current=False, types=["Disease"])
    report = build_report(repo, "c")
    rows = {row.agent: row for row in report.agents if row.data == "Clinical+Social"}
    assert {(row.agent, row.data) for row in report.agents} == {("builtin", "Clinical+Social"),
                                                                 ("optuna", "Clinical+Social"), ("builtin", "Disease")}
    disease = next(row for row in report.agents if row.data == "Disease")
    assert (disease.nights, disease.runs, disease.crashes, disease.keeps) == (1, 3, 1, 1)
    assert disease.best_val_gain == pytest.approx(0.20)
    builtin = rows["builtin"]
    # Runs are train.py runs: the proposals that never ran are counted apart, and not towards the first keep.
    assert (builtin.nights, builtin.runs, builtin.crashes, builtin.invalid, builtin.keeps) == (2, 7, 0, 1, 2)
    assert (rows["optuna"].runs, rows["optuna"].crashes) == (5, 1)  # crashes ran, and are counted apart
    assert builtin.best_val_gain == pytest.approx(0.03) and builtin.runs_to_first_keep == 2.5  # median of 2 and 3
    entries = holdout.read_scores(holdout.scores_path(prepare.holdout_gold_path(repo / "data"), repo, "a"))
    assert builtin.best_holdout_gain == pytest.approx(entries[1]["strict_f1"] - entries[0]["strict_f1"])
    assert (rows["optuna"].nights, rows["optuna"].keeps, rows["optuna"].best_val_gain,
            rows["optuna"].runs_to_first_keep) == (1, 0, None, None)
    text = render_markdown(report)
    assert "## Nights by agent" in text
    assert "| optuna | Clinical+Social | 1 | 5 | 1 | 0 | 1 | 0 | n/a | n/a | n/a |" in text
    assert "| builtin | Clinical+Social | 2 | 7 | 0 | 0 | 1 | 2 | +0.0300 |" in text
    assert "| builtin | Disease | 1 | 3 | 1 | 0 | 0 | 1 | +0.2000 |" in text
    assert build_report(repo, "b").tag == "b"  # an archived night still reports
    single = make_repo(tmp_path / "single")
    write_night(single, "a", builtin_one, night={"agent": "builtin"})
    assert build_report(single).agents == [] and "Nights by agent" not in render_markdown(build_report(single))


def test_a_consensus_result_is_shown_beside_the_runs_own_scores(tmp_path):
    repo = make_repo(tmp_path)
    ws = write_night(repo, "n1", confirm_night(), night={"agent": "builtin"})
    summary = ws.run_dir(4) / "consensus" / "summary.json"
    summary.parent.mkdir(parents=True)
    shutil.copy2(FIXTURES / "consensus_summary.json", summary)
    report = build_report(repo)
    (item,) = report.consensus
    assert item.run == 4 and item.min_votes == 2 and item.scores["val"] == (0.5521, 0.6702)
    text = render_markdown(report)
    assert "## LLM consensus" in text
    line = next(line for line in text.splitlines() if line.startswith("| 4 | anthropic:claude-sonnet-4-5"))
    assert "| 0.5362 -> 0.5521 (+0.0159) | 0.6542 -> 0.6702 (+0.0160) | 0.5102 -> 0.5204 (+0.0102) |" in line
    assert "| 412 | 9 | $1.87 | 812,345 in, 40,210 out |" in line
    data = json.loads(summary.read_text())
    data.update(cost_usd=None, holdout=None)
    summary.write_text(json.dumps(data))
    line = next(line for line in render_markdown(build_report(repo)).splitlines() if "anthropic:" in line)
    assert "| unknown |" in line and "| n/a | n/a |" in line
    summary.write_text(json.dumps({"models": ["m"], "min_votes": 1, "val": {"strict_f1": "x"}}))
    with pytest.raises(ReportError, match=r"consensus/summary.json: unreadable consensus summary"):
        build_report(repo)


# ----- progress.png -----


def test_progress_points_screened_runs_hollow(tmp_path):
    repo = make_repo(tmp_path)
    write_night(repo, "n1", confirm_night(), night={"agent": "builtin", "trials": 3}, holdout_quality={0: 0.6, 4: 0.8})
    figure = progress_figure(build_report(repo))
    assert (offsets(figure, "kept"), offsets(figure, "discarded"), offsets(figure, "screened"),
            offsets(figure, "failed"), offsets(figure, "holdout")) == (2, 1, 2, 1, 2)
    screened = next(collection for collection in figure.axes[0].collections if collection.get_gid() == "screened")
    assert screened.get_facecolors().size == 0 or screened.get_facecolors()[0][3] == 0  # hollow
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert "screened out (1 seed)" in labels and "discarded (3 seeds)" in labels


# ----- What matters in the morning: the all-O collapse, the noise at 0, 80 columns -----


def test_runs_that_predicted_no_span_are_counted_and_flagged(tmp_path):
    repo = make_repo(tmp_path)
    ws = write_night(repo, "n1", confirm_night(), night={"agent": "builtin", "trials": 3})
    write_jsonl(ws.trial_dir(1, 0, 42, None) / "pred_val.jsonl",
                [{"id": "v0", "tags": ["O", "B-Clinical", "I-Clinical"]}, {"id": "v1", "tags": ["O"]}])
    write_jsonl(ws.trial_dir(2, 0, 42, None) / "pred_val.jsonl", [{"id": "v0", "tags": ["O", "O", "O"]},
                                                                   {"id": "v1", "tags": ["O"]}])
    for index, seed in enumerate((42, 43, 44)):  # a confirmed run: one trial with a span is no collapse
        write_jsonl(ws.trial_dir(3, index, seed, None) / "pred_val.jsonl",
                    [{"id": "v0", "tags": ["B-Social" if index == 2 else "O"]}])
    report = build_report(repo)
    assert report.summary.counts.collapsed == (2,)
    assert "collapse" in kinds(report)
    text = render_markdown(report)
    assert "1 run predicted no span at all (all O): run 2" in text
    warnings = text.split("## Warnings")[1].split("## ")[0]
    assert "all-O collapse: 1 run predicted no span at all (run 2); see its run.log" in warnings
    assert offsets(progress_figure(report), "collapsed") == 1  # the run is marked in progress.png too
    # Predictions cleaned up: a run with strict and relaxed F1 of exactly 0 is the same collapse.
    zero = record(7, "discard", [0.0])
    zero.set_scores([0.0], [0.0], {"Clinical": [0.0], "Social": [0.0]})
    healthy = make_repo(tmp_path / "cleaned")
    write_night(healthy, "n1", [record(0, "baseline", [0.5, 0.5, 0.5]), zero], night={"agent": "builtin"})
    assert build_report(healthy).summary.counts.collapsed == (7,)


def test_a_noise_of_zero_is_said_in_words(tmp_path):
    repo = make_repo(tmp_path)
    identical = [record(0, "baseline", [0.50, 0.50, 0.50]), record(1, "discard", [0.49])]
    write_night(repo, "n1", identical, night={"agent": "builtin", "trials": 3})
    lines = render_markdown(build_report(repo)).splitlines()
    (noise,) = [line for line in lines if line.startswith("- noise:")]
    floor = 1 / val_spans(repo)
    assert "the trials measured none (sd 0.0000" in noise and f"sd {floor:.4f}" in noise
    assert "(measured 0.0000)" not in noise
    shutil.rmtree(repo / "data")  # no data/: no floor either
    (noise,) = [line for line in render_markdown(build_report(repo)).splitlines() if line.startswith("- noise:")]
    assert "none measured" in noise and "no gain can be judged" in noise
    single = make_repo(tmp_path / "single")  # one baseline seed: nothing to measure a spread from
    write_night(single, "n1", [record(0, "baseline", [0.50]), record(1, "discard", [0.49])],
                night={"agent": "builtin", "trials": 1})
    (noise,) = [line for line in render_markdown(build_report(single)).splitlines() if line.startswith("- noise:")]
    assert "not measured yet" in noise and "measured none" not in noise and f"sd {floor:.4f}" in noise


def wide_night(tmp_path) -> Path:
    """Three nights (two agents, a crash, a collapse) and a consensus: every table of the report at once."""
    repo = make_repo(tmp_path)
    write_night(repo, "a", [record(0, "baseline", [0.50, 0.50, 0.50], tag="a"), record(1, "crash", tag="a")],
                night={"agent": "optuna"}, current=False)
    records = confirm_night()
    records[1].direction = "tokenisation and subword alignment of the windows"
    ws = write_night(repo, "n1", records, night={"agent": "anthropic", "trials": 3}, holdout_quality={0: 0.6, 4: 0.8},
                     stop="--max-runs reached (7 runs)")
    write_jsonl(ws.trial_dir(2, 0, 42, None) / "pred_val.jsonl", [{"id": "v0", "tags": ["O"]}])
    summary = ws.run_dir(4) / "consensus" / "summary.json"
    summary.parent.mkdir(parents=True)
    shutil.copy2(FIXTURES / "consensus_summary.json", summary)
    return repo


def test_every_table_fits_80_columns_without_breaking_a_word(tmp_path, monkeypatch, capsys):
    from research_loop.cli import commands as cli_support
    from research_loop.report.render import summary_lines, tables, trust_lines

    repo = wide_night(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(tmp_path)  # the closing "plot: PATH" line is short whatever the temporary folder
    assert cli_support.report(repo, "n1", "rich", Path("p.png"), lambda text, err=False: print(text)) == 0
    out = capsys.readouterr().out
    report = build_report(repo, "n1")
    words = set()
    for text in [*(f"{label} {text}" for label, text in summary_lines(report)), *trust_lines(report),
                 *(alert.message for alert in report.alerts), f"Morning report: autoresearch/{report.tag}",
                 "Warnings ! How far to trust it - (none) plot: p.png"]:
        words.update(text.split())
    for heading, header, body in tables(report):
        for text in [heading, *header, *(cell for row in body for cell in row)]:
            words.update(text.split())
    assert "Nights by agent" in out and "LLM consensus" in out and "Kept changes" in out
    assert "--max-runs reached (7 runs)" in out
    for line in out.splitlines():
        assert len(line) <= 80, line
        for token in line.translate({ord(char): " " for char in "│┃─━┏┓┗┛┡┩└┘┌┐╭╮╰╯├┤┼╇╈┳┻╋┬┴═║"}).split():
            assert token in words, f"{token!r} (a broken word?) in: {line}"


@pytest.mark.parametrize("runs", [1, 3])
def test_progress_axes_of_a_short_night(tmp_path, runs):
    repo = make_repo(tmp_path)
    records = [record(0, "baseline", [0.50, 0.50, 0.50]), record(1, "discard", [0.0]),
               record(2, "keep", [0.55, 0.55, 0.55])][:runs]
    ws = write_night(repo, "n1", records, night={"agent": "builtin", "trials": 3})
    if runs == 3:
        write_jsonl(ws.trial_dir(1, 0, 42, None) / "pred_val.jsonl", [{"id": "v0", "tags": ["O"]}])
    # The holdout scored exactly what val scored: the diamond lies on the keep's point.
    path = holdout.scores_path(prepare.holdout_gold_path(repo / "data"), repo, "n1")
    for item in records:
        if item.status.kept:
            holdout.append_score(path, {"run": str(item.run), "commit": item.commit, "role": "keep",
                                        "strict_f1": item.strict_f1, "relaxed_f1": item.relaxed_f1, "per_type": {},
                                        "seed_scores": [item.strict_f1]})
    report = build_report(repo)
    figure = progress_figure(report)
    axes = figure.axes[0]
    low, high = axes.get_ylim()
    top = max(item.strict_f1 for item in records)
    assert low >= 0 and high >= top + 0.05
    assert low <= min(item.strict_f1 for item in records)
    ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
    assert ticks == list(range(runs))  # whole runs only, one tick each
    diamonds = next(collection for collection in axes.collections if collection.get_gid() == "holdout")
    assert diamonds.get_facecolors().size == 0 or diamonds.get_facecolors()[0][3] == 0  # hollow: the keep shows
    kept = next(collection for collection in axes.collections if collection.get_gid() == "kept")
    assert diamonds.get_sizes()[0] > kept.get_sizes()[0]  # and drawn around it, not under it
    assert offsets(figure, "collapsed") == (1 if runs == 3 else 0)
    assert plot_progress(report, tmp_path / f"progress-{runs}.png").stat().st_size > 0
