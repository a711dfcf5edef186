"""After a kill: make the branch agree with results.tsv, and queue again what was interrupted.

- A keep whose row was written but whose git step never happened: the branch moves to it.
- A kill inside that git step (train.py half-moved): train.py comes back from the kept commit.
- A candidate committed (refs/autoresearch/<tag>/run-N) but without a row: queued again, reusing the trials
  that finished (their trial.json); interrupted twice, it is logged as a crash instead.
- Job processes a killed loop left running are killed; stale job workspaces are removed.
"""

from __future__ import annotations

from research_loop.evaluation.trial import Candidate, Trial, TrialOutcome
from research_loop.execution.executors import kill_stale
from research_loop.execution.jobs import remove_tree
from research_loop.night.opening import NightError
from research_loop.night.session import Session
from research_loop.records.current_state import best_record
from research_loop.records.gitops import Git, branch_name
from research_loop.records.recorder import Recorder
from research_loop.records.run_record import RunRecord, Status

TRAILER_FIELDS = ("Hypothesis", "Direction", "Base", "Cost-USD", "Tokens", "Agent-Key")


def place_branch(repo_git: Git, tag: str, records: list[RunRecord]) -> str | None:
    """Move the branch to the best run's commit when a kill left it elsewhere; NightError for commits the
    loop did not make."""
    best = best_record(records)
    head = repo_git.head_sha()
    if best is None or head == best.commit:
        return None
    if repo_git.is_ancestor(head, best.commit):
        repo_git.move_to(best.commit)
        return f"run {best.run} was kept but its git step never happened: moved {branch_name(tag)} to it"
    head_run = repo_git.run_of(head)
    if head_run is not None:  # an older loop left a candidate on the branch
        repo_git.move_to(best.commit)
        return f"moved {branch_name(tag)} from run {head_run}'s commit back to the best run {best.run}"
    raise NightError(f"branch {branch_name(tag)} has commits the loop did not make after its best run "
                     f"({head[:10]}); move them to another branch or use a new --tag")


def candidate_from_commit(repo_git: Git, run: int, commit: str) -> Candidate:
    fields = {}
    for line in repo_git.message(commit).splitlines():
        name, sep, value = line.partition(": ")
        if sep and name in TRAILER_FIELDS:
            fields[name] = value
    parents = repo_git.repo.commit(commit).parents
    cost = fields.get("Cost-USD", "0")
    tokens_in, _, tokens_out = fields.get("Tokens", "0/0").partition("/")
    return Candidate(run, commit, repo_git.show(commit), fields.get("Base") or (parents[0].hexsha if parents else ""),
                     fields.get("Hypothesis", ""), fields.get("Direction", ""),
                     None if cost == "unknown" else float(cost or 0), int(tokens_in or 0), int(tokens_out or 0),
                     fields.get("Agent-Key", ""))


def preload(session: Session, trial: Trial) -> Trial:
    """The trials of this commit that finished before the kill."""
    for index, (seed, fold) in enumerate(trial.keys):
        outcome = TrialOutcome.load(session.ws.trial_dir(trial.candidate.run, index, seed, fold))
        if outcome is not None and outcome.commit == trial.candidate.commit and outcome.index == index:
            trial.done[index] = outcome
    return trial


def attempts(session: Session, run: int) -> int:
    path = session.ws.run_dir(run) / "attempts"
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return 0


def reconcile(session: Session, recorder: Recorder, baseline_commit: str) -> list[Trial]:
    """The queue to start the session with: the baseline when it has no row yet, then every interrupted
    candidate in run order."""
    ws, repo_git = session.ws, session.files.git
    for pid_file in (ws.store / "pids").glob("*.pid"):  # the loop's own pid files, never a run folder's
        if kill_stale(pid_file):
            session.progress.note(f"killed a train.py left running by a killed loop ({pid_file.stem})")
    remove_tree(ws.jobs_root)
    queue = []
    if session.baseline() is None:
        base = Candidate(session.next_run(), baseline_commit, repo_git.show(baseline_commit), "",
                         "unmodified train.py", "baseline", is_baseline=True)
        queue.append(preload(session, Trial(base, session.keys + session.replicates)))
    logged = {record.run for record in session.records}
    for run, commit in sorted(repo_git.run_refs(ws.tag).items()):
        if run in logged:
            continue
        candidate = candidate_from_commit(repo_git, run, commit)
        tries = attempts(session, run)
        if tries >= 2:
            session.progress.note(f"run {run} was interrupted twice: logged as a crash")
            candidate.hypothesis = f"interrupted twice ({candidate.hypothesis})"
            record = recorder.blank(run, Status.CRASH, "interrupted twice", candidate=candidate)
            record.commit = commit
            recorder.log(record, agent_key=candidate.key)
            continue
        if tries:
            session.progress.note(f"run {run} was interrupted: running it again")
        else:  # committed but never started: queued when a planned stop (--max-runs, STOP) ended the session
            session.progress.note(f"run {run} was queued when the last session stopped: running it now")
        queue.append(preload(session, Trial(candidate, session.keys)))
    return queue
