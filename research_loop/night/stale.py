"""Candidates made stale by a keep: proposed on a best that is no longer the best, so their scores could not
be compared with it. Each is stopped and logged `invalid`; its change, when it applies to the new best, is
queued again as a new run (its cost was logged with the stale one)."""

from __future__ import annotations

from research_loop import config_block
from research_loop.config_block import normalised
from research_loop.evaluation.trial import Trial
from research_loop.night.session import Session
from research_loop.records.run_record import Status


def rebase(repo_git, parent: str, best: str, candidate: str) -> str | None:
    """The candidate's change (parent -> candidate) applied to the new best: constant by constant when it only
    changed config values (neighbouring lines of the config block would trip a line merge), else a three-way
    merge; None when it does not apply."""
    before, after = config_block.values(parent), config_block.values(candidate)
    changed = {name: value for name, value in after.items() if before.get(name, object()) != value}
    try:
        only_config = normalised(config_block.apply_settings(parent, list(changed.items()))) == normalised(candidate)
        if only_config:
            return config_block.apply_settings(best, list(changed.items()))
    except (config_block.ConfigBlockError, SyntaxError):
        pass
    return repo_git.merge_train(parent, best, candidate)


def retire_stale(session: Session, queue: list[Trial], cancel, intake, recorder) -> list[int]:
    """Stop and log every queued or running candidate not based on the current best; queue the rebased ones.
    cancel(trial) stops a trial's running jobs. Returns the retired run numbers (their late results are
    ignored)."""
    best = session.best()
    best_text = session.files.git.show(best.commit)
    retired = []
    for trial in list(queue):
        candidate = trial.candidate
        if candidate.is_baseline or candidate.parent == best.commit:
            continue
        retired.append(candidate.run)
        cancel(trial)
        queue.remove(trial)
        rebased = rebase(session.files.git, session.files.git.show(candidate.parent), best_text, candidate.train_py)
        if rebased is None or normalised(rebased) in session.seen:
            why = "it repeats a run" if rebased is not None else "its change does not apply to it"
            note = f"stale: proposed on an older best; run {best.run} was kept since, and {why}"
        else:
            fresh = intake.rebase(candidate, rebased)
            queue.append(Trial(fresh, session.keys))
            note = f"stale: proposed on an older best; rebased onto run {best.run} as run {fresh.run}"
        record = recorder.blank(candidate.run, Status.INVALID, note, candidate=candidate)
        record.commit = candidate.commit
        recorder.log(record, agent_key=candidate.key)
    return retired
