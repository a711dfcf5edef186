"""The overnight loop: propose -> check -> commit -> train -> score -> decide -> row -> keep or revert -> state.

Crash safety: a run's row is appended (fsynced) before any git step, and a restart reconciles the branch,
results.tsv and runs/ (see `Loop._reconcile`), so a kill -9 at any moment loses no row and no kept commit.
Agent failures (AgentError: the API down past the agent's own retries) do not end the night: the loop
waits with doubling backoff and asks again, up to `agent_max_failures` times in a row, then stops with the
error; an AgentError with `retryable = False` (the builtin search is exhausted) stops it at once. No row is
logged for them: no train.py ran, and every row stays a proposal that was checked or run.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

from git import GitCommandError

from . import holdout, ledger, state
from .acceptance import AcceptancePolicy, Monotonic, Standing, pooled_noise
from .agents import Agent, AgentError, Context, Proposal, Usage
from .builtin_agent import normalised
from .gitops import TRAIN_FILE, Git, GitError, branch_name
from .guard import Guard, GuardError, Violation, sha256_of
from .progress import Progress
from .runner import kill_stale, read_tail, run_train_py

TEST_CRASH_ENV = "NER_AUTORESEARCH_TEST_CRASH_AT"  # tests only: os._exit(137) at a named point
STOP_FILE = "STOP"
STOP_REASON_FILE = "last_stop.json"  # runs/<tag>/: why the last session ended, for the report
DEFAULT_CLOSE_AFTER = 5  # failures in a row that close a direction
NIGHT_FILE = "night.json"  # runs/<tag>/: the session's --train-args and policy, for export and the report
PROGRAM_FILE = "program.md"
RECENT_ROWS = 20  # rows of results.tsv shown to the agent
MAX_AGENT_WAIT_S = 900.0


class LoopError(Exception):
    """A one-line, user-facing reason the loop cannot start (dirty tree, another loop running, no data)."""


class _Stop(Exception):
    """Ends the loop between iterations with a reason (ok=False: an error the user must look at)."""

    def __init__(self, reason: str, ok: bool = True):
        super().__init__(reason)
        self.reason, self.ok = reason, ok


@dataclass
class LoopConfig:
    repo: Path
    tag: str
    train_args: str = ""  # extra arguments for every train.py run
    max_runs: int | None = None  # rows this session (baseline and invalid ones included)
    max_hours: float | None = None
    max_cost_usd: float | None = None
    timeout_s: float | None = None  # per train.py run; None: 3x the baseline's duration, at least min_timeout_s
    min_timeout_s: float = 600.0
    baseline_timeout_s: float = 7200.0  # before any duration is known
    policy: AcceptancePolicy = field(default_factory=Monotonic)
    check_duplicates: bool = True  # off for the null agent, whose proposals are duplicates by design
    max_bounces: int = 3  # proposals sent back to the agent per iteration (duplicates, closed directions)
    close_after: int = DEFAULT_CLOSE_AFTER  # a direction closes after this many failures in a row; 0 = never
    agent_retry_s: float = 60.0  # first wait after an AgentError; doubles, capped at 15 minutes
    agent_max_failures: int = 8
    kill_grace_s: float = 10.0  # SIGTERM -> SIGKILL
    progress: bool = True


@dataclass
class LoopSummary:
    tag: str
    stop_reason: str
    ok: bool  # False when the loop stopped on an error (baseline crashed, agent kept failing)
    runs: int = 0  # rows appended this session
    keeps: int = 0
    crashes: int = 0
    best_run: int | None = None
    best_strict_f1: float | None = None
    best_commit: str | None = None
    cost_usd: float = 0.0
    hours: float = 0.0
    overheads_s: list[float] = field(default_factory=list)  # the loop's own seconds per iteration


def run_loop(config: LoopConfig, agent: Agent) -> LoopSummary:
    """Run (or resume) the loop on config.repo until a budget, STOP, Ctrl-C or an error ends it."""
    return Loop(config, agent).run()


def run_dir(repo: Path, tag: str, run: int) -> Path:
    return repo / "runs" / tag / f"{run:04d}"


def import_file(path: Path, label: str):
    """Import a repository file as a module (once, at loop start, before any train.py runs)."""
    name = f"_ner_autoresearch_{label}_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compile_error(text: str) -> str | None:
    """Why train.py does not compile, in one line, or None."""
    try:
        compile(text, TRAIN_FILE, "exec")
    except SyntaxError as exc:
        return f"line {exc.lineno}: {exc.msg}"
    except ValueError as exc:  # null bytes
        return str(exc)
    return None


def _crash_point(name: str, run: int) -> None:
    """Tests only: die like kill -9 at point `name` (or `name@run`, at that run only)."""
    if os.environ.get(TEST_CRASH_ENV) in (name, f"{name}@{run}"):
        os._exit(137)


# ----- The lock: one loop per repository -----


class LoopLock:
    """runs/<tag>/loop.lock, flock-ed while the loop runs (the kernel drops it if the loop is killed)."""

    def __init__(self, repo: Path, tag: str):
        self.repo, self.tag = repo, tag
        self.path = repo / "runs" / tag / "loop.lock"
        self.file = None

    def acquire(self) -> None:
        holder = running_loop(self.repo)
        if holder:
            raise LoopError(f"another loop is running on this repository (pid {holder[1]}, tag {holder[0]})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise LoopError(f"another loop is running on this repository (tag {self.tag})") from None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            self.path.unlink(missing_ok=True)
            self.file.close()
            self.file = None


def running_loop(repo: Path) -> tuple[str, int] | None:
    """(tag, pid) of a loop holding a lock on this repository, or None."""
    for path in sorted((repo / "runs").glob("*/loop.lock")):
        with path.open("a+") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                text = file.read().strip()
                return path.parent.name, int(text) if text.isdigit() else -1
            fcntl.flock(file, fcntl.LOCK_UN)
    return None


# ----- The loop -----


class Loop:
    def __init__(self, config: LoopConfig, agent: Agent):
        self.config = config
        self.agent = agent
        self.policy = config.policy
        self.repo = Path(config.repo).resolve()
        self.tag = config.tag
        self.tag_dir = self.repo / "runs" / self.tag
        self.results_path = self.repo / ledger.RESULTS_FILE
        self.pending_path = self.tag_dir / "pending_train.sha256"
        self.lock = LoopLock(self.repo, self.tag)
        self.progress = Progress(self.tag, enabled=config.progress)
        self.budget = state.Budget(max_runs=config.max_runs, max_hours=config.max_hours,
                                   max_cost_usd=config.max_cost_usd)
        self.started = time.monotonic()
        self.summary = LoopSummary(tag=self.tag, stop_reason="", ok=True)
        self.rows: list[dict] = []
        self.seen: dict[str, dict] = {}  # normalised train.py -> the row of the run that ran it
        self.rerun: tuple[int, str, dict] | None = None  # an interrupted candidate to run again
        self.feedback: str | None = None  # for the next proposal (the last one was invalid)
        self.last_failure_tail: str | None = None
        self.stop_requested = False
        self.abort_requested = False
        self.interruptible = False  # waiting on the agent: a second Ctrl-C may break out at once
        self.timing = {"propose_s": 0.0, "train_s": 0.0}
        self.iteration_started: float | None = None  # None while reconciling (no iteration to time)

    # ----- Entry -----

    def run(self) -> LoopSummary:
        self.lock.acquire()
        try:
            self._setup()
            with self.progress, self._signal_handlers():
                try:
                    self._write_state()
                    while True:
                        reason = self._stop_reason()
                        if reason:
                            raise _Stop(reason)
                        self._iteration()
                except _Stop as stop:
                    self.summary.stop_reason, self.summary.ok = stop.reason, stop.ok
                except KeyboardInterrupt:
                    self._drop_uncommitted_proposal()
                    self.summary.stop_reason = "aborted (Ctrl-C twice); nothing half-done was logged"
                best = state.best_row(self.rows)
                if best is not None:
                    self._score_holdout(best, role="final")
                stop = {"stop_reason": self.summary.stop_reason, "ok": self.summary.ok, "timestamp": ledger.now_iso()}
                (self.tag_dir / STOP_REASON_FILE).write_text(json.dumps(stop) + "\n")
                self.progress.doing(f"stopped: {self.summary.stop_reason}")
        finally:
            self.lock.release()
        return self._finish_summary()

    def _finish_summary(self) -> LoopSummary:
        summary = self.summary
        summary.hours = (time.monotonic() - self.started) / 3600
        summary.cost_usd = self.budget.cost_usd
        best = state.best_row(self.rows)
        if best is not None:
            summary.best_run, summary.best_commit = int(best["run"]), best["commit"]
            summary.best_strict_f1 = ledger.as_float(best["strict_f1"])
        if self.rerun is not None or self._head_is_unlogged_candidate():
            summary.stop_reason += f"; the interrupted run will run again when you resume --tag {self.tag}"
        return summary

    # ----- Setup and reconciliation -----

    def _setup(self) -> None:
        if (self.repo / STOP_FILE).exists():
            raise LoopError(f"{self.repo / STOP_FILE} exists: remove it to start the loop")
        try:
            self.git = Git(self.repo)
        except GitError as exc:
            raise LoopError(str(exc)) from None
        self._drop_uncommitted_proposal()
        changed = self.git.changed_paths()
        if changed:
            raise LoopError(f"the working tree has uncommitted changes ({', '.join(sorted(changed))}); "
                            "commit or stash them first: the loop never discards them")
        try:
            self.git.use_branch(self.tag)
        except GitError as exc:
            raise LoopError(str(exc)) from None
        archived = ledger.switch_tag(self.repo, self.tag)
        if archived:
            self.progress.note(f"results.tsv of tag {archived} moved to runs/{archived}/")
        self._import_fixed_files()
        self.columns = ledger.columns_for(self.entity_types)
        if ledger.drop_partial_row(self.results_path):
            self.progress.note("results.tsv: dropped an unfinished last line (the loop was killed mid-write)")
        self.rows = [row for row in ledger.read_rows(self.results_path) if row.get("tag") == self.tag]
        self.tag_dir.mkdir(parents=True, exist_ok=True)
        night = {"train_args": self.config.train_args, "policy": self.policy.name,
                 "close_after": self.config.close_after, "started": ledger.now_iso()}
        (self.tag_dir / NIGHT_FILE).write_text(json.dumps(night) + "\n")
        for pid_file in self.tag_dir.glob("*/**/train.pid"):
            if kill_stale(pid_file):
                self.progress.note(f"killed a train.py left running by a killed loop ({pid_file.parent.name})")
        self.guard = Guard(self.repo, self.tag_dir / ".protected")
        from .calibrate import CalibrationError, read_calibration  # calibrate builds on this module

        try:
            self.calibration = read_calibration(self.repo, self.tag)
        except CalibrationError as exc:
            raise LoopError(str(exc)) from None
        self._reconcile()
        for row in self.rows:
            self._remember(row)
        last = self.rows[-1] if self.rows else None
        if last is not None and last["status"] in ("crash", "timeout"):
            self.last_failure_tail = read_tail(run_dir(self.repo, self.tag, int(last["run"])) / "run.log")

    def _import_fixed_files(self) -> None:
        """evaluate.py's scorer and prepare.py's labels, imported once, before any train.py runs."""
        for name in ("evaluate.py", "prepare.py"):
            if not (self.repo / name).is_file():
                raise LoopError(f"{self.repo / name}: not found; is this the ner-autoresearch repository?")
        evaluate = import_file(self.repo / "evaluate.py", "evaluate")
        prepare = import_file(self.repo / "prepare.py", "prepare")
        self.score_files, self.score_error = evaluate.score_files, evaluate.ScoreError
        data_dir = self.repo / "data"
        self.holdout_gold = None
        if (data_dir / "holdout.jsonl").is_file():
            gold = prepare.holdout_gold_path(data_dir)
            self.holdout_gold = gold if gold.is_file() else None
            if self.holdout_gold is None:
                self.progress.note(f"holdout gold not found ({gold}): holdout scoring is off; rerun prepare.py")
        self.holdout_scores_path = holdout.scores_path(gold, self.repo, self.tag) if self.holdout_gold else None
        try:
            self.labels = prepare.load_labels(data_dir)
            self.entity_types = prepare.load_entity_types(data_dir)
        except prepare.DataError as exc:
            raise LoopError(str(exc)) from None
        self.val_gold = data_dir / "val.jsonl"
        if not self.val_gold.is_file():
            raise LoopError(f"{self.val_gold}: not found; run `python prepare.py` first")

    def _drop_uncommitted_proposal(self) -> None:
        """A train.py the loop wrote but never committed (killed in between) goes back to HEAD's."""
        if not self.pending_path.is_file():
            return
        train = self.repo / TRAIN_FILE
        if (self.git.current_branch() == branch_name(self.tag) and train.is_file()
                and sha256_of(train) == self.pending_path.read_text().strip()):
            self.git.restore_train("HEAD")
        self.pending_path.unlink(missing_ok=True)

    def _reconcile(self) -> None:
        """Make the branch agree with results.tsv after a kill: a logged discard/crash whose revert never
        happened is reverted; a candidate at HEAD with no row is run again once (twice interrupted: logged
        as a crash); a keep whose git step never happened gets the branch moved to its commit."""
        best = state.best_row(self.rows)
        head, head_run = self.git.head_sha(), self.git.head_run()
        if best is None or head == best["commit"]:
            return
        if head_run is None:
            if self.git.repo.is_ancestor(best["commit"], head):
                raise LoopError(f"branch {branch_name(self.tag)} has commits the loop did not make after its "
                                f"best run ({head[:10]}); move them to another branch or use a new --tag")
            self.progress.note(f"moving {branch_name(self.tag)} to the best run's commit {best['commit'][:10]}")
            self.git.move_to(best["commit"])
            return
        row = next((row for row in self.rows if int(row["run"]) == head_run), None)
        if row is not None:
            self.progress.note(f"run {head_run} was logged ({row['status']}) but its git step never happened: "
                               f"moving the branch to run {best['run']}")
            self.git.move_to(best["commit"])
            return
        self.git.mark_run(self.tag, head_run, head)
        meta = self._meta_from_commit(head)
        if self._attempts(head_run) >= 2:
            self.progress.note(f"run {head_run} was interrupted twice: logged as a crash")
            meta["description"] = f"interrupted twice ({meta['description']})"
            self._log(self._row(head_run, head, "crash", meta, note="interrupted twice"))
        else:
            self.progress.note(f"run {head_run} was interrupted: running it again")
            self.rerun = (head_run, head, meta)

    def _head_is_unlogged_candidate(self) -> bool:
        head_run = self.git.head_run() if hasattr(self, "git") else None
        return head_run is not None and all(int(row["run"]) != head_run for row in self.rows)

    def _meta_from_commit(self, commit: str) -> dict:
        message = self.git.commit_message(commit)
        fields = dict(line.split(": ", 1) for line in message.splitlines() if ": " in line and line[:1].isupper())
        return {"description": fields.get("Hypothesis", ""), "direction": fields.get("Direction", ""),
                "cost_usd": float(fields.get("Cost-USD", 0) or 0),
                "tokens_in": fields.get("Tokens", "0/0").partition("/")[0],
                "tokens_out": fields.get("Tokens", "0/0").partition("/")[2]}

    def _attempts(self, run: int) -> int:
        path = run_dir(self.repo, self.tag, run) / "attempts"
        return int(path.read_text()) if path.is_file() else 0

    def _count_attempt(self, run: int) -> None:
        path = run_dir(self.repo, self.tag, run) / "attempts"
        attempts = self._attempts(run) + 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{attempts}\n")

    # ----- Signals, STOP and budgets -----

    @contextmanager
    def _signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGINT, self._on_interrupt)
        signal.signal(signal.SIGTERM, self._on_terminate)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_interrupt(self, signum, frame) -> None:
        if not self.stop_requested:
            self.stop_requested = True
            self.progress.note("Ctrl-C: finishing the current run, then stopping (Ctrl-C again to stop now)")
            return
        self._on_terminate(signum, frame)

    def _on_terminate(self, signum, frame) -> None:
        # Only a wait on the agent is broken at once; a running train.py is killed by the runner, and
        # file, row and git steps finish first (the loop checks abort_requested after them).
        self.stop_requested = self.abort_requested = True
        if self.interruptible:
            raise KeyboardInterrupt

    def _stop_reason(self) -> str | None:
        if self.abort_requested:
            raise KeyboardInterrupt
        if self.stop_requested:
            return "stopped by Ctrl-C"
        stop_file = self.repo / STOP_FILE
        if stop_file.exists():
            stop_file.unlink(missing_ok=True)
            return "stopped by the STOP file (removed)"
        self.budget.hours = (time.monotonic() - self.started) / 3600
        budget = self.budget
        if budget.max_runs is not None and budget.runs >= budget.max_runs:
            return f"--max-runs reached ({budget.runs} runs)"
        if budget.max_hours is not None and budget.hours >= budget.max_hours:
            return f"--max-hours reached ({budget.hours:.2f} h)"
        if budget.max_cost_usd is not None and budget.cost_usd >= budget.max_cost_usd:
            return f"--max-cost-usd reached (${budget.cost_usd:.2f})"
        return None

    def _sleep(self, seconds: float) -> bool:
        """Wait, waking for Ctrl-C or STOP; False when the loop should stop instead."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stop_requested or (self.repo / STOP_FILE).exists():
                return False
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return True

    @contextmanager
    def _interruptible(self):
        self.interruptible = True
        try:
            if self.abort_requested:
                raise KeyboardInterrupt
            yield
        finally:
            self.interruptible = False

    # ----- Iterations -----

    def _iteration(self) -> None:
        self.iteration_started = time.monotonic()
        self.timing = {"propose_s": 0.0, "train_s": 0.0}
        if self.rerun is not None:
            run, commit, meta = self.rerun
            self.rerun = None
            self._train_and_log(run, commit, meta, is_baseline=False)
        elif state.baseline_row(self.rows) is None:
            self._baseline()
        else:
            self._candidate()

    def _baseline(self) -> None:
        run = self._next_run()
        meta = {"description": "unmodified train.py", "direction": "baseline", "cost_usd": 0.0}
        row = self._train_and_log(run, self.git.head_sha(), meta, is_baseline=True)
        if row["status"] != "baseline":
            raise _Stop(f"the baseline run failed ({row['status']}: {row['note']}); see "
                        f"{run_dir(self.repo, self.tag, run) / 'run.log'}, fix train.py or --train-args, "
                        "commit, and start again", ok=False)

    def _candidate(self) -> None:
        run = self._next_run()
        best = state.best_row(self.rows)
        others_before = self._other_changes()
        proposal, usage, bounce = None, Usage(), None
        feedback, self.feedback = self.feedback, None
        for _ in range(self.config.max_bounces + 1):
            proposal = self._propose(self._context(feedback))
            usage.add(proposal.usage)
            error = compile_error(proposal.train_py)
            if error:
                self._save_proposal(run, proposal)
                self._invalid(run, proposal, usage, f"train.py does not compile: {error}")
                return
            bounce = self._bounce_reason(proposal, best)
            if bounce is None:
                break
            feedback = f"Your proposal was sent back before any training: {bounce[1]}"
        if bounce is not None:
            self._invalid(run, proposal, usage, f"{bounce[0]} ({self.config.max_bounces} bounces)")
            return
        if self.stop_requested:
            raise _Stop("stopped by Ctrl-C (the last proposal was not run)")
        meta = _meta(proposal, usage)
        self.tag_dir.mkdir(parents=True, exist_ok=True)
        # The marker lets a restart tell this uncommitted train.py (ours, to drop) from a user's edit.
        self.pending_path.write_text(hashlib.sha256(proposal.train_py.encode("utf-8")).hexdigest() + "\n")
        (self.repo / TRAIN_FILE).write_bytes(proposal.train_py.encode("utf-8"))
        extra = self._other_changes() - others_before
        if extra:
            self._restore_other_changes(run, extra, best["commit"])
            self._invalid(run, proposal, usage, f"files other than train.py changed: {', '.join(sorted(extra))}")
            return
        self.guard.accept(PROGRAM_FILE)  # the human may have edited it since the last run
        violations = self.guard.violations()
        if violations:
            self._restore_protected(run, violations, best["commit"])
            self._invalid(run, proposal, usage, f"protected files changed before the run: {_listed(violations)}")
            return
        subject = f"run {run}: {proposal.direction}: {ledger.one_line(proposal.hypothesis)[:60]}"
        body = (f"Hypothesis: {ledger.one_line(proposal.hypothesis)}\nDirection: {ledger.one_line(proposal.direction)}"
                f"\nCost-USD: {usage.cost_usd:.6f}\nTokens: {meta['tokens_in']}/{meta['tokens_out']}")
        commit = self.git.commit_candidate(self.tag, run, subject, body)
        self.pending_path.unlink(missing_ok=True)
        _crash_point("after_commit", run)
        self._train_and_log(run, commit, meta, is_baseline=False)

    def _bounce_reason(self, proposal: Proposal, best: dict) -> tuple[str, str] | None:
        """(short note, message for the agent) when a proposal goes back untrained: a train.py already run
        (comments and whitespace aside), or a direction closed after too many failures in a row."""
        duplicate = self.seen.get(normalised(proposal.train_py)) if self.config.check_duplicates else None
        if duplicate is not None:
            return (f"duplicate of run {duplicate['run']}",
                    (f"it is the same train.py (ignoring comments and whitespace) as run {duplicate['run']} "
                    f"({duplicate['status']}, strict F1 {duplicate['strict_f1'] or '-'}; best {best['strict_f1']}). "
                    "Propose a different change."))
        if state.direction_key(proposal.direction) in self._closed_directions():
            return (f"direction {proposal.direction!r} is closed",
                    (f"the direction {proposal.direction!r} is closed: it failed {self.config.close_after} times "
                    "in a row without a keep (see the direction table in CURRENT_STATE.md). Choose another "
                    "direction; only the human can reopen it, in program.md."))
        return None

    def _closed_directions(self) -> set[str]:
        reopened = state.reopened_directions(_read(self.repo / PROGRAM_FILE))
        return state.closed_directions(self.rows, self.config.close_after, reopened)

    def _noise(self) -> tuple[float | None, int]:
        """The night's pooled seed noise: calibration, the baseline's seeds, and every confirmed candidate's
        seeds after its first (the first passed a screen, so it is biased upwards)."""
        lists = [self.calibration["scores"]] if self.calibration else []
        for row in self.rows:
            scores = self._scores_of(row) or []
            if row["status"] == "baseline":
                lists.append(scores)
            elif row["status"] in ("keep", "discard") and len(scores) > 2:
                lists.append(scores[1:])
        return pooled_noise(lists)

    def _noise_line(self) -> str:
        sd, df = self._noise()
        if sd is None:
            return "Seed noise: not measured yet (a one-seed baseline; run `agent_loop.py calibrate`)."
        line = f"Seed noise (sd of strict F1 between seeds): {sd:.4f} on {df} degrees of freedom"
        if hasattr(self.policy, "detectable_gain"):
            line += f"; the smallest gain kept 80% of the time: {self.policy.detectable_gain(sd):+.4f}"
        return line + "."

    def _propose(self, context: Context) -> Proposal:
        """The agent's proposal; AgentError waits with doubling backoff, and ends the loop after too many."""
        failures = 0
        while True:
            started = time.monotonic()
            try:
                with self._interruptible():
                    proposal = self.agent.propose(context)
                self.budget.cost_usd += proposal.usage.cost_usd
                return proposal
            except AgentError as exc:
                usage = getattr(exc, "usage", None)
                self.budget.cost_usd += usage.cost_usd if usage is not None else 0.0
                failures += 1
                if not getattr(exc, "retryable", True):
                    raise _Stop(f"the agent cannot go on: {exc}", ok=False) from None
                if failures >= self.config.agent_max_failures:
                    raise _Stop(f"the agent failed {failures} times in a row: {exc}", ok=False) from None
                wait = min(self.config.agent_retry_s * 2 ** (failures - 1), MAX_AGENT_WAIT_S)
                self.progress.note(f"agent error: {exc}; asking again in {wait:.0f} s")
                self.progress.doing(f"waiting for the agent (failure {failures})")
                with self._interruptible():
                    if not self._sleep(wait):
                        raise _Stop("stopped while waiting for the agent") from None
            finally:
                self.timing["propose_s"] += time.monotonic() - started

    def _context(self, feedback: str | None) -> Context:
        self.progress.doing("agent proposing")
        best = state.best_row(self.rows)
        last = self.rows[-1] if self.rows else None
        last_log = run_dir(self.repo, self.tag, int(last["run"])) / "run.log" if last else None
        failed = last is not None and last["status"] in ("crash", "timeout")
        return Context(
            repo=self.repo,
            program_md=_read(self.repo / PROGRAM_FILE),
            current_state_md=_read(self.repo / ledger.STATE_FILE),
            recent_results=self._recent_results(),
            train_py=self.git.show(best["commit"]),
            last_log_path=last_log if last_log is not None and last_log.is_file() else None,
            last_log_tail=self.last_failure_tail if failed else None,
            feedback=feedback,
        )

    def _recent_results(self) -> str:
        lines = _read(self.results_path).splitlines()
        return "\n".join(lines[:1] + lines[1:][-RECENT_ROWS:])

    # ----- Training, scoring and the verdict -----

    def _train_and_log(self, run: int, commit: str, meta: dict, is_baseline: bool) -> dict:
        """Run the policy's seeds for one commit, then log the row and keep or revert (KeyboardInterrupt
        when a second Ctrl-C killed the run: nothing is logged)."""
        folder = run_dir(self.repo, self.tag, run)
        self._count_attempt(run)
        _crash_point("after_attempt", run)
        verdict_fields = self._evaluate(run, folder, is_baseline, meta)
        if verdict_fields is None:
            raise KeyboardInterrupt
        status, fields = verdict_fields
        if status == "invalid":
            self.feedback = f"Your previous proposal (run {run}) was logged invalid: {fields['note']}."
        row = self._log(self._row(run, commit, status, meta, **fields))
        if status in ledger.KEPT_STATUSES:
            self._score_holdout(row, role=status)
        return row

    def _score_holdout(self, row: dict, role: str) -> None:
        """Score a kept run's holdout predictions (every seed) into the loop-only holdout file."""
        if self.holdout_scores_path is None:
            return
        folder = run_dir(self.repo, self.tag, int(row["run"]))
        seeds = [seed for seed in row.get("seeds", "").split(",") if seed]
        files = [folder / "pred_holdout.jsonl", *(folder / f"seed-{seed}" / "pred_holdout.jsonl" for seed in seeds[1:])]
        try:
            entry = holdout.score_run(self.score_files, self.holdout_gold, files, row["run"], row["commit"], role)
        except self.score_error as exc:
            self.progress.note(f"run {row['run']}: holdout not scored: {exc}")
            return
        holdout.append_score(self.holdout_scores_path, entry)

    def _evaluate(self, run: int, folder: Path, is_baseline: bool, meta: dict):
        """(status, row fields) after running the seeds the policy asks for; None when aborted."""
        noise_sd, noise_df = self._noise()
        standing = Standing(best_scores=self._scores_of(state.best_row(self.rows)),
                            baseline_scores=self._scores_of(state.baseline_row(self.rows)),
                            noise_sd=noise_sd, noise_df=noise_df)
        results, seeds, printed, seconds = [], [], [], 0.0
        timeout = self._timeout(is_baseline)
        while True:
            # Rounded as results.tsv logs them, so the best (read back from the file) compares like for like.
            verdict = self.policy.decide([round(result["strict"]["f1"], 6) for result in results], standing)
            if verdict.action != "run":
                break
            seed_folder = folder if not seeds else folder / f"seed-{verdict.seed}"
            self.guard.accept(PROGRAM_FILE)
            violations = self.guard.violations()
            if violations:
                self._restore_protected(run, violations, self._best_commit())
                return "invalid", {"note": f"protected files changed before the run: {_listed(violations)}"}
            self.progress.doing(f"run {run} [{meta['direction']}] seed {verdict.seed}: training")
            outcome = self._train(seed_folder, verdict.seed, timeout)
            seconds += outcome.seconds
            so_far = {"results": results, "seeds": seeds, "printed": printed, "seconds": seconds}
            if outcome.kind == "aborted":
                return None
            violations = self.guard.violations()
            if violations:
                self._restore_protected(run, violations, self._best_commit())
                return "invalid", {**so_far, "note": f"train.py changed protected files: {_listed(violations)} "
                                                     "(restored)"}
            if outcome.kind != "ok":
                self.last_failure_tail = outcome.log_tail
                note = ("out of memory: " if outcome.kind == "oom" else "") + outcome.error_line()
                return ("timeout" if outcome.kind == "timeout" else "crash"), {**so_far, "note": note}
            try:
                result = self.score_files(seed_folder / "pred_val.jsonl", self.val_gold)
            except self.score_error as exc:
                self.last_failure_tail = f"{outcome.log_tail}\n[loop] unusable predictions: {exc}"
                return "crash", {**so_far, "note": f"unusable predictions: {exc}"}
            results.append(result)
            seeds.append(verdict.seed)
            printed.append(outcome.printed)
        status = "baseline" if is_baseline else verdict.action
        return status, {"results": results, "seeds": seeds, "printed": printed, "seconds": seconds,
                        "note": verdict.reason if not is_baseline else ""}

    def _train(self, folder: Path, seed: int, timeout_s: float):
        # The hub goes offline once the baseline ran: the model is cached by then.
        outcome = run_train_py(self.repo, folder, seed, self.config.train_args,
                               offline=state.baseline_row(self.rows) is not None, timeout_s=timeout_s,
                               abort=lambda: self.abort_requested, grace_s=self.config.kill_grace_s)
        self.timing["train_s"] += outcome.seconds
        return outcome

    def _timeout(self, is_baseline: bool) -> float:
        if self.config.timeout_s:
            return self.config.timeout_s
        baseline = state.baseline_row(self.rows)
        if is_baseline or baseline is None or not baseline.get("seconds"):
            return self.config.baseline_timeout_s
        per_seed = float(baseline["seconds"]) / max(1, len(baseline.get("seeds", "").split(",")))
        return max(self.config.min_timeout_s, 3 * per_seed)

    def _scores_of(self, row: dict | None) -> list[float] | None:
        if row is None:
            return None
        return [float(value) for value in row.get("seed_scores", "").split(",") if value] or None

    def _best_commit(self) -> str:
        best = state.best_row(self.rows)
        return best["commit"] if best else self.git.head_sha()

    # ----- Rows, git steps, state -----

    def _row(self, run: int, commit: str, status: str, meta: dict, results=(), seeds=(), printed=(),
             seconds: float = 0.0, note: str = "") -> dict:
        """One results.tsv row (strings), scores averaged over the seeds that finished."""
        strict = [result["strict"]["f1"] for result in results]
        scored = bool(strict) and status in ("baseline", "keep", "discard")  # failed runs get no score
        row = {"run": str(run), "tag": self.tag, "commit": commit, "status": status,
               "strict_f1": _f(mean(strict)) if scored else "",
               "relaxed_f1": _f(mean(result["relaxed"]["f1"] for result in results)) if scored else ""}
        for name in self.entity_types:
            per_type = [result["strict"]["per_type"].get(name, {}).get("f1", 0.0) for result in results]
            row[f"strict_f1_{name}"] = _f(mean(per_type)) if scored else ""
        vram = [float(block["peak_vram_mb"]) for block in printed if _is_number(block.get("peak_vram_mb"))]
        row.update({
            "peak_vram_gb": f"{max(vram) / 1024:.2f}" if vram else "",
            "seconds": f"{seconds:.1f}",
            "seed_scores": ",".join(_f(score) for score in strict),
            "strict_f1_sd": _f(stdev(strict)) if len(strict) > 1 else "",
            "seeds": ",".join(str(seed) for seed in seeds),
            "cost_usd": f"{meta.get('cost_usd', 0.0):.4f}",
            "tokens_in": str(meta.get("tokens_in", 0)),
            "tokens_out": str(meta.get("tokens_out", 0)),
            "direction": ledger.one_line(meta.get("direction", "")),
            "description": ledger.one_line(meta.get("description", "")),
            "note": ledger.one_line(note),
            "timestamp": ledger.now_iso(),
        })
        return row

    def _invalid(self, run: int, proposal: Proposal, usage: Usage, note: str) -> None:
        """A proposal that never ran: row, train.py back to the best, and the reason for the agent."""
        self._log(self._row(run, "", "invalid", _meta(proposal, usage), note=note))
        self.feedback = f"Your previous proposal (run {run}) was not run: {note}."

    def _log(self, row: dict) -> dict:
        """Append the row (fsynced) before any git step, then keep or revert, then rewrite CURRENT_STATE.md."""
        ledger.append_row(self.results_path, row, self.columns)
        self.guard.accept(ledger.RESULTS_FILE)
        self.rows.append(row)
        self._remember(row)
        _crash_point("after_row", int(row["run"]))
        best = state.best_row(self.rows)
        if best is not None and row["status"] not in ledger.KEPT_STATUSES:
            self.git.move_to(best["commit"])
        self.pending_path.unlink(missing_ok=True)
        _crash_point("after_git", int(row["run"]))
        self.budget.runs += 1
        self._write_state()
        self._count(row)
        self._write_timing(int(row["run"]))
        if self.abort_requested:
            raise KeyboardInterrupt
        return row

    def _write_timing(self, run: int) -> None:
        """The iteration's seconds: agent, train.py, and the loop's own overhead (everything else)."""
        if self.iteration_started is None:
            return
        total = time.monotonic() - self.iteration_started
        overhead = max(0.0, total - self.timing["propose_s"] - self.timing["train_s"])
        self.summary.overheads_s.append(overhead)
        folder = run_dir(self.repo, self.tag, run)
        folder.mkdir(parents=True, exist_ok=True)
        timing = {**self.timing, "loop_overhead_s": overhead, "total_s": total}
        (folder / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")

    def _save_proposal(self, run: int, proposal: Proposal) -> None:
        """Keep an invalid proposal's train.py under its run folder (it is never committed)."""
        folder = run_dir(self.repo, self.tag, run)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "proposal_train.py").write_text(proposal.train_py, encoding="utf-8")

    def _count(self, row: dict) -> None:
        self.summary.runs += 1
        self.summary.keeps += row["status"] == "keep"
        self.summary.crashes += row["status"] in ("crash", "timeout")
        best = state.best_row(self.rows)
        best_text = f"run {best['run']}: strict F1 {float(best['strict_f1']):.4f}" if best else "-"
        self.progress.finished(row, best_text, self.budget.cost_usd)

    def _remember(self, row: dict) -> None:
        """Index a run's train.py for the duplicate check."""
        if row["status"] in ledger.RAN_STATUSES and row.get("commit"):
            try:
                self.seen.setdefault(normalised(self.git.show(row["commit"])), row)
            except (KeyError, ValueError, SyntaxError):
                pass  # commit gone or train.py unparsable: nothing to compare with

    def _write_state(self) -> None:
        best = state.best_row(self.rows)
        self.budget.hours = (time.monotonic() - self.started) / 3600
        text = state.render(self.tag, self.rows, self.git.show(best["commit"]) if best else None,
                            self.entity_types, self.budget, self.policy.name, noise_line=self._noise_line(),
                            closed=self._closed_directions(), close_after=self.config.close_after,
                            train_args=self.config.train_args)
        state.write_atomically(self.repo / ledger.STATE_FILE, text)

    def _next_run(self) -> int:
        return max((int(row["run"]) for row in self.rows), default=-1) + 1

    # ----- Undoing what should not be there -----

    def _other_changes(self) -> set[str]:
        """Files other than train.py (and the human's program.md) that differ from HEAD or are new."""
        return (self.git.changed_paths() | self.git.untracked_paths()) - {TRAIN_FILE, PROGRAM_FILE}

    def _restore_other_changes(self, run: int, paths: set[str], best_commit: str) -> None:
        """Move the changed files aside (under the run's folder) and put tracked ones back from git."""
        saved = run_dir(self.repo, self.tag, run) / "tampered"
        tracked = set(self.git.changed_paths())
        for relative in paths:
            source = self.repo / relative
            if source.exists():
                (saved / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, saved / relative)
            if relative in tracked:
                self.git.restore_tracked(best_commit, relative)
            else:
                source.unlink(missing_ok=True)

    def _restore_protected(self, run: int, violations: list[Violation], best_commit: str) -> None:
        def from_git(relative: str) -> bool:
            try:
                self.git.restore_tracked(best_commit, relative)
                return True
            except GitCommandError:  # not tracked (a data/ file): the caller reports it
                return False

        try:
            self.guard.restore(violations, run_dir(self.repo, self.tag, run) / "tampered", from_git)
        except GuardError as exc:
            raise _Stop(f"error: {exc}", ok=False) from None
        self.progress.note(f"run {run}: protected files were changed and restored: {_listed(violations)}")


