"""`agent_loop.py calibrate`: run the committed train.py on a few seeds to measure the seed noise of strict F1
on val, and say what gain the acceptance policy can tell from that noise. Stored as runs/<tag>/calibration.json.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from statistics import mean, stdev

from git import GitCommandError
from rich.table import Table

from . import ledger
from .acceptance import POWER, AcceptancePolicy
from .gitops import TRAIN_FILE, Git, GitError, branch_name
from .loop import LoopConfig, LoopError, LoopLock, import_file
from .runner import kill_stale, run_train_py, stop_on_signals

CALIBRATION_FILE = "calibration.json"
FIELDS = ("tag", "commit", "train_args", "seeds", "scores", "relaxed", "mean", "sd", "policy", "policy_seeds",
          "detectable_gain", "timestamp")
NIGHT_RUNS = 100  # the night length the monotonic policy's false accepts are quoted for


class CalibrationError(Exception):
    """A one-line, user-facing reason calibrate cannot run or finish (nothing is written then)."""


def calibration_path(repo: Path, tag: str) -> Path:
    return Path(repo) / "runs" / tag / CALIBRATION_FILE


def seed_dir(repo: Path, tag: str, seed: int) -> Path:
    return Path(repo) / "runs" / tag / "calibrate" / f"seed-{seed}"


def calibration_seeds(policy: AcceptancePolicy, repeats: int) -> list[int]:
    """The loop's seeds, in its order (42, 43, ... by default), so calibration runs coincide with its runs."""
    first = policy.seeds[0] if hasattr(policy, "seeds") else getattr(policy, "seed", 42)
    return list(range(first, first + repeats))


def monotonic_false_accepts(runs: int = NIGHT_RUNS) -> float:
    """Expected keeps of a null agent under Monotonic over `runs` runs (baseline included): each run after the
    first is a new record with probability 1/i, so H_runs - 1, whatever the noise."""
    return sum(1 / index for index in range(2, runs + 1))


def calibrate(repo: Path, tag: str, repeats: int, train_args: str, policy: AcceptancePolicy,
              timeout_s: float | None, echo: Callable[[str], None] = lambda line: None) -> dict:
    """Run the committed train.py on `repeats` seeds, score each on val, write and return calibration.json.
    Raises CalibrationError (nothing written) for a dirty train.py, a held lock, or a failed seed."""
    repo = Path(repo).resolve()
    if repeats < 2:
        raise CalibrationError(f"--repeats {repeats}: a standard deviation needs 2 or more seeds")
    commit = _committed_head(repo, tag)
    lock = LoopLock(repo, tag)
    try:
        lock.acquire()
    except LoopError as exc:
        raise CalibrationError(str(exc)) from None
    try:
        evaluate = _import_evaluate(repo)  # before any train.py runs, so no run can change the scorer we use
        val_gold = repo / "data" / "val.jsonl"
        if not val_gold.is_file():
            raise CalibrationError(f"{val_gold}: not found; run `python prepare.py` first")
        for pid_file in (repo / "runs" / tag / "calibrate").glob("*/train.pid"):
            if kill_stale(pid_file):
                echo(f"killed a train.py left running by a killed calibrate ({pid_file.parent.name})")
        seeds = calibration_seeds(policy, repeats)
        results = []
        for index, seed in enumerate(seeds):
            echo(f"seed {seed} ({index + 1}/{repeats}): training")
            result = _run_seed(repo, tag, seed, train_args, evaluate, val_gold, timeout_s, offline=index > 0)
            results.append(result)
            echo(f"seed {seed}: strict F1 {result['strict']['f1']:.4f}")
        calibration = _calibration(tag, commit, train_args, seeds, results, policy)
        _write_json(calibration_path(repo, tag), calibration)
        return calibration
    finally:
        lock.release()


def read_calibration(repo: Path, tag: str) -> dict | None:
    """runs/<tag>/calibration.json, or None when the tag has none. CalibrationError when it is unreadable."""
    path = calibration_path(repo, tag)
    if not path.is_file():
        return None
    try:
        calibration = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"{path}: unreadable ({exc}); run `agent_loop.py calibrate` again") from None
    missing = [name for name in FIELDS if not isinstance(calibration, dict) or name not in calibration]
    if missing:
        raise CalibrationError(f"{path}: field {missing[0]!r} missing; run `agent_loop.py calibrate` again")
    return calibration


# ----- Steps -----


