"""One trial of a candidate as a job for the executor: its data view (test rows only for a run that can be
kept), its limits, the loop's own folder for its files, and the attempt counted (a run interrupted twice
is logged as a crash on restart)."""

from __future__ import annotations

from research_loop.evaluation.trial import Trial
from research_loop.execution.executors import Ticket
from research_loop.execution.jobs import Job
from research_loop.night.config import NightConfig
from research_loop.night.session import Session


def predicts_test(session: Session, trial: Trial, index: int) -> bool:
    """Test rows are long and only a kept run needs their predictions: the baseline's first trial, and the
    first confirming trial of a candidate that passed the screen (never a screened-out run)."""
    return (session.files.views.has_test and session.policy.screens
            and index == (0 if trial.candidate.is_baseline else 1))


def job_for(session: Session, trial: Trial, index: int, options: NightConfig) -> tuple[Job, Ticket]:
    candidate = trial.candidate
    seed, fold = trial.keys[index]
    with_test = predicts_test(session, trial, index)
    if session.files.backend == "none":
        session.files.protected.accept("program.md")  # the human's edits before the run are theirs
    view = session.files.views.view(fold, with_test=with_test)
    job = Job(candidate.train_py, session.files.fixed_files, view.files, seed, fold,
              timeout_s=options.timeout(session.records, candidate.is_baseline), budget_s=options.run_budget_s,
              extra_args=options.train_options, label=f"run {candidate.run} {session.unit} {fold if fold is not None else seed}")
    folder = session.ws.trial_dir(candidate.run, index, seed, fold)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        folder.unlink()  # not the loop's: trial folders are made only here
    folder.mkdir(parents=True, exist_ok=True)
    pid_file = session.ws.store / "pids" / f"{candidate.run:04d}-{index}.pid"  # out of train.py's reach
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    ticket = Ticket(candidate.run, index, folder / "run.log", pid_file, with_test=with_test, seed=seed, fold=fold)
    return job, ticket


def count_attempt(ws, run: int) -> None:
    path = ws.run_dir(run) / "attempts"
    path.parent.mkdir(parents=True, exist_ok=True)
    attempts = int(path.read_text()) + 1 if path.is_file() else 1
    path.write_text(f"{attempts}\n")
