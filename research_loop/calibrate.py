"""`agent_loop.py calibrate`: the seed noise of the committed train.py, measured before a night.

HEAD's train.py runs on seeds 42, 43, ... as sandboxed jobs on the val view (the loop's own jobs: private
workspace, no val tags, the fixed files), under the loop's lock; each seed's pred_val.jsonl is scored by the
fixed scorer against data/val.jsonl. runs/<tag>/calibration.json keeps the scores (the loop pools them into
its noise), their spread, and the gain the acceptance policy can see at that noise, never below the floor of
one gold span of val.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from statistics import mean, stdev

from research_loop.evaluation.acceptance import POWER, AcceptancePolicy, estimate_noise
from research_loop.evaluation.dataviews import DataViews
from research_loop.evaluation.scoring import Scorer, TrialScore, import_file
from research_loop.evaluation.trial import save_outputs
from research_loop.execution import sandbox as sandboxes
from research_loop.execution.executors import kill_stale
from research_loop.execution.jobs import Job, JobResult, run_job
from research_loop.night.config import NightConfig
from research_loop.night.folders import Workspace, WorkspaceError, check_tag
from research_loop.night.lock import LockError, LoopLock
from research_loop.night.opening import private_folders
from research_loop.night.stopping import abort_on_signals
from research_loop.records.gitops import TRAIN_FILE, Git, GitError
from research_loop.records.integrity import FIXED_FILES
from research_loop.records.ledger import now_iso

from .model_cache import ModelCacheError, ensure_cached, model_name
from .safe_io import open_no_follow, read_bytes, write_atomically

CALIBRATION_FILE = "calibration.json"
FIRST_SEED = 42  # the loop's seeds are 42, 43, ...: calibration seeds coincide with its runs
FIELDS = ("tag", "commit", "seeds", "scores", "relaxed", "mean", "sd", "policy", "policy_seeds", "detectable_gain",
          "noise_floor", "timestamp", "noise", "train_options", "sandbox")
NIGHT_RUNS = 100  # the night length the monotonic policy's false keeps are quoted for


class CalibrationError(Exception):
    """A one-line, user-facing reason calibrate cannot run or finish (calibration.json is not written then)."""


def calibration_path(repo: Path, tag: str) -> Path:
    return Path(repo) / "runs" / tag / CALIBRATION_FILE


def seed_dir(repo: Path, tag: str, seed: int) -> Path:
    return Path(repo) / "runs" / tag / "calibrate" / f"seed-{seed}"


def monotonic_false_accepts(runs: int = NIGHT_RUNS) -> float:
    """Expected keeps of a null agent under Monotonic over `runs` runs (baseline included): run i is a new
    record with probability 1/i, so H_runs - 1, whatever the noise."""
    return sum(1 / index for index in range(2, runs + 1))


def run_calibration(repo: Path, tag: str, repeats: int, limit: int | None, timeout_s: float | None,
                    policy: AcceptancePolicy, sandbox: str = "auto", no_sandbox: bool = False,
                    echo: Callable[[str], None] = lambda line: None) -> dict:
    """Run HEAD's train.py on `repeats` seeds, score each on val, write and return calibration.json.

    CalibrationError (nothing written) for a dirty train.py, a held lock, no sandbox, a failed seed;
    KeyboardInterrupt (the running job killed, nothing written) on Ctrl-C or SIGTERM."""
    if repeats < 2:
        raise CalibrationError(f"--repeats {repeats}: a standard deviation needs 2 or more seeds")
    try:
        ws = Workspace(Path(repo).resolve(), check_tag(tag))
    except WorkspaceError as exc:
        raise CalibrationError(str(exc)) from None
    commit, train_py = committed_train_py(ws)
    lock = LoopLock(ws.repo, ws.tag, "calibrate")
    try:
        lock.acquire()
    except LockError as exc:
        raise CalibrationError(str(exc)) from None
    try:
        bench = Bench.open(ws, train_py, sandbox, no_sandbox, echo)
        options = ("--limit", str(limit)) if limit else ()
        seeds = list(range(FIRST_SEED, FIRST_SEED + repeats))
        scores = []
        with abort_on_signals() as aborted:
            for number, seed in enumerate(seeds, 1):
                if aborted():
                    raise KeyboardInterrupt
                echo(f"seed {seed} ({number}/{repeats}): training; log {bench.shown(bench.log(seed))}")
                job = Job(train_py, bench.fixed_files, bench.views.view().files, seed,
                          timeout_s=timeout_s or NightConfig.baseline_timeout_s, extra_args=options,
                          label=f"calibrate seed {seed}")
                score = bench.run_seed(job, aborted)
                scores.append(score)
                echo(f"seed {seed}: strict F1 {score.strict:.4f}, relaxed F1 {score.relaxed:.4f}")
        calibration = summarise(ws.tag, commit, seeds, scores, policy, bench.noise_floor, list(options),
                                bench.backend)
        write_atomically(calibration_path(ws.repo, ws.tag), json.dumps(calibration, indent=1) + "\n")
        return calibration
    finally:
        lock.release()


def committed_train_py(ws: Workspace) -> tuple[str, str]:
    """HEAD's sha and train.py, after checking that the working tree's train.py is that one."""
    try:
        git = Git(ws.repo, ws.store / "git")
    except GitError as exc:
        raise CalibrationError(str(exc)) from None
    path = ws.repo / TRAIN_FILE
    if TRAIN_FILE in git.untracked_paths() or TRAIN_FILE not in git.repo.head.commit.tree:
        raise CalibrationError(f"{path}: not committed; commit it first (calibrate runs HEAD's train.py)")
    if TRAIN_FILE in git.changed_paths():
        raise CalibrationError(f"{path}: uncommitted changes; commit or stash them first (calibrate measures "
                               "the committed train.py)")
    head = git.head_sha()
    return head, git.show(head, TRAIN_FILE)


class Bench:
    """What every seed's job shares: the data view, the scorer, the fixed files, the sandbox, the folders."""

    def __init__(self, ws: Workspace, views: DataViews, scorer: Scorer, fixed_files: dict[str, bytes],
                 backend: str, private: list[Path]):
        self.ws, self.views, self.scorer, self.fixed_files = ws, views, scorer, fixed_files
        self.backend, self.private = backend, private
        self.noise_floor = 1.0 / max(1, views.span_count())

    @classmethod
    def open(cls, ws: Workspace, train_py: str, sandbox: str, no_sandbox: bool,
             echo: Callable[[str], None]) -> Bench:
        """The scorer and data before any train.py runs, then the sandbox, the model, stale jobs."""
        data_dir = ws.repo / "data"
        for name in ("evaluate.py", "prepare.py"):
            if not (ws.repo / name).is_file():
                raise CalibrationError(f"{ws.repo / name}: not found; is this the ner-autoresearch repository?")
        evaluate, prepare = import_file(ws.repo / "evaluate.py", "evaluate"), import_file(ws.repo / "prepare.py",
                                                                                           "prepare")
        if not (data_dir / "manifest.json").is_file() or not (data_dir / "val.jsonl").is_file():
            raise CalibrationError(f"{data_dir}: no prepared data (manifest.json, val.jsonl); run "
                                   "`python prepare.py` first")
        try:
            entity_types = prepare.load_entity_types(data_dir)
        except prepare.DataError as exc:
            raise CalibrationError(str(exc)) from None
        views = DataViews(data_dir, "val")
        fixed = {name: read_bytes(ws.repo / name) for name in FIXED_FILES}
        try:
            backend, passed_over = sandboxes.choose(sandbox, no_sandbox)
        except sandboxes.SandboxError as exc:
            raise CalibrationError(str(exc)) from None
        if backend == "none":
            echo("UNSANDBOXED: train.py runs with your user's powers ("
                 + ("; ".join(passed_over) or "--sandbox none") + ")")
        else:
            echo(f"sandbox: {backend}" + (f" ({'; '.join(passed_over)})" if passed_over else ""))
        try:
            note = ensure_cached(model_name(train_py))
        except ModelCacheError as exc:
            raise CalibrationError(str(exc)) from None
        if note:
            echo(note)
        for pid_file in (ws.tag_dir / "calibrate").glob("*/train.pid"):
            if kill_stale(pid_file):
                echo(f"killed a train.py left running by a killed calibrate ({pid_file.parent.name})")
        private = private_folders(ws.repo, views.manifest)
        return cls(ws, views, Scorer(evaluate, entity_types), fixed, backend, private)

    def log(self, seed: int) -> Path:
        return seed_dir(self.ws.repo, self.ws.tag, seed) / "run.log"

    def shown(self, path: Path) -> str:
        return str(path.relative_to(self.ws.repo))

    def run_seed(self, job: Job, aborted: Callable[[], bool]) -> TrialScore:
        """One seed's job, its outputs in its folder (an older calibration's replaced), its val scores."""
        folder = seed_dir(self.ws.repo, self.ws.tag, job.seed)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        log, pid_file = folder / "run.log", folder / "train.pid"
        fd = open_no_follow(log, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            with os.fdopen(fd, "wb") as sink:
                result: JobResult = run_job(job, self.backend, jobs_root=self.ws.jobs_root, repo=self.ws.repo,
                                            private=self.private, log=sink, abort=aborted,
                                            on_start=lambda pid: pid_file.write_text(f"{pid}\n"))
        finally:
            pid_file.unlink(missing_ok=True)
        if result.kind == "aborted":
            raise KeyboardInterrupt
        if result.kind != "ok":
            raise CalibrationError(f"seed {job.seed} failed ({result.kind}: {result.error_line()}); see "
                                   f"{self.shown(log)}; nothing written")
        save_outputs(result, folder)
        try:
            return self.scorer.score_file(folder / "pred_val.jsonl", self.ws.repo / "data" / "val.jsonl")
        except self.scorer.error as exc:
            raise CalibrationError(f"seed {job.seed}: unusable predictions ({exc}); see {self.shown(log)}; "
                                   "nothing written") from None


def summarise(tag: str, commit: str, seeds: list[int], scores: list[TrialScore], policy: AcceptancePolicy, noise_floor: float,
              train_options: list[str], backend: str) -> dict:
    """calibration.json: the scores, their sd, and the noise and detectable gain the night starts from (the
    loop's own estimate from these scores alone, so never below the floor)."""
    strict = [score.strict for score in scores]
    noise = estimate_noise(policy, [], [], [], strict, noise_floor)
    detectable = policy.detectable_gain(noise.sd)
    return {
        "tag": tag, "commit": commit, "seeds": seeds, "scores": strict, "relaxed": [score.relaxed for score in scores],
        "mean": mean(strict), "sd": stdev(strict), "policy": policy.name, "policy_seeds": policy.trials,
        "detectable_gain": detectable, "noise_floor": noise_floor,
        "timestamp": now_iso(), "noise": {"sd": noise.sd, "source": noise.source},
        "train_options": train_options, "sandbox": backend,
    }


# ----- Showing it -----


def calibration_lines(result: dict) -> list[str]:
    """What was measured, whether the floor applies, and what the policy can see with that noise."""
    seeds, scores, sd, floor = result["seeds"], result["scores"], result["sd"], result["noise_floor"]
    options = " ".join(result.get("train_options") or []) or "none"
    spans = round(1 / floor) if floor else 0
    lines = [f"train.py at {result['commit'][:10]}; train.py options: {options}",
             "strict F1 by seed: " + ", ".join(f"{seed} {score:.4f}" for seed, score in zip(seeds, scores)),
             f"strict F1 over {len(scores)} seeds: mean {result['mean']:.4f}, sd {sd:.4f}"]
    if sd < floor:
        same = "; every seed scored the same: train longer or on more rows" if math.isclose(sd, 0.0) else ""
        lines.append(f"the sd {sd:.4f} is below the noise floor {floor:.4f} (one gold span of val's {spans}): "
                     f"the floor applies, the loop never counts less noise{same}")
    else:
        lines.append(f"noise floor {floor:.4f} (one gold span of val's {spans}): the measured sd is above it")
    if result["detectable_gain"] is not None:
        noise = result["noise"]
        lines.append(f"policy {result['policy']} ({result['policy_seeds']} seeds; noise {noise['sd']:.4f}, "
                     f"{noise['source']}): a true gain of {result['detectable_gain']:+.4f} strict F1 is kept "
                     f"{POWER:.0%} of the time")
    else:
        lines.append(f"policy {result['policy']}: no noise margin; with a null agent it keeps about "
                     f"{monotonic_false_accepts():.1f} no-better candidates per {NIGHT_RUNS} runs "
                     f"(H_{NIGHT_RUNS} - 1), whatever the noise")
    if result["sandbox"] == "none":
        lines.append("UNSANDBOXED: train.py ran with your user's powers")
    return lines