def _committed_head(repo: Path, tag: str) -> str:
    """HEAD's sha, after checking that train.py is committed there and unmodified (and that the tag is one
    the loop accepts, so runs/<tag> is the loop's folder)."""
    try:
        git = Git(repo)
        git.repo.git.check_ref_format("--branch", branch_name(tag))
    except GitError as exc:
        raise CalibrationError(str(exc)) from None
    except GitCommandError:
        raise CalibrationError(f"--tag {tag!r}: not a valid git branch name part") from None
    if TRAIN_FILE in git.untracked_paths() or TRAIN_FILE not in git.repo.head.commit.tree:
        raise CalibrationError(f"{repo / TRAIN_FILE}: not committed; commit it first (calibrate runs HEAD's)")
    if TRAIN_FILE in git.changed_paths():
        raise CalibrationError(f"{repo / TRAIN_FILE} has uncommitted changes; commit or stash them first "
                               "(calibrate measures the committed train.py)")
    return git.head_sha()


def _import_evaluate(repo: Path):
    path = repo / "evaluate.py"
    if not path.is_file():
        raise CalibrationError(f"{path}: not found; is this the ner-autoresearch repository?")
    return import_file(path, "evaluate")


def _run_seed(repo: Path, tag: str, seed: int, train_args: str, evaluate, val_gold: Path,
              timeout_s: float | None, offline: bool) -> dict:
    """Train one seed like the loop does (scrubbed env, own process group) and score its val predictions."""
    folder = seed_dir(repo, tag, seed)
    log = folder / "run.log"
    # Offline after the first seed, as the loop is after its baseline: the model is cached by then.
    with stop_on_signals() as stopped:
        outcome = run_train_py(repo, folder, seed, train_args, offline=offline,
                               timeout_s=timeout_s or LoopConfig.baseline_timeout_s, abort=stopped)
    where = log.relative_to(repo)
    if outcome.kind == "aborted":
        raise KeyboardInterrupt
    if outcome.kind != "ok":
        reason = ("out of memory: " if outcome.kind == "oom" else "") + outcome.error_line()
        raise CalibrationError(f"seed {seed} failed ({outcome.kind}: {reason}); see {where}; nothing written")
    try:
        return evaluate.score_files(folder / "pred_val.jsonl", val_gold)
    except evaluate.ScoreError as exc:
        raise CalibrationError(f"seed {seed}: unusable predictions ({exc}); see {where}; nothing written") from None


def _calibration(tag: str, commit: str, train_args: str, seeds: list[int], results: list[dict],
                 policy: AcceptancePolicy) -> dict:
    scores = [result["strict"]["f1"] for result in results]
    sd = stdev(scores)
    detectable = getattr(policy, "detectable_gain", None)
    return {
        "tag": tag, "commit": commit, "train_args": train_args, "seeds": seeds, "scores": scores,
        "relaxed": [result["relaxed"]["f1"] for result in results], "mean": mean(scores), "sd": sd,
        "policy": policy.name, "policy_seeds": len(policy.seeds) if hasattr(policy, "seeds") else 1,
        "detectable_gain": detectable(sd) if detectable else None, "timestamp": ledger.now_iso(),
    }


def _write_json(path: Path, data: dict) -> None:
    """Temporary file beside path, then os.replace: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


# ----- Showing it -----


def calibration_table(calibration: dict) -> Table:
    """One row per seed: strict and relaxed F1 on val."""
    table = Table(title=f"calibration {calibration['tag']}")
    table.add_column("seed", justify="right")
    table.add_column("strict F1", justify="right")
    table.add_column("relaxed F1", justify="right")
    for seed, strict, relaxed in zip(calibration["seeds"], calibration["scores"], calibration["relaxed"]):
        table.add_row(str(seed), f"{strict:.4f}", f"{relaxed:.4f}")
    return table


def summary_lines(calibration: dict) -> list[str]:
    """Mean, sd, and what the policy can detect at that noise."""
    count, sd = len(calibration["scores"]), calibration["sd"]
    lines = [f"train.py at {calibration['commit'][:10]}; train args: {calibration['train_args'] or 'none'}",
             f"strict F1 over {count} seeds: mean {calibration['mean']:.4f}, sd {sd:.4f}"]
    if calibration["detectable_gain"] is not None:
        lines.append(f"policy {calibration['policy']} ({calibration['policy_seeds']} seeds): a true gain of "
                     f"{calibration['detectable_gain']:+.4f} strict F1 is kept {POWER:.0%} of the time")
    else:
        lines.append(f"policy {calibration['policy']}: no noise margin; with a null agent it keeps about "
                     f"{monotonic_false_accepts():.1f} no-better candidates per {NIGHT_RUNS} runs "
                     f"(H_{NIGHT_RUNS} - 1), whatever the noise")
    if sd == 0:
        lines.append("warning: every seed scored the same, so sd 0 says nothing about the noise; "
                     "train longer or on more rows")
    return lines
