"""`agent_loop.py calibrate` on a temporary git repository: the seed-dependent fake train.py, then MiniLM."""

import hashlib
import json
import subprocess
import sys
from statistics import mean, stdev

import pytest
from loop_helpers import SEEDED_FAKE_TRAIN_PY, data_without_test_rows, git, make_repo

from evaluate import read_tags, spans
from research_loop.acceptance import Confirm, Monotonic
from research_loop.calibrate import (
    FIELDS,
    CalibrationError,
    calibrate,
    calibration_path,
    monotonic_false_accepts,
    read_calibration,
    summary_lines,
)
from research_loop.loop import LoopLock

TAG = "t"


@pytest.fixture
def repo(tmp_path, prepared_task7):
    return make_repo(tmp_path, prepared_task7, train_py=SEEDED_FAKE_TRAIN_PY)


def cli(repo, *args, timeout=120):
    return subprocess.run([sys.executable, "agent_loop.py", "calibrate", "--tag", TAG, *args], cwd=repo,
                          capture_output=True, text=True, timeout=timeout, check=False)


def fake_strict_f1(repo, seed):
    """What the seeded fake scores: gold tags on the first int(quality * n) val rows, O elsewhere, so precision
    is 1 and recall the share of gold spans in those rows (counted with the fixed scorer's spans)."""
    quality = 0.5 + (int(hashlib.md5(repr((3e-05, 0.01, "cosine")).encode()).hexdigest(), 16) % 11 - 5) / 100
    quality += (seed % 5 - 2) / 50
    gold = list(read_tags(repo / "data" / "val.jsonl").values())
    kept = int(quality * len(gold))
    recall = sum(len(spans(tags)) for tags in gold[:kept]) / sum(len(spans(tags)) for tags in gold)
    return 2 * recall / (1 + recall)


def test_calibrate_writes_the_seed_scores_their_spread_and_the_detectable_gain(repo):
    result = cli(repo, "--repeats", "3")
    assert result.returncode == 0, result.stdout + result.stderr

    saved = json.loads(calibration_path(repo, TAG).read_text())
    assert set(saved) == set(FIELDS)
    assert saved["seeds"] == [42, 43, 44]  # the loop's seeds
    # Scores come from scoring the prediction files (the fake prints 0.999999), one per seed.
    assert saved["scores"] == pytest.approx([fake_strict_f1(repo, seed) for seed in (42, 43, 44)], abs=1e-12)
    assert len(set(saved["scores"])) == 3
    assert saved["mean"] == mean(saved["scores"]) and saved["sd"] == stdev(saved["scores"]) > 0
    assert saved["detectable_gain"] == Confirm(seeds=(42, 43, 44)).detectable_gain(saved["sd"])
    assert saved["detectable_gain"] > saved["sd"]
    assert saved["policy"] == "confirm" and saved["policy_seeds"] == 3 and saved["train_args"] == ""
    assert saved["commit"] == git(repo, "rev-parse", "HEAD") and saved["tag"] == TAG
    assert len(saved["relaxed"]) == 3 and all(0 < relaxed <= 1 for relaxed in saved["relaxed"])
    assert read_calibration(repo, TAG) == saved

    # What the user reads: the table and the summary.
    assert f"mean {saved['mean']:.4f}, sd {saved['sd']:.4f}" in result.stdout
    assert f"{saved['detectable_gain']:+.4f}" in result.stdout
    assert all(f"{score:.4f}" in result.stdout for score in saved["scores"])
    # Each seed ran in its own folder; nothing else changed: no results, no branch, no lock left.
    assert all((repo / "runs" / TAG / "calibrate" / f"seed-{seed}" / "run.log").is_file() for seed in (42, 43, 44))
    assert not (repo / "results.tsv").exists() and not (repo / "runs" / TAG / "loop.lock").exists()
    assert git(repo, "status", "--porcelain") == "" and git(repo, "branch", "--show-current") == "main"


