"""The morning report on a recorded night (tests/fixtures/results_sample.tsv): counts, best, gains,
directions, warnings, both renderings and progress.png. Expected values are computed here from the
fixture with csv/statistics, not by the report code."""

import csv
import io
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from statistics import mean, stdev

import pytest
from rich.console import Console

from research_loop import ledger
from research_loop.report import (
    ReportError,
    build_report,
    plot_progress,
    progress_figure,
    render_markdown,
    render_rich,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "results_sample.tsv"
BASELINE_SEEDS = [0.4810, 0.4932, 0.4875]  # the fixture's baseline seed_scores
TYPES = ["ClinicalImpacts", "SocialImpacts"]


@pytest.fixture
def rows() -> list[dict]:
    return ledger.read_rows(FIXTURE)


@pytest.fixture(scope="module")
def raw() -> list[dict]:
    """The fixture read independently of the package."""
    with FIXTURE.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def last_keep(raw: list[dict]) -> dict:
    return [row for row in raw if row["status"] == "keep"][-1]


def holdout_scores(raw: list[dict], baseline_f1: float = 0.4705, best_gain: float = 0.0397) -> list[dict]:
    """Holdout scorings as the loop writes them: the baseline, every keep, and the final best."""
    best_run = last_keep(raw)["run"]
    entries = [{"run": "1", "commit": raw[0]["commit"], "role": "baseline", "strict_f1": baseline_f1,
                "relaxed_f1": baseline_f1 + 0.12,
                "per_type": {"ClinicalImpacts": baseline_f1 - 0.04, "SocialImpacts": baseline_f1 + 0.05},
                "seed_scores": [baseline_f1 - 0.005, baseline_f1, baseline_f1 + 0.005],
                "timestamp": raw[0]["timestamp"]}]
    for row in raw:
        if row["status"] == "keep":
            score = baseline_f1 + best_gain * (0.5 if row["run"] != best_run else 1.0)
            entries.append({"run": row["run"], "commit": row["commit"], "role": "keep", "strict_f1": score,
                            "relaxed_f1": score + 0.12, "per_type": {"ClinicalImpacts": score - 0.04,
                                                                      "SocialImpacts": score + 0.05},
                            "seed_scores": [score], "timestamp": row["timestamp"]})
    best = entries[-1]["strict_f1"]
    final = dict(entries[-1], role="final", seed_scores=[best - 0.002, best, best + 0.002])
    return [*entries, final]


def extra_runs(rows: list[dict], status: str, count: int, seconds: float = 1000.0) -> list[dict]:
    """rows followed by `count` more runs of one status, each ending `seconds` + 200 s after the previous."""
    out = list(rows)
    for _ in range(count):
        last = out[-1]
        stamp = datetime.fromisoformat(last["timestamp"]) + timedelta(seconds=seconds + 200)
        scored = status == "discard"
        out.append({**last, "run": str(int(last["run"]) + 1), "status": status, "seconds": f"{seconds:.1f}",
                    "strict_f1": "0.5100" if scored else "", "relaxed_f1": "0.6300" if scored else "",
                    **{f"strict_f1_{name}": "0.5000" if scored else "" for name in TYPES},
                    "seed_scores": "0.5100" if scored else "", "strict_f1_sd": "", "seeds": "42",
                    "direction": "loss", "description": "another idea", "timestamp": stamp.isoformat()})
    return out


def kinds(report) -> set[str]:
    return {alert.kind for alert in report.alerts}


def plateau_message(report) -> str:
    return next(alert.message for alert in report.alerts if alert.kind == "plateau")


# ----- The fixture is the night the brief describes -----


def test_fixture_holds_a_realistic_night(raw):
    statuses = Counter(row["status"] for row in raw)
    assert list(raw[0]) == ledger.columns_for(TYPES)
    assert 20 <= len(raw) <= 30
    assert (statuses["baseline"], statuses["crash"], statuses["timeout"], statuses["invalid"]) == (1, 3, 1, 1)
    assert raw[0]["seed_scores"] == ",".join(f"{s:.4f}" for s in BASELINE_SEEDS)
    assert float(raw[0]["strict_f1"]) == pytest.approx(mean(BASELINE_SEEDS), abs=5e-5)


# ----- Summary -----


def test_counts_match_the_fixture(rows, raw):
    statuses = Counter(row["status"] for row in raw)
    counts = build_report(rows, []).counts
    assert counts.runs == len(raw)
    assert counts.keeps == statuses["keep"]
    assert counts.discards == statuses["discard"]
    assert counts.crashes == statuses["crash"] + statuses["timeout"]
    assert counts.timeouts == statuses["timeout"]
    assert counts.invalid == statuses["invalid"]


def test_wall_time_and_gpu_share(rows, raw):
    # Rows are stamped when a run ends: the night starts at the first stamp minus the first run's seconds.
    first, last = (datetime.fromisoformat(raw[i]["timestamp"]) for i in (0, -1))
    wall = (last - first).total_seconds() + float(raw[0]["seconds"])
    trained = sum(float(row["seconds"]) for row in raw if row["status"] != "invalid")
    report = build_report(rows, [])
    assert report.wall_seconds == pytest.approx(wall)
    assert report.gpu_fraction == pytest.approx(trained / wall)
    assert 0.5 < report.gpu_fraction < 1.0


def test_cost_and_tokens(rows, raw):
    tokens = {"input": 1_234_567, "output": 45_678, "cache_read": 3_000_000, "cache_write": 120_000}
    report = build_report(rows, [], tokens=tokens)
    cost = sum(float(row["cost_usd"]) for row in raw)
    assert report.cost_usd == pytest.approx(cost)
    text = render_markdown(report)
    assert f"${cost:.2f}" in text and "1,234,567" in text and "45,678" in text
    assert "tokens n/a" in render_markdown(build_report(rows, []))


# ----- What won -----


def test_best_is_the_last_keep_with_gains_on_val_and_holdout(rows, raw):
    best = last_keep(raw)
    report = build_report(rows, holdout_scores(raw, baseline_f1=0.4705, best_gain=0.0397))
    assert report.best_run == best["run"] and report.best_commit == best["commit"][:7]
    strict, relaxed, *per_type = report.comparisons
    best_seeds = [float(value) for value in best["seed_scores"].split(",")]
    assert strict.best_val.mean == pytest.approx(mean(best_seeds), abs=5e-5)
    assert strict.best_val.sd == pytest.approx(stdev(best_seeds), abs=5e-5) and strict.best_val.seeds == 3
    assert strict.baseline_val.sd == pytest.approx(stdev(BASELINE_SEEDS), abs=5e-5)
    assert strict.val_gain == pytest.approx(mean(best_seeds) - mean(BASELINE_SEEDS), abs=1e-4)
    assert relaxed.val_gain == pytest.approx(float(best["relaxed_f1"]) - float(raw[0]["relaxed_f1"]))
    for name, comparison in zip(TYPES, per_type):
        column = f"strict_f1_{name}"
        assert name in comparison.metric
        assert comparison.val_gain == pytest.approx(float(best[column]) - float(raw[0][column]))
    assert strict.holdout_gain == pytest.approx(0.0397)
    assert strict.best_holdout.seeds == 3  # the "final" scoring (3 seeds) wins over the 1-seed "keep" one
    reordered = build_report(rows, holdout_scores(raw)[::-1]).comparisons[0]
    assert reordered.best_holdout.seeds == 3
    assert relaxed.holdout_gain == pytest.approx(0.0397)
    assert per_type[0].holdout_gain == pytest.approx(0.0397)


def test_without_holdout_the_holdout_columns_say_na(rows):
    report = build_report(rows, [])
    strict = report.comparisons[0]
    assert strict.best_holdout is None and strict.holdout_gain is None
    lines = render_markdown(report).splitlines()
    strict_line = next(line for line in lines if line.startswith("| strict F1 |"))
    assert strict_line.count("n/a") == 3


def test_kept_changes_in_order_with_hypotheses(rows, raw):
    keeps = [row for row in raw if row["status"] == "keep"]
    kept = build_report(rows, []).kept
    assert [change.run for change in kept] == [row["run"] for row in keeps]
    assert [change.commit for change in kept] == [row["commit"][:7] for row in keeps]
    assert [change.description for change in kept] == [row["description"] for row in keeps]
    assert kept[0].gain == pytest.approx(float(keeps[0]["strict_f1"]) - float(raw[0]["strict_f1"]))
    assert kept[1].gain == pytest.approx(float(keeps[1]["strict_f1"]) - float(keeps[0]["strict_f1"]))


def test_direction_table(rows, raw):
    proposals = [row for row in raw if row["status"] != "baseline"]
    baseline_f1 = float(raw[0]["strict_f1"])
    table = {stat.direction: stat for stat in build_report(rows, []).directions}
    assert set(table) == {row["direction"] for row in proposals}
    for direction, stat in table.items():
        mine = [row for row in proposals if row["direction"] == direction]
        scores = [float(row["strict_f1"]) for row in mine if row["status"] in ("keep", "discard")]
        trailing = 0
        for row in mine:
            trailing = 0 if row["status"] == "keep" else trailing + 1
        assert stat.runs == len(mine)
        assert stat.best_f1 == (max(scores) if scores else None)
        if scores:
            assert stat.gain == pytest.approx(max(scores) - baseline_f1)
        assert stat.closed == (trailing >= 5), direction
    assert table["learning rate"].closed and not table["post-processing"].closed
    given_closed = build_report(rows, [], closed_directions={"loss"}).directions
    given = {stat.direction: stat.closed for stat in given_closed}
    assert given["loss"] and not given["learning rate"]


# ----- Warnings -----


def test_the_recorded_night_has_no_warnings(rows, raw):
    assert build_report(rows, holdout_scores(raw)).alerts == []


def test_plateau_after_15_runs_without_a_keep(rows):
    # Proposals that never compile take minutes, so only the count of runs can call this a plateau.
    assert "plateau" not in kinds(build_report(extra_runs(rows, "invalid", 10, seconds=0.0), []))
    report = build_report(extra_runs(rows, "invalid", 11, seconds=0.0), [])  # 4 + 11 runs since the last keep
    assert "no keep in the last 15 runs" in plateau_message(report)


def test_plateau_when_the_last_third_of_the_night_kept_nothing(rows):
    # 10 long (three-seed) discards: fewer than 15 runs since the last keep, but over a third of the night.
    report = build_report(extra_runs(rows, "discard", 10, seconds=3000.0), [])
    assert "last third of the night" in plateau_message(report)


def test_one_discard_after_a_keep_is_no_plateau(rows):
    short_night = extra_runs(rows[:2], "discard", 1, seconds=3000.0)  # baseline, keep, one three-seed discard
    assert "plateau" not in kinds(build_report(short_night, []))


def test_crash_warning_above_a_quarter_of_the_runs(rows):
    # The fixture has 4 crashes/timeouts in 25 runs; 3 more make exactly 25 %, 4 more pass it.
    assert "crashes" not in kinds(build_report(extra_runs(rows, "crash", 3, seconds=40.0), []))
    report = build_report(extra_runs(rows, "crash", 4, seconds=40.0), [])
    assert "crashes" in kinds(report)
    assert "8 of 29" in render_markdown(report)


def test_overfit_alert_when_holdout_gains_lag_val_gains_by_2_sd(rows, raw):
    val_gain = float(last_keep(raw)["strict_f1"]) - float(raw[0]["strict_f1"])
    two_sd = 2 * stdev(BASELINE_SEEDS)
    close = build_report(rows, holdout_scores(raw, best_gain=val_gain - two_sd + 0.002))
    assert "overfit" not in kinds(close)
    lagging = build_report(rows, holdout_scores(raw, best_gain=val_gain - two_sd - 0.002))
    assert "overfit" in kinds(lagging)
    assert "overfit" in render_markdown(lagging).lower()
    assert "overfit" in kinds(build_report(rows, holdout_scores(raw, best_gain=0.0)))


def test_no_overfit_alert_without_the_baselines_holdout(rows, raw):
    only_best = [entry for entry in holdout_scores(raw, best_gain=0.0) if entry["role"] != "baseline"]
    assert "overfit" not in kinds(build_report(rows, only_best))


def test_budget_warning_names_the_stop_reason(rows):
    report = build_report(rows, [], stop_reason="--max-runs reached (25 runs)")
    assert "budget" in kinds(report)
    assert "--max-runs reached (25 runs)" in render_markdown(report)
    assert "budget" not in kinds(build_report(rows, []))


# ----- Renderings -----


def test_markdown_has_the_numbers_in_pipe_tables(rows, raw):
    text = render_markdown(build_report(rows, holdout_scores(raw)))
    best = last_keep(raw)
    assert text.startswith("# Morning report: autoresearch/mar14")
    assert best["strict_f1"] in text and f"run {best['run']}" in text
    assert f"+{float(best['strict_f1']) - float(raw[0]['strict_f1']):.4f}" in text
    assert "0.4705" in text  # the baseline's holdout score
    assert f"{len(raw)}: baseline 1" in text
    assert "|---|---|---|---|---|---|" in text
    learning_rate = [row for row in raw if row["direction"] == "learning rate"]
    assert any(line.startswith(f"| learning rate | {len(learning_rate)} |") and line.endswith("| yes |")
               for line in text.splitlines())
    for row in raw:
        if row["status"] == "keep":
            assert row["description"] in text


def test_rich_rendering_shows_the_best_score(rows, raw):
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render_rich(build_report(rows, holdout_scores(raw), stop_reason="stopped by Ctrl-C")))
    text = console.export_text()
    assert last_keep(raw)["strict_f1"] in text
    assert "Warnings" in text and "stopped by Ctrl-C" in text
    assert "learning rate" in text


