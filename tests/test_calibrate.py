"""`agent_loop.py calibrate` on a temporary git repository: the seed-dependent fake train.py as sandboxed jobs,
then (slow) the real train.py with the bundled MiniLM."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import mean, stdev

import pytest
from loop_helpers import (
    FAKE_TRAIN_PY,
    SEEDED_FAKE_TRAIN_PY,
    alive,
    data_without_test_rows,
    git,
    make_repo,
    set_constant,
)

from evaluate import read_tags, score_files, spans
from research_loop.calibrate import (
    FIELDS,
    CalibrationError,
    calibration_lines,
    calibration_path,
    monotonic_false_accepts,
    run_calibration,
)
from research_loop.evaluation.acceptance import Confirm, Monotonic
from research_loop.night.folders import Workspace
from research_loop.night.lock import LoopLock

TAG = "t"


@pytest.fixture
def repo(tmp_path, prepared_task7):
    return make_repo(tmp_path, prepared_task7, train_py=SEEDED_FAKE_TRAIN_PY)


def cli(repo, *args, timeout=120, env=None):
    return subprocess.run([sys.executable, "agent_loop.py", "calibrate", "--tag", TAG, *args], cwd=repo,
                          capture_output=True, text=True, timeout=timeout, check=False, env=env)


def calibrate(repo, repeats=2, **overrides):
    settings = {"limit": None, "timeout_s": 60, "policy": Confirm(), "sandbox": "auto", "no_sandbox": False}
    return run_calibration(repo, TAG, repeats, **{**settings, **overrides})


def val_spans(repo):
    return sum(len(spans(tags)) for tags in read_tags(repo / "data" / "val.jsonl").values())


def seed_folder(repo, seed):
    return repo / "runs" / TAG / "calibrate" / f"seed-{seed}"


def test_calibrate_writes_the_seed_scores_their_spread_and_the_detectable_gain(repo):
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-secret"}
    result = cli(repo, "--repeats", "3", "--limit", "64", env=env)
    assert result.returncode == 0, result.stdout + result.stderr

    saved = json.loads(calibration_path(repo, TAG).read_text())
    assert set(saved) == set(FIELDS)
    assert saved["seeds"] == [42, 43, 44]  # the loop's seeds
    # Scores come from scoring each seed's val predictions (the fake prints 0.999999), and they differ by seed.
    for seed, strict, relaxed in zip(saved["seeds"], saved["scores"], saved["relaxed"]):
        scored = score_files(seed_folder(repo, seed) / "pred_val.jsonl", repo / "data" / "val.jsonl")
        assert (strict, relaxed) == (scored["strict"]["f1"], scored["relaxed"]["f1"])
    assert len(set(saved["scores"])) == 3 and 0 < min(saved["scores"]) and max(saved["scores"]) < 0.9
    assert saved["mean"] == mean(saved["scores"]) and saved["sd"] == stdev(saved["scores"])
    # The paired confirm policy starts the night from sqrt(2) x the seed sd, never below one gold span.
    assert saved["noise_floor"] == 1 / val_spans(repo) and saved["sd"] > saved["noise_floor"]
    assert saved["noise"]["sd"] == pytest.approx(math.sqrt(2) * saved["sd"])
    assert saved["detectable_gain"] == Confirm(trials=3).detectable_gain(saved["noise"]["sd"]) > saved["sd"]
    assert saved["policy"] == "confirm" and saved["policy_seeds"] == 3
    assert saved["train_options"] == ["--limit", "64"] and saved["sandbox"] in ("bwrap", "unshare")
    assert saved["commit"] == git(repo, "rev-parse", "HEAD") and saved["tag"] == TAG

    # What the user reads.
    assert f"mean {saved['mean']:.4f}, sd {saved['sd']:.4f}" in result.stdout
    assert f"{saved['detectable_gain']:+.4f}" in result.stdout
    assert all(f"{score:.4f}" in result.stdout for score in saved["scores"])
    assert f"noise floor {saved['noise_floor']:.4f}" in result.stdout and "UNSANDBOXED" not in result.stdout
    assert f"sandbox: {saved['sandbox']}" in result.stdout and "written: runs/t/calibration.json" in result.stdout

    # Each seed ran as a sandboxed job with its own log, without keys, offline, in a private home.
    for seed in (42, 43, 44):
        log = (seed_folder(repo, seed) / "run.log").read_text()
        assert f"--seed {seed}" in log and "--limit 64" in log
        job_env = json.loads((seed_folder(repo, seed) / "env.json").read_text())
        assert "ANTHROPIC_API_KEY" not in job_env and job_env["HF_HUB_OFFLINE"] == "1"
        assert job_env["HOME"] != os.environ["HOME"]
    # Nothing else changed: no results, no branch, no lock left, no job workspace left.
    assert not (repo / "results.tsv").exists() and not (repo / "runs" / TAG / "loop.lock").exists()
    assert git(repo, "status", "--porcelain") == "" and git(repo, "branch", "--show-current") == "main"
    assert not list(Workspace(repo, TAG).jobs_root.glob("job-*"))


def test_identical_seeds_fall_back_to_the_noise_floor_and_unsandboxed_says_so(tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7, train_py=FAKE_TRAIN_PY)  # the same predictions on every seed
    with pytest.raises(CalibrationError, match="^--sandbox none is only allowed with --no-sandbox$"):
        calibrate(repo, sandbox="none")
    assert not calibration_path(repo, TAG).exists()

    echoed = []
    saved = calibrate(repo, sandbox="none", no_sandbox=True, echo=echoed.append)

    assert saved["sd"] == 0 and saved["sandbox"] == "none"
    floor = 1 / val_spans(repo)
    assert saved["noise"]["sd"] == saved["noise_floor"] == floor and "floor" in saved["noise"]["source"]
    assert saved["detectable_gain"] == Confirm().detectable_gain(floor) > 0
    lines = "\n".join(calibration_lines(saved))
    assert f"the sd 0.0000 is below the noise floor {floor:.4f}" in lines and "the floor applies" in lines
    assert "every seed scored the same" in lines and "UNSANDBOXED" in lines
    assert echoed[0].startswith("UNSANDBOXED: train.py runs with your user's powers")
    assert any("seed 43: strict F1" in line for line in echoed)


def test_monotonic_has_no_margin():
    result = {"tag": TAG, "commit": "a" * 40, "seeds": [42, 43], "scores": [0.30, 0.34], "relaxed": [0.4, 0.4],
              "mean": 0.32, "sd": stdev([0.30, 0.34]), "policy": "monotonic", "policy_seeds": 1,
              "detectable_gain": None, "noise_floor": 0.01, "noise": {"sd": 0.028, "source": "measured"},
              "train_options": [], "sandbox": "bwrap", "timestamp": ""}
    lines = "\n".join(calibration_lines(result))
    assert "no noise margin" in lines and "4.2 no-better candidates per 100 runs" in lines
    assert "the measured sd is above it" in lines and "UNSANDBOXED" not in lines
    assert monotonic_false_accepts(100) == pytest.approx(4.18738, abs=1e-5)  # H_100 - 1
    assert monotonic_false_accepts(2) == pytest.approx(0.5)  # one candidate beats the baseline half the time
    assert Monotonic().trials == 1


def test_a_crashed_seed_fails_with_its_log_and_writes_nothing(tmp_path, prepared_task7):
    crashing = SEEDED_FAKE_TRAIN_PY.replace('if ACTION == "crash":', 'if ACTION == "crash" or args.seed == 43:')
    assert crashing != SEEDED_FAKE_TRAIN_PY
    repo = make_repo(tmp_path, prepared_task7, train_py=crashing)
    result = cli(repo, "--repeats", "3")
    assert result.returncode == 1
    assert result.stderr.startswith("error: seed 43 failed (crash: exit code 1: RuntimeError: boom")
    assert "runs/t/calibrate/seed-43/run.log" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "RuntimeError: boom" in (seed_folder(repo, 43) / "run.log").read_text()
    assert not calibration_path(repo, TAG).exists()
    assert not seed_folder(repo, 44).exists()  # it stopped at the crash
    assert not (repo / "runs" / TAG / "loop.lock").exists()


def test_a_slow_seed_is_killed_at_the_timeout(tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7, train_py=set_constant(SEEDED_FAKE_TRAIN_PY, "SLEEP_S", 60.0))
    started = time.monotonic()
    with pytest.raises(CalibrationError, match=r"^seed 42 failed \(timeout: killed after 1 s"):
        calibrate(repo, timeout_s=1)
    assert time.monotonic() - started < 20
    assert not calibration_path(repo, TAG).exists()


def test_uncommitted_train_py_is_refused_and_left_alone(repo):
    edited = SEEDED_FAKE_TRAIN_PY + "# my experiment\n"
    (repo / "train.py").write_text(edited)
    result = cli(repo)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "train.py: uncommitted changes; commit or stash them first" in result.stderr
    assert (repo / "train.py").read_text() == edited
    assert not (repo / "runs").exists() and not calibration_path(repo, TAG).exists()

    git(repo, "rm", "-q", "--cached", "train.py")
    git(repo, "commit", "-q", "-m", "train.py untracked")
    with pytest.raises(CalibrationError, match=r"train.py: not committed; commit it first"):
        calibrate(repo)
    assert (repo / "train.py").read_text() == edited


def test_a_tag_the_loop_would_refuse_is_refused(repo):
    with pytest.raises(CalibrationError, match=r"^--tag '\.\./x': use letters, digits"):
        run_calibration(repo, "../x", 2, None, 30, Confirm())
    with pytest.raises(CalibrationError, match=r"^--repeats 1: a standard deviation needs 2 or more seeds$"):
        calibrate(repo, repeats=1)
    assert not (repo / "x").exists() and not (repo / "runs").exists()


def test_calibrate_waits_for_no_loop(repo):
    lock = LoopLock(repo, "other")
    lock.acquire()
    try:
        with pytest.raises(CalibrationError, match=r"`agent_loop.py run` is running .*night other"):
            calibrate(repo)
    finally:
        lock.release()
    assert not (repo / "runs" / TAG / "calibrate").exists()


def descendants(pid: int) -> set[int]:
    """Every process below pid (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def command_line(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_ctrl_c_kills_the_running_seed_and_writes_nothing(tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7, train_py=set_constant(SEEDED_FAKE_TRAIN_PY, "SLEEP_S", 600.0))
    process = subprocess.Popen([sys.executable, "agent_loop.py", "calibrate", "--tag", TAG], cwd=repo,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(b"train.py" in command_line(pid) for pid in descendants(process.pid)):
            assert process.poll() is None and time.monotonic() < deadline, "train.py never started"
            time.sleep(0.1)
        time.sleep(0.5)  # the sandbox is up and train.py sleeps
        running = descendants(process.pid)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stdout + stderr
    assert "interrupted: train.py was stopped; nothing written" in stderr
    assert not calibration_path(repo, TAG).exists() and not (repo / "runs" / TAG / "loop.lock").exists()
    assert not seed_folder(repo, 43).exists()
    assert not [pid for pid in running if alive(pid)]
    assert not list(Workspace(repo, TAG).jobs_root.glob("job-*"))


@pytest.mark.slow
def test_calibrate_minilm_with_the_real_train_py(tmp_path, prepared_task7):
    """Two seeds of the real train.py with the bundled small encoder, through the CLI."""
    train_py = (Path(__file__).resolve().parents[1] / "train.py").read_text()
    for name, value in (("MODEL_NAME", "minilm"), ("EPOCHS", 1), ("LEARNING_RATE", 1e-4)):
        train_py = set_constant(train_py, name, value)
    repo = make_repo(tmp_path, data_without_test_rows(prepared_task7, tmp_path / "data"), train_py=train_py)
    result = cli(repo, "--repeats", "2", "--limit", "32", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    saved = json.loads(calibration_path(repo, TAG).read_text())
    assert saved["seeds"] == [42, 43] and saved["train_options"] == ["--limit", "32"]
    assert all(0 <= score <= 1 for score in saved["scores"]) and saved["sd"] == stdev(saved["scores"])
    # train.py saw no val tags (it prints no score); the scores are the loop's, of its val predictions.
    for seed, score in zip(saved["seeds"], saved["scores"]):
        log = (seed_folder(repo, seed) / "run.log").read_text()
        assert "epochs: 1.00" in log and "strict_f1:" not in log
        scored = score_files(seed_folder(repo, seed) / "pred_val.jsonl", repo / "data" / "val.jsonl")
        assert scored["strict"]["f1"] == score
    print(result.stdout)