def test_monotonic_has_no_margin_and_train_py_gets_the_loops_environment(repo, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    lines = []
    saved = calibrate(repo, TAG, 2, "", Monotonic(), timeout_s=30, echo=lines.append)

    assert saved["seeds"] == [42, 43] and saved["policy"] == "monotonic" and saved["policy_seeds"] == 1
    assert saved["detectable_gain"] is None and saved["sd"] == stdev(saved["scores"])
    assert any("seed 43: strict F1" in line for line in lines)
    summary = " ".join(summary_lines(saved))
    assert "no noise margin" in summary and "4.2 no-better candidates per 100 runs" in summary
    assert monotonic_false_accepts(100) == pytest.approx(4.18738, abs=1e-5)  # H_100 - 1
    assert monotonic_false_accepts(2) == pytest.approx(0.5)  # one candidate beats the baseline half the time

    envs = [json.loads((repo / "runs" / TAG / "calibrate" / f"seed-{seed}" / "env.json").read_text())
            for seed in (42, 43)]
    assert all("ANTHROPIC_API_KEY" not in env for env in envs)
    assert all(env["NER_AUTORESEARCH_CACHE"] != str(repo) and "nocache" in env["NER_AUTORESEARCH_CACHE"]
               for env in envs)
    assert "HF_HUB_OFFLINE" not in envs[0] and envs[1]["HF_HUB_OFFLINE"] == "1"  # the model is cached by then


def test_a_crashed_seed_fails_with_its_log_and_writes_nothing(tmp_path, prepared_task7):
    crashing = SEEDED_FAKE_TRAIN_PY.replace('if ACTION == "crash":', 'if ACTION == "crash" or args.seed == 43:')
    assert crashing != SEEDED_FAKE_TRAIN_PY
    repo = make_repo(tmp_path, prepared_task7, train_py=crashing)
    result = cli(repo, "--repeats", "3")
    assert result.returncode == 1
    assert result.stderr.startswith("error: seed 43 failed (crash: exit code 1: RuntimeError: boom")
    assert "runs/t/calibrate/seed-43/run.log" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "RuntimeError: boom" in (repo / "runs" / TAG / "calibrate" / "seed-43" / "run.log").read_text()
    assert not calibration_path(repo, TAG).exists() and read_calibration(repo, TAG) is None
    assert not (repo / "runs" / TAG / "calibrate" / "seed-44").exists()  # it stopped at the crash
    assert not (repo / "runs" / TAG / "loop.lock").exists()


def test_a_slow_seed_is_killed_at_the_timeout(repo):
    with pytest.raises(CalibrationError, match=r"^seed 42 failed \(timeout: killed after 1 s"):
        calibrate(repo, TAG, 2, "--sleep 60", Confirm(), timeout_s=1)
    assert not calibration_path(repo, TAG).exists()


def test_uncommitted_train_py_is_refused_and_left_alone(repo):
    edited = SEEDED_FAKE_TRAIN_PY + "# my experiment\n"
    (repo / "train.py").write_text(edited)
    result = cli(repo)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "train.py has uncommitted changes" in result.stderr
    assert (repo / "train.py").read_text() == edited
    assert not (repo / "runs" / TAG / "calibrate").exists() and not calibration_path(repo, TAG).exists()


def test_a_tag_the_loop_would_refuse_is_refused(repo):
    with pytest.raises(CalibrationError, match=r"--tag '\.\./x': not a valid git branch name part"):
        calibrate(repo, "../x", 2, "", Confirm(), timeout_s=30)
    assert not (repo / "x").exists() and not (repo / "runs").exists()


def test_calibrate_waits_for_no_loop(repo):
    lock = LoopLock(repo, "other")
    lock.acquire()
    try:
        with pytest.raises(CalibrationError, match="another loop is running .*tag other"):
            calibrate(repo, TAG, 2, "", Confirm(), timeout_s=30)
    finally:
        lock.release()
    assert not (repo / "runs" / TAG / "calibrate").exists()


def test_read_calibration_names_a_broken_file(repo):
    assert read_calibration(repo, TAG) is None
    path = calibration_path(repo, TAG)
    path.parent.mkdir(parents=True)
    path.write_text('{"tag": "t"')
    with pytest.raises(CalibrationError, match=r"runs/t/calibration.json: unreadable"):
        read_calibration(repo, TAG)
    path.write_text('{"tag": "t"}')
    with pytest.raises(CalibrationError, match=r"calibration.json: field 'commit' missing"):
        read_calibration(repo, TAG)


@pytest.mark.slow
def test_calibrate_minilm_with_the_real_train_py(tmp_path, prepared_task7):
    """Two seeds of the real train.py with the bundled small encoder, through the CLI."""
    repo = make_repo(tmp_path, data_without_test_rows(prepared_task7, tmp_path / "data"), train_py=None)
    train_args = "--model minilm --epochs 1 --limit 32 --lr 1e-4"
    result = cli(repo, "--repeats", "2", "--train-args", train_args, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = read_calibration(repo, TAG)
    assert saved["seeds"] == [42, 43] and saved["train_args"] == train_args
    assert all(0 <= score <= 1 for score in saved["scores"]) and saved["sd"] == stdev(saved["scores"])
    assert saved["detectable_gain"] == Confirm(seeds=(42, 43, 44)).detectable_gain(saved["sd"])
    # The scores are those train.py printed for its own val predictions (the same scorer, the same files).
    for seed, score in zip(saved["seeds"], saved["scores"]):
        log = (repo / "runs" / TAG / "calibrate" / f"seed-{seed}" / "run.log").read_text()
        assert f"strict_f1: {score:.6f}" in log
    print("\n".join(summary_lines(saved)))
