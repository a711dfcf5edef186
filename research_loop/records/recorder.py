"""A decided run becomes a results.tsv row, then (a keep) a branch move, then everything that follows a row:
CURRENT_STATE.md, the live line, the holdout score of a keep, the tracker, the agent's feedback.

Invariant: the row is appended (fsynced) before any git step, so a kill at any moment loses no row and no
kept commit (a restart finishes the git step; see night/recovery.py).
"""

from __future__ import annotations

import json
import os
import time
from statistics import mean

from research_loop.agents.base import Outcome, observe
from research_loop.evaluation import holdout
from research_loop.evaluation.trial import Trial
from research_loop.hygiene import plain_text
from research_loop.night.session import Session
from research_loop.records.gitops import unified_diff
from research_loop.records.ledger import now_iso
from research_loop.records.run_record import RunRecord, Status
from research_loop.redact import redact
from research_loop.safe_io import write_atomically

TEST_CRASH_ENV = "NER_AUTORESEARCH_TEST_CRASH_AT"  # tests only: os._exit(137) at a named point
TEST_PAUSE_ENV = "NER_AUTORESEARCH_TEST_PAUSE_AT"  # tests only: say so and wait 3 s at a named point


def crash_point(name: str, run: int) -> None:
    """Tests only: die like kill -9 at point `name` (or `name@run`, at that run only); or pause there, so a
    test can press Ctrl-C in the middle of a git step."""
    if os.environ.get(TEST_CRASH_ENV) in (name, f"{name}@{run}"):
        os._exit(137)
    if os.environ.get(TEST_PAUSE_ENV) in (name, f"{name}@{run}"):
        print(f"paused at {name} (run {run})", flush=True)
        time.sleep(3)


