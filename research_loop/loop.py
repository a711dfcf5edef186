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

from research_loop.execution.executors import LocalExecutor
from research_loop.execution.sandbox import SandboxError
from research_loop.night.config import NightConfig
from research_loop.night.folders import Workspace, WorkspaceError, check_tag
from research_loop.night.lock import LockError, LoopLock
from research_loop.night.opening import NightError, baseline_commit, open_files, private_folders, write_night
from research_loop.night.progress import Progress
from research_loop.night.recovery import place_branch, reconcile
from research_loop.night.scheduler import Scheduler
from research_loop.night.session import Session
from research_loop.night.stopping import Budget, StopControl
from research_loop.proposals.intake import Intake
from research_loop.proposals.source import ProposalSource
from research_loop.records.recorder import Recorder

from .agents.base import Agent


class LoopError(Exception):
    """A one-line, user-facing reason the loop cannot start."""


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


def make_executor(config: NightConfig, ws: Workspace, backend: str, private: list[Path]):
    if config.workers > 1 or config.ray_address:
        from research_loop.execution.ray_executor import RayExecutor  # the ray extra

        return RayExecutor(config.workers, backend, ws.jobs_root, ws.repo, private, config.ray_address, config.limits,
                           config.kill_grace_s)
    return LocalExecutor(config.workers, backend, ws.jobs_root, ws.repo, private, config.limits, config.kill_grace_s)


def run_loop(config: NightConfig, agent: Agent) -> LoopSummary:
    """Run (or resume) the night config.tag until a budget, STOP, Ctrl-C or an error ends it."""
    try:
        ws = Workspace(Path(config.repo).resolve(), check_tag(config.tag))
        lock = LoopLock(ws.repo, ws.tag)
        lock.acquire()
    except (LockError, WorkspaceError) as exc:
        raise LoopError(str(exc)) from None
    executor = None
    try:
        try:
            files = open_files(config, ws)
            notes = [note for note in [place_branch(files.git, ws.tag, files.records)] if note]
            base = baseline_commit(config, ws, files.git, files.records)
            private = private_folders(ws.repo, files.views.manifest)
            executor = make_executor(config, ws, files.backend, private)
        except (NightError, SandboxError, ImportError) as exc:
            raise LoopError(str(exc)) from None
        write_night(config, ws, files.backend, base, {"lookahead": config.lookahead, "close_after": config.close_after})
        return _run(config, agent, ws, files, executor, base, notes)
    finally:
        if executor is not None:
            executor.shutdown()
        lock.release()


def _run(config: NightConfig, agent: Agent, ws: Workspace, files, executor, base: str, notes: list[str]) -> LoopSummary:
    budget = Budget(max_runs=config.max_runs, max_hours=config.max_hours, max_cost_usd=config.max_cost_usd)
    keys, replicates = config.trial_keys(), config.replicate_keys()
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
        config.tracker.night_started(ws.tag, {**ws.night(), "agent": config.agent})
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