def _meta(proposal: Proposal, usage: Usage) -> dict:
    """A proposal's row fields: its hypothesis and direction, and what asking for it cost (bounces included)."""
    return {"description": proposal.hypothesis, "direction": proposal.direction, "cost_usd": usage.cost_usd,
            "tokens_in": usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
            "tokens_out": usage.output_tokens}


def _listed(violations: list[Violation]) -> str:
    return ", ".join(str(violation) for violation in violations)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def _f(value: float) -> str:
    return f"{value:.6f}"


def _is_number(value: str | None) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


# ----- `agent_loop.py status` -----


def describe_status(repo: Path, tag: str | None = None) -> list[str]:
    """Lines saying whether a loop is running and where the tag's runs stand."""
    repo = Path(repo).resolve()
    holder = running_loop(repo)
    lines = [f"a loop is running (pid {holder[1]}, tag {holder[0]})" if holder else "no loop is running"]
    if tag is None and holder:
        tag = holder[0]
    if tag is None:
        try:
            branch = Git(repo).current_branch() or ""
        except GitError:
            branch = ""
        tag = branch.removeprefix("autoresearch/") if branch.startswith("autoresearch/") else None
    results = repo / ledger.RESULTS_FILE
    if tag is None:
        tag = ledger.tag_of(ledger.read_rows(results))
    if tag is None:
        return [*lines, "no runs yet (results.tsv is empty or missing)"]
    if ledger.tag_of(ledger.read_rows(results)) != tag:
        results = repo / "runs" / tag / ledger.RESULTS_FILE
    rows = [row for row in ledger.read_rows(results) if row.get("tag") == tag]
    if not rows:
        return [*lines, f"tag {tag}: no runs yet"]
    counts = {status: sum(row["status"] == status for row in rows) for status in ledger.STATUSES}
    lines.append(f"tag {tag} ({results.relative_to(repo)}): {len(rows)} runs; "
                 + ", ".join(f"{count} {status}" for status, count in counts.items() if count))
    best, baseline = state.best_row(rows), state.baseline_row(rows)
    if best is not None:
        gain = ""
        if baseline is not None and best is not baseline:
            gain = f" ({float(best['strict_f1']) - float(baseline['strict_f1']):+.4f} over the baseline)"
        lines.append(f"best: run {best['run']} strict F1 {float(best['strict_f1']):.4f}{gain}, "
                     f"commit {best['commit'][:10]}")
    last = rows[-1]
    lines.append(f"last: run {last['run']} {last['status']} [{last.get('direction') or '-'}] at {last['timestamp']}"
                 + (f": {last['note']}" if last.get("note") else ""))
    cost = sum(ledger.as_float(row.get("cost_usd")) or 0.0 for row in rows)
    lines.append(f"agent cost so far: ${cost:.2f}")
    return lines