class Recorder:
    def __init__(self, session: Session, in_flight=list):
        self.session = session
        self.in_flight = in_flight  # lines for CURRENT_STATE.md's "in flight" section

    def record(self, trial: Trial, status: Status, note: str) -> RunRecord:
        """The row of a decided run, its scores over the trials that finished."""
        session, candidate = self.session, trial.candidate
        record = self.blank(candidate.run, status, note, candidate)
        record.commit = candidate.commit
        finished = [trial.done[index] for index in sorted(trial.done)]
        record.seconds = sum(outcome.seconds for outcome in finished)
        record.workers = [outcome.worker for outcome in finished]
        record.seeds = [outcome.seed for outcome in finished]
        record.folds = [outcome.fold for outcome in finished if outcome.fold is not None]
        record.device = next((outcome.device for outcome in finished if outcome.device), "")
        epochs = [outcome.epochs for outcome in finished if outcome.epochs is not None]
        record.epochs = mean(epochs) if epochs else None
        vram = [outcome.peak_vram_mb for outcome in finished if outcome.peak_vram_mb]
        record.peak_vram_gb = max(vram) / 1024 if vram else None
        scored = [outcome for outcome in finished if outcome.ok]
        if status.scored and scored:
            scores = [outcome.trial_score for outcome in scored]
            per_type = {name: [score.per_type.get(name, 0.0) for score in scores] for name in session.files.entity_types}
            pooled = None
            if session.unit == "fold":  # pooled over the union of the folds' rows (each fold's first trial)
                main = [outcome for outcome in scored if (outcome.seed, outcome.fold) in session.keys]
                folder = lambda outcome: session.ws.trial_dir(candidate.run, outcome.index, outcome.seed, outcome.fold)
                total = session.files.scorer.pooled([(folder(outcome) / "pred_val.jsonl",
                                                      session.files.gold[outcome.fold]) for outcome in main])
                pooled = (total.strict, total.relaxed, total.per_type)
            record.set_scores([score.strict for score in scores], [score.relaxed for score in scores], per_type, pooled)
        return record

    def blank(self, run: int, status: Status, note: str, candidate=None, proposal=None, usage=None) -> RunRecord:
        source = candidate or proposal
        record = RunRecord(run=run, tag=self.session.ws.tag, status=status, note=plain_text(redact(note), 600),
                           sandbox=self.session.files.backend, timestamp=now_iso())
        if source is not None:
            record.description = plain_text(redact(source.hypothesis), 2000)
            record.direction = plain_text(source.direction, 80)
        if candidate is not None:
            record.cost_usd, record.tokens_in, record.tokens_out = candidate.cost_usd, candidate.tokens_in, candidate.tokens_out
            record.parent = candidate.parent
        elif usage is not None:
            record.cost_usd, record.tokens_in, record.tokens_out = usage.cost_usd, usage.tokens_in, usage.output_tokens
        return record

    def log(self, record: RunRecord, trial: Trial | None = None, agent_key: str = "") -> RunRecord:
        """Append the row, then keep or not, then everything that follows a row."""
        session = self.session
        ledger = session.files.ledger
        problem = ledger.problem()
        if problem:
            saved = session.ws.run_dir(record.run) / "tampered" / "results.tsv"
            ledger.restore(saved)
            session.progress.note(f"{problem}; put back the loop's own rows (saved as {saved.relative_to(session.ws.repo)})")
        ledger.append(record)
        session.records.append(record)
        session.remember(record)
        session.budget.runs += 1
        crash_point("after_row", record.run)
        if record.status is Status.KEEP:
            session.files.git.move_to(record.commit)
            session.files.tree.refresh("train.py")
        crash_point("after_git", record.run)
        session.write_state(self.in_flight())
        cost = f"${session.budget.cost_usd:.2f}" + ("+?" if session.budget.cost_unknown else "")
        session.progress.finished(record, session.best(), cost, unsandboxed=session.files.backend == "none")
        if record.status.failed and trial is not None and trial.failure() is not None:
            session.last_failure_tail = None  # the next context reads the failed run's own log
        if record.status.kept:
            self.score_holdout(record, role=record.status.value)
        self.track(record)
        best = session.best()
        observe(session.agent, Outcome(agent_key, record.status.value, record.strict_f1, record.trials,
                                       best.strict_f1 if best else None))
        return record

    def trial_folders(self, record: RunRecord) -> list:
        keys = list(zip(record.seeds, record.folds or [None] * len(record.seeds)))
        return [self.session.ws.trial_dir(record.run, index, seed, fold) for index, (seed, fold) in enumerate(keys)]

    def score_holdout(self, record: RunRecord, role: str) -> None:
        files = self.session.files
        if files.holdout_gold is None:
            return
        predictions = [folder / "pred_holdout.jsonl" for folder in self.trial_folders(record)]
        predictions = [path for path in predictions if path.is_file()]
        if not predictions:
            self.session.progress.note(f"run {record.run}: no holdout predictions to score")
            return
        try:
            entry = holdout.score_run(files.scorer, files.holdout_gold, predictions, record.run, record.commit, role)
        except files.scorer.error as exc:
            self.session.progress.note(f"run {record.run}: holdout not scored: {exc}")
            return
        path = holdout.scores_path(files.holdout_gold, self.session.ws.repo, self.session.ws.tag)
        holdout.append_score(path, entry)

    def track(self, record: RunRecord) -> None:
        session = self.session
        if not record.commit or not session.files.git.exists(record.commit):
            train_py, diff = "", ""
        else:
            train_py = session.files.git.show(record.commit)
            parent = record.parent if record.parent and session.files.git.exists(record.parent) else None
            diff = unified_diff(session.files.git.show(parent), train_py) if parent else ""
        from research_loop.config_block import values

        config = values(train_py) if train_py else {}
        logs = [folder / "run.log" for folder in self.trial_folders(record) if (folder / "run.log").is_file()]
        session.tracker.run_logged(record, config, train_py, diff, logs)

    def write_timing(self, run: int, timing: dict) -> None:
        write_atomically(self.session.ws.run_dir(run) / "timing.json", json.dumps(timing, indent=1) + "\n")
