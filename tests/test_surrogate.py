"""The surrogate learner of bench/efficacy.py: it runs in the real sandbox, reads no val or holdout tags, its
truth has the effects it is configured with; a short efficacy run prints the table and keeps no no-op."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loop_helpers import ScriptedAgent, data_without_test_rows, loop_config, make_repo, results

import prepare
from research_loop.config_block import read_config
from research_loop.loop import run_loop

PROJECT = Path(__file__).resolve().parents[1]
SURROGATE = PROJECT / "bench" / "surrogate" / "train.py"
sys.path.insert(0, str(PROJECT / "bench"))
import efficacy


def test_surrogate_has_the_real_config_block():
    real = read_config((PROJECT / "train.py").read_text())
    surrogate = read_config(SURROGATE.read_text())
    assert set(real) <= set(surrogate)
    assert {name: value for name, (_, value) in real.items() if name != "MODEL_NAME"} == \
        {name: surrogate[name][1] for name in real if name != "MODEL_NAME"}


def test_surrogate_runs_in_the_sandbox_and_its_predictions_are_scored(tmp_path, prepared_task7):
    data = data_without_test_rows(prepared_task7, tmp_path / "data")
    repo = make_repo(tmp_path, data, train_py=SURROGATE.read_text())
    agent = ScriptedAgent([("LABEL_SCHEME", "IO"), ("WARMUP_RATIO", 0.2)])
    run_loop(loop_config(repo, "s", max_runs=3, timeout_s=30, agent_max_failures=1), agent)
    rows = results(repo)
    assert rows[0]["status"] == "baseline" and len(rows) == 3
    assert all(row["sandbox"] in ("bwrap", "unshare") for row in rows)
    assert all(0.0 < float(row["strict_f1"]) < 1.0 for row in rows)
    assert list((repo / "runs" / "s").glob("*/pred_holdout.jsonl"))


def test_surrogate_never_reads_val_or_holdout_tags(prepared_task7):
    model = efficacy.load_surrogate()
    config = model.config_of(vars(model))
    train = efficacy.read_jsonl(prepared_task7 / "train.jsonl")
    val = efficacy.read_jsonl(prepared_task7 / "val.jsonl")
    blind = [{"id": row["id"], "tokens": row["tokens"]} for row in val]  # a KeyError if it read tags
    for seed in (42, 43):
        assert model.predict(config, train, blind, seed, None, "converged") == \
            model.predict(config, train, val, seed, None, "converged")
    assert "tags" not in efficacy.read_jsonl(prepared_task7 / "holdout.jsonl")[0]


def test_truth_has_the_configured_effects(tmp_path, prepared_task7):
    truth = efficacy.Truth(prepared_task7, prepare.holdout_gold_path(prepared_task7), "converged", 8,
                           tmp_path / "truth.json")
    model = truth.model
    base = model.config_of(vars(model))

    def gain(**change):
        return truth(dict(base, **change))["pooled"] - truth(base)["pooled"]

    for change in ({"LABEL_SCHEME": "IO"}, {"WARMUP_RATIO": 0.2}, {"LEARNING_RATE": 3e-5}):
        assert 0.01 < gain(**change) < 0.08, change
    for change in ({"LABEL_SMOOTHING": 0.2}, {"EPOCHS": 3}, {"SCHEDULE": "constant"}):
        assert gain(**change) < 0, change
    assert gain(WEIGHT_DECAY=0.0) == 0.0 and gain(WINDOW_OVERLAP=96) == 0.0  # knobs without effect
    assert gain(BOUNDARY_TRIM=True) > 0  # the interaction: trimming helps BIO ...
    assert gain(LABEL_SCHEME="IO", BOUNDARY_TRIM=True) < gain(LABEL_SCHEME="IO")  # ... and hurts IO
    assert model.collapse_rate(base, "converged") == 0 and model.collapse_rate(base, "short") > 0


def test_a_short_efficacy_run_prints_the_table_and_a_kept_no_op_fails_it(tmp_path, task7_dir):
    work = tmp_path / "work"
    command = [sys.executable, str(PROJECT / "bench" / "efficacy.py"), "--source", str(task7_dir), "--work",
               str(work), "--nights", "1", "--proposals", "4", "--truth-seeds", "2",
               "--cells", "null:monotonic,null:confirm"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert "| null | monotonic | 1 | 4 |" in done.stdout and "| null | confirm | 1 | 4 |" in done.stdout, \
        done.stdout + done.stderr
    nights = {night["policy"]: night for night in map(json.loads, (work / "results.jsonl").read_text().splitlines())}
    assert nights["confirm"]["keeps"] == 0
    noop = sum(night["noop_keeps"] for night in nights.values())
    assert done.returncode == (3 if noop else 0) and ("no-op proposal(s) kept" in done.stdout) == bool(noop)
    # a night that kept a comment-only change fails the bench (written by hand, as the loop should never)
    (work / "results.jsonl").write_text("".join(
        json.dumps(dict(night, noop_keeps=1, keeps=1)) + "\n" for night in nights.values()))
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 3 and "no-op proposal(s) kept" in again.stdout
    assert nights["monotonic"]["noop_keeps"] == 0  # a tie is compared like for like: never kept