def test_an_empty_night_renders(tmp_path):
    report = build_report([], [])
    assert report.counts.runs == 0 and report.best_run is None and report.alerts == []
    assert "0: baseline 0" in render_markdown(report)
    Console(file=io.StringIO(), width=120).print(render_rich(report))
    assert plot_progress([], [], tmp_path / "progress.png").is_file()


def test_an_unreadable_cell_is_a_one_line_error(rows):
    rows[3]["strict_f1"] = "0.5o"
    with pytest.raises(ReportError, match=r"^results.tsv run 4: strict_f1 is not a number: '0.5o'$"):
        build_report(rows, [])


# ----- progress.png -----


def offsets(figure, gid: str) -> int:
    return sum(len(collection.get_offsets()) for collection in figure.axes[0].collections
               if collection.get_gid() == gid)


def test_progress_figure_has_one_point_per_scored_run(rows, raw):
    holdout = holdout_scores(raw)
    figure = progress_figure(rows, holdout)
    scored = [row for row in raw if row["strict_f1"]]
    assert offsets(figure, "discarded") + offsets(figure, "kept") == len(scored)
    assert offsets(figure, "kept") == sum(row["status"] in ("baseline", "keep") for row in raw)
    assert offsets(figure, "failed") == sum(row["status"] in ("crash", "timeout") for row in raw)
    assert offsets(figure, "holdout") == len({entry["run"] for entry in holdout})
    staircase = figure.axes[0].lines[0]
    assert list(staircase.get_xdata())[-1] == int(raw[-1]["run"])
    assert list(staircase.get_ydata())[-1] == pytest.approx(float(last_keep(raw)["strict_f1"]))
    assert "mar14" in figure.axes[0].get_title()
    assert offsets(progress_figure(rows, []), "holdout") == 0


def test_plot_progress_writes_a_png(rows, raw, tmp_path):
    path = plot_progress(rows, holdout_scores(raw), tmp_path / "progress.png")
    assert path == tmp_path / "progress.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
