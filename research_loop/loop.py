"""The overnight loop, as one pipeline:

    open the night (lock, clean tree, data and results checked, sandbox, branch, baseline commit)
    -> reconcile what a kill left behind (branch, unlogged candidates)
    -> schedule: propose (in the background) -> vet -> commit off the branch -> train each trial in the
       sandbox -> score with the fixed scorer -> decide by the policy -> row -> keep (branch moves) or not
       -> CURRENT_STATE.md
    -> stop (Ctrl-C, STOP, a budget, an error): final holdout score, last_stop.json, the summary.

Crash safety: a row is appended (fsynced) before any git step, every candidate commit stays reachable under
refs/autoresearch/<tag>/, and a restart reconciles, so a kill -9 at any moment loses no row and no kept commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from research_loop.evaluation.acceptance import AcceptancePolicy, Monotonic
from research_loop.execution.executors import LocalExecutor
from research_loop.execution.sandbox import Limits, SandboxError
from research_loop.night.folders import Workspace, WorkspaceError, check_tag
from research_loop.night.lock import LockError, LoopLock
from research_loop.night.opening import (
    NightConfig,
    NightError,
    baseline_commit,
    open_files,
    private_folders,
    replicate_keys,
    timeout_for,
    trial_keys,
    write_night,
)
from research_loop.night.progress import Progress
from research_loop.night.recovery import place_branch, reconcile
from research_loop.night.scheduler import Scheduler
from research_loop.night.session import Session
from research_loop.night.stopping import Budget, StopControl
from research_loop.proposals.intake import Intake
from research_loop.proposals.source import ProposalSource
from research_loop.records.recorder import Recorder
from research_loop.records.tracking import NullTracker

from .agents.base import Agent


class LoopError(Exception):
    """A one-line, user-facing reason the loop cannot start."""


@dataclass
class LoopConfig:
    repo: Path
    tag: str
    agent_name: str = ""
    settings: list[tuple[str, object]] = field(default_factory=list)  # --set NAME=VALUE (a new night)
    train_options: tuple[str, ...] = ()  # loop-owned train.py options (--limit N, --device D)
    max_runs: int | None = None  # rows this session (baseline and invalid ones included)
    max_hours: float | None = None
    max_cost_usd: float | None = None
    timeout_s: float | None = None  # per job; None: 3x the baseline's per-trial time, at least min_timeout_s
    min_timeout_s: float = 600.0
    baseline_timeout_s: float = 7200.0
    run_budget_s: float | None = None  # every run's wall-clock budget (train.py gets the deadline)
    policy: AcceptancePolicy = field(default_factory=Monotonic)
    eval_mode: str = "val"
    folds: int = 5
    seeds: tuple[int, ...] = (42, 43, 44)
    split_seed: int = 2026
    check_duplicates: bool = True
    max_bounces: int = 3
    close_after: int = 5
    agent_retry_s: float = 60.0
    agent_max_failures: int = 8
    kill_grace_s: float = 10.0
    progress: bool = True
    workers: int = 1
    lookahead: int = 1  # proposals prepared ahead of the free workers (0: strictly one after another)
    ray_address: str | None = None
    sandbox: str = "auto"
    allow_unsandboxed: bool = False
    limits: Limits = field(default_factory=Limits)
    tracker: object = field(default_factory=NullTracker)
    base: str | None = None  # a new night's base commit (None: HEAD)
    from_branch: str | None = None  # the branch checked out before the night (the end line names it)
    agent_patience_s: float = 1800.0  # stop the night when the agent stayed unreachable this long
    writes_code: bool = True  # the agent writes train.py (the registry says; the CLI sets it)

    def timeout(self, records, is_baseline: bool) -> float:
        return timeout_for([] if is_baseline else records, self.timeout_s, self.run_budget_s, self.min_timeout_s,
                           self.baseline_timeout_s)


@dataclass
class LoopSummary:
    tag: str
    stop_reason: str
    ok: bool
    finished: bool = False  # ended as planned (a budget, STOP): the next plain command starts a new night
    runs: int = 0
    keeps: int = 0
    crashes: int = 0
    best_run: int | None = None
    best_strict_f1: float | None = None
    best_trials: int = 0
    best_commit: str | None = None
    cost_usd: float = 0.0
    cost_unknown: bool = False
    hours: float = 0.0
    overheads_s: list[float] = field(default_factory=list)
    interrupted: int = 0  # candidates committed but not logged: they run when the night resumes
    sandbox: str = ""  # the backend the night's train.py ran in ("none": UNSANDBOXED)


def make_executor(config: LoopConfig, ws: Workspace, backend: str, private: list[Path]):
    if config.workers > 1 or config.ray_address:
        from research_loop.execution.ray_executor import RayExecutor  # the ray extra

        return RayExecutor(config.workers, backend, ws.jobs_root, ws.repo, private, config.ray_address, config.limits,
                           config.kill_grace_s)
    return LocalExecutor(config.workers, backend, ws.jobs_root, ws.repo, private, config.limits, config.kill_grace_s)


def run_loop(config: LoopConfig, agent: Agent) -> LoopSummary:
    """Run (or resume) the night config.tag until a budget, STOP, Ctrl-C or an error ends it."""
    try:
        ws = Workspace(Path(config.repo).resolve(), check_tag(config.tag))
        lock = LoopLock(ws.repo, ws.tag)
        lock.acquire()
    except (LockError, WorkspaceError) as exc:
        raise LoopError(str(exc)) from None
    executor = None
    try:
        night_config = NightConfig(ws.repo, ws.tag, config.settings, config.train_options, config.eval_mode,
                                   config.folds, config.seeds, config.split_seed, config.policy, config.sandbox,
                                   config.allow_unsandboxed, config.run_budget_s, config.agent_name, config.workers,
                                   config.limits, base=config.base, from_branch=config.from_branch, writes_code=config.writes_code)
        try:
            files = open_files(night_config, ws)
            notes = [note for note in [place_branch(files.git, ws.tag, files.records)] if note]
            base = baseline_commit(night_config, ws, files.git, files.records)
            private = private_folders(ws.repo, files.views.manifest)
            executor = make_executor(config, ws, files.backend, private)
        except (NightError, SandboxError, ImportError) as exc:
            raise LoopError(str(exc)) from None
        write_night(night_config, ws, files.backend, base, {"lookahead": config.lookahead,
                                                           "close_after": config.close_after})
        return _run(config, agent, ws, files, executor, base, notes)
    finally:
        if executor is not None:
            executor.shutdown()
        lock.release()


def _run(config: LoopConfig, agent: Agent, ws: Workspace, files, executor, base: str, notes: list[str]) -> LoopSummary:
    budget = Budget(max_runs=config.max_runs, max_hours=config.max_hours, max_cost_usd=config.max_cost_usd)
    plan = NightConfig(ws.repo, ws.tag, eval_mode=config.eval_mode, folds=config.folds, seeds=config.seeds)
    keys, replicates = trial_keys(plan), replicate_keys(plan)
    progress = Progress(ws.tag, enabled=config.progress, unit="fold" if config.eval_mode == "cv" else "seed")
    stop = StopControl(ws.repo, budget, progress.note)
    session = Session(ws, files, agent, config.policy, keys, replicates if config.policy.paired
                      else [], stop, budget, progress, config.tracker, executor,
                      close_after=config.close_after, check_duplicates=config.check_duplicates,
                      records=list(files.records), noise_floor=1.0 / files.views.fold_span_count())
    for record in session.records:
        session.remember(record)
    progress.set_best(session.best())
    summary = LoopSummary(tag=ws.tag, stop_reason="", ok=True, sandbox=files.backend)
    with progress, stop.handlers():
        for note in [*files.notes, files.backend_note if files.backend == "none" else "", *notes]:
            if note:
                progress.note(note)
        recorder = Recorder(session)
        queue = reconcile(session, recorder, base)
        files.tree.take()
        proposals = ProposalSource(agent, stop, progress.note, config.agent_retry_s, config.agent_max_failures,
                                   on_wait=progress.doing, patience_s=config.agent_patience_s)
        intake = Intake(session, recorder, proposals, config.max_bounces)
        scheduler = Scheduler(session, intake, recorder, queue, config)
        recorder.in_flight = scheduler.in_flight_lines
        config.tracker.night_started(ws.tag, {**ws.night(), "agent": config.agent_name})
        session.write_state(scheduler.in_flight_lines())
        ending = scheduler.run()
        best = session.best()
        if best is not None:
            recorder.score_holdout(best, role="final")
        summary.interrupted = len([trial for trial in scheduler.queue if not trial.candidate.is_baseline])
        summary.stop_reason, summary.ok, summary.finished = ending.reason, ending.ok, ending.finished
        ws.write_stop(ending.reason, ending.ok, ending.finished)
        session.write_state([])
        config.tracker.night_ended(ending.reason, ending.ok)
        progress.doing(f"stopped: {ending.reason}")
        summary.overheads_s = list(scheduler.loop_seconds.values())
    return _summarise(summary, session)


def _summarise(summary: LoopSummary, session: Session) -> LoopSummary:
    summary.runs = session.budget.runs
    mine = session.records[len(session.files.records):]
    summary.keeps = sum(record.status.value == "keep" for record in mine)
    summary.crashes = sum(record.status.failed for record in mine)
    best = session.best()
    if best is not None:
        summary.best_run, summary.best_commit = best.run, best.commit
        summary.best_strict_f1, summary.best_trials = best.strict_f1, best.trials
    summary.cost_usd, summary.cost_unknown = session.budget.cost_usd, session.budget.cost_unknown
    summary.hours = session.stop.hours
    return summary


def overhead_text(summary: LoopSummary) -> str:
    return f"loop overhead {median(summary.overheads_s):.2f} s/run (median)" if summary.overheads_s else ""
