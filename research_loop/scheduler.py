"""The night's event loop: candidates in a queue, their trials on the executor's workers, the agent thinking
in the background, each run decided by the policy and logged in completion order.

- The agent is asked whenever the queue could use another candidate (workers + 1 in all), so workers do
  not wait for it; each proposal is based on the best at the time and says so (its commit's parent).
- A candidate's first trial runs alone (the screen); its other trials run side by side where workers allow.
- When a keep moves the best, every queued or running candidate based on an older best is stopped, logged
  `invalid` as stale, and queued again as a new run when its change applies to the new best.
- Ctrl-C once: candidates that started finish; the others stay committed and run when the night resumes.
"""

from __future__ import annotations

import json
import os
import time

from .acceptance import Confirm
from . import config_block
from .config_block import normalised
from .executors import Ticket
from .integrity import listed
from .jobs import Job
from .model_cache import ModelCacheError, ensure_cached, model_name
from .records import Status
from .safe_io import write_atomically
from .recorder import crash_point
from .stopping import Stop
from .trial import Candidate, Trial, outcome_of

POLL_S = 0.2


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
LIVE_EVERY_S = 2.0
LIVE_FILE = "live.json"  # runs/<tag>/: what the loop is doing now, for `agent_loop.py status`


class Scheduler:
    def __init__(self, session, intake, recorder, queue: list[Trial], options):
        self.session, self.intake, self.recorder = session, intake, recorder
        self.queue = queue
        self.options = options  # timeout_s, run_budget_s, train_options, kill grace, max_bounces
        self.tickets: dict[tuple[int, int], Ticket] = {}
        self.ending: Stop | None = None
        self.loop_seconds: dict[int, float] = {}
        self.attempted: set[int] = set()
        self.live_written = 0.0
        self.cancelled: set[int] = set()

    # ----- the loop -----

    def run(self) -> Stop:
        session = self.session
        while True:
            started = time.monotonic()
            if session.stop.abort_requested:
                return self._abort()
            if self.ending is None or (self.ending.kind != "now" and session.stop.stop_requested):
                self.ending = session.stop.reason(planned=len(self.queue)) or self.ending
            for trial in sorted(self.queue, key=self._priority):
                if trial in self.queue:
                    self._advance(trial)
            if self.ending is not None and not self.ending.ok and self.ending.reason.startswith("the baseline"):
                self._cancel_all()
                return self.ending
            self._ask_if_wanted()
            asked = self.intake.proposals.poll()
            if asked is not None:
                self._take(asked)
            elapsed = time.monotonic() - started
            for ticket, result in session.executor.poll(POLL_S):
                self._finish(ticket, result)
            self._show()
            if self._done():
                return self.ending
            self._charge(None, elapsed)

    def _priority(self, trial: Trial) -> tuple:
        started = bool(trial.running or trial.done)
        return (not trial.candidate.is_baseline, not started, trial.candidate.run)

    def _winding_down(self) -> bool:
        return self.ending is not None

    @staticmethod
    def _started(trial: Trial) -> bool:
        return bool(trial.running or trial.done)

    def _may_start(self, trial: Trial) -> bool:
        """Whether a candidate that has not started may start now (one that has, always finishes)."""
        if self._started(trial):
            return True
        if self.session.stop.stop_requested:
            return False
        if self.ending is None:
            return True
        if self.ending.kind == "now":
            return False
        if self.ending.kind == "runs":
            budget = self.session.budget
            started = sum(1 for item in self.queue if self._started(item))
            return budget.max_runs is None or budget.runs + started < budget.max_runs
        return True

    def _done(self) -> bool:
        return self.ending is not None and not any(self._started(trial) or self._may_start(trial)
                                                   for trial in self.queue)

    # ----- asking -----

    def _ask_if_wanted(self) -> None:
        session = self.session
        if self._winding_down() or session.stop.stop_requested or self.intake.proposals.busy or \
                session.baseline() is None:
            return
        fresh = sum(1 for trial in self.queue if not trial.candidate.is_baseline)
        if fresh < session.executor.slots + self.options.lookahead:
            self.intake.ask(self.in_flight_lines())

    def _take(self, asked) -> None:
        trees = {normalised(trial.candidate.train_py): trial.candidate.run for trial in self.queue}
        outcome = self.intake.take(asked, trees, self.in_flight_lines())
        if isinstance(outcome, Stop):
            if self.ending is None:
                self.ending = outcome
        elif isinstance(outcome, Candidate):
            self.queue.append(Trial(outcome, self.session.keys))

    # ----- trials -----

    def _advance(self, trial: Trial) -> None:
        session = self.session
        if trial.candidate.run in self.cancelled:
            return
        failure = trial.failure()
        if failure is not None:
            for index in list(trial.running):
                session.executor.cancel(self.tickets[(trial.candidate.run, index)])
            if not trial.running:
                status = Status.TIMEOUT if failure.kind == "timeout" else (
                    Status.INVALID if failure.kind == "tampered" else Status.CRASH)
                self._log(trial, status, failure.note)
            return
        verdict = trial.next_step(session.policy, session.standing())
        if verdict.action == "run":
            if not self._may_start(trial):
                return
            for index in verdict.run:
                if len(self.tickets) >= session.executor.slots:
                    return
                self._submit(trial, index)
            return
        if trial.running:
            return
        if trial.candidate.is_baseline:
            self._log(trial, Status.BASELINE, "")
        else:
            status = Status.KEEP if verdict.action == "keep" else Status.DISCARD
            self._log(trial, status, verdict.reason)
            if status is Status.KEEP:
                self._after_keep()

    def _submit(self, trial: Trial, index: int) -> None:
        session, candidate = self.session, trial.candidate
        seed, fold = session.keys[index]
        if not (trial.running or trial.done) and candidate.run not in self.attempted:
            if not self._model_ready(trial):
                return
            self.attempted.add(candidate.run)
            self._count_attempt(candidate.run)
            crash_point("after_attempt", candidate.run)
        with_test = session.files.views.has_test and index == (0 if candidate.is_baseline else 1) and \
            isinstance(session.policy, Confirm)
        if session.files.backend == "none":
            session.files.protected.accept("program.md")
        view = session.files.views.view(fold, with_test=with_test)
        job = Job(candidate.train_py, session.files.fixed_files, view.files, seed, fold,
                  timeout_s=self.options.timeout(session.records, candidate.is_baseline),
                  budget_s=self.options.run_budget_s, extra_args=self.options.train_options,
                  label=f"run {candidate.run} {session.unit} {fold if fold is not None else seed}")
        folder = session.ws.trial_dir(candidate.run, index, seed, fold)
        if folder.exists() and not folder.is_dir() or folder.is_symlink():
            folder.unlink()  # not the loop's: trial folders are made only here
        folder.mkdir(parents=True, exist_ok=True)
        pid_file = session.ws.store / "pids" / f"{candidate.run:04d}-{index}.pid"  # out of train.py's reach
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        ticket = Ticket(candidate.run, index, folder / "run.log", pid_file, with_test=with_test)
        trial.running.add(index)
        self.tickets[(candidate.run, index)] = ticket
        session.executor.submit(job, ticket)

    def _model_ready(self, trial: Trial) -> bool:
        try:
            note = ensure_cached(model_name(trial.candidate.train_py))
        except ModelCacheError as exc:
            if trial.candidate.is_baseline:
                self.ending = Stop(f"error: {exc}", ok=False, kind="now")
                self.queue.remove(trial)
            else:
                self._log(trial, Status.CRASH, str(exc))
            return False
        if note:
            self.session.progress.note(note)
        return True

    def _count_attempt(self, run: int) -> None:
        path = self.session.ws.run_dir(run) / "attempts"
        path.parent.mkdir(parents=True, exist_ok=True)
        attempts = int(path.read_text()) + 1 if path.is_file() else 1
        path.write_text(f"{attempts}\n")

    def _finish(self, ticket: Ticket, result) -> None:
        session = self.session
        started = time.monotonic()
        self.tickets.pop((ticket.run, ticket.index), None)
        trial = next((item for item in self.queue if item.candidate.run == ticket.run), None)
        if trial is None or result.kind == "aborted" or ticket.run in self.cancelled:
            if trial is not None:
                trial.running.discard(ticket.index)
            return
        trial.running.discard(ticket.index)
        seed, fold = session.keys[ticket.index]
        folder = session.ws.trial_dir(ticket.run, ticket.index, seed, fold)
        tampering = self._check_integrity(ticket.run)
        outcome = outcome_of(result, ticket.index, (seed, fold), trial.candidate.commit, folder, session.files.scorer,
                             session.files.gold[fold], ticket.with_test)
        if tampering:
            outcome.kind, outcome.note = "tampered", tampering
            outcome.save(folder)
        trial.done[ticket.index] = outcome
        if not outcome.ok:
            session.last_failure_tail = result.log_tail
        self._charge(ticket.run, time.monotonic() - started)

    def _check_integrity(self, run: int) -> str | None:
        """Protected files and the working tree after a run; what changed is restored or moved aside. The note
        for the run when train.py may have done it (an unsandboxed run), else None (reported only)."""
        session = self.session
        files = session.files
        if files.backend != "none":
            files.protected.accept("program.md")  # train.py cannot reach it: a change is the human's
        violations = files.protected.violations()
        changes = [change for change in files.tree.changes() if not change.path.startswith(("data/", "research_loop/"))
                   and change.path not in ("prepare.py", "evaluate.py", "agent_loop.py", "pyproject.toml")]
        if not violations and not changes:
            return None
        saved = session.ws.run_dir(run) / "tampered"
        left = files.protected.restore(violations, saved)
        left = [path for path in left if not files.git.restore_tracked("HEAD", path)]
        left += files.tree.undo(changes, saved, lambda path: files.git.restore_tracked("HEAD", path))
        what = listed(violations + changes)
        session.progress.note(f"run {run}: files outside its out/ folder changed and were restored or moved to "
                              f"{saved.relative_to(session.ws.repo)}: {what}"
                              + (f"; could not restore {', '.join(left)}" if left else ""))
        if left and any(path.startswith("data/") for path in left):
            self.ending = Stop(f"error: {left[0]} could not be restored; run prepare.py again", ok=False)
        if files.backend == "none" or violations:
            return f"train.py changed protected files: {what} (restored)"
        return None

    def _log(self, trial: Trial, status: Status, note: str) -> None:
        if trial in self.queue:
            self.queue.remove(trial)
        started = time.monotonic()
        record = self.recorder.record(trial, status, note)
        self.recorder.log(record, trial, agent_key=trial.candidate.key)
        if status is Status.INVALID:
            self.intake.feedback = f"Your previous proposal (run {record.run}) was logged invalid: {record.note}."
        self._charge(trial.candidate.run, time.monotonic() - started)
        self.recorder.write_timing(trial.candidate.run, {
            "loop_s": self.loop_seconds.get(trial.candidate.run, 0.0), "train_s": record.seconds,
            "agent_s": self.intake.proposals.seconds})
        if trial.candidate.is_baseline and status is not Status.BASELINE:
            folder = self.session.ws.run_dir(record.run) / "run.log"
            self.ending = Stop(f"the baseline run failed ({status}: {record.note}); see "
                               f"{folder.relative_to(self.session.ws.repo)}, fix train.py or the --set values, "
                               "commit, and start again", ok=False)

    def _charge(self, run: int | None, seconds: float) -> None:
        if run is not None:
            self.loop_seconds[run] = self.loop_seconds.get(run, 0.0) + seconds

    # ----- keeps make older candidates stale -----

    def _after_keep(self) -> None:
        session = self.session
        best = session.best()
        best_text = session.files.git.show(best.commit)
        for trial in list(self.queue):
            candidate = trial.candidate
            if candidate.is_baseline or candidate.parent == best.commit:
                continue
            self.cancelled.add(candidate.run)
            for index in list(trial.running):
                session.executor.cancel(self.tickets[(candidate.run, index)])
            self.queue.remove(trial)
            rebased = rebase(session.files.git, session.files.git.show(candidate.parent), best_text,
                             candidate.train_py)
            if rebased is None or normalised(rebased) in session.seen:
                why = "it repeats a run" if rebased is not None else "its change does not apply to it"
                note = f"stale: proposed on an older best; run {best.run} was kept since, and {why}"
            else:
                fresh = self.intake.rebase(candidate, rebased)
                self.queue.append(Trial(fresh, session.keys))
                note = f"stale: proposed on an older best; rebased onto run {best.run} as run {fresh.run}"
            record = self.recorder.blank(candidate.run, Status.INVALID, note, candidate=candidate)
            record.commit = candidate.commit
            self.recorder.log(record, agent_key=candidate.key)

    # ----- stopping -----

    def _cancel_all(self) -> None:
        for ticket in list(self.tickets.values()):
            self.session.executor.cancel(ticket)

    def _abort(self) -> Stop:
        self._cancel_all()
        deadline = time.monotonic() + 60
        while self.tickets and time.monotonic() < deadline:
            for ticket, _ in self.session.executor.poll(POLL_S):
                self.tickets.pop((ticket.run, ticket.index), None)
        return self.session.stop.reason() or Stop("aborted")

    # ----- what the agent and the display see -----

    def in_flight_lines(self) -> list[str]:
        lines = []
        for trial in self.queue:
            if trial.candidate.is_baseline:
                continue
            state = (f"training ({len(trial.done)} of {self.session.full_trials} {self.session.unit}s done)"
                     if trial.running or trial.done else "queued")
            lines.append(f"run {trial.candidate.run} [{trial.candidate.direction}] {trial.candidate.hypothesis} "
                         f"-- {state}")
        return lines

    def _show(self) -> None:
        session = self.session
        jobs = []
        for (run, index), ticket in self.tickets.items():
            seed, fold = session.keys[index]
            jobs.append((f"run {run} {session.unit} {fold if fold is not None else seed} on {ticket.worker}",
                         ticket.started))
        busy = session.executor.busy_seconds()
        wall = max(session.stop.hours * 3600, 1e-9)
        utilisation = ", ".join(f"{name} {seconds / wall:.0%}" for name, seconds in busy.items())
        queued = sum(1 for trial in self.queue if not (trial.running or trial.done))
        session.progress.in_flight(jobs, queued, utilisation)
        if time.monotonic() - self.live_written > LIVE_EVERY_S:
            self.live_written = time.monotonic()
            now = time.time()
            live = {"pid": os.getpid(), "updated": now, "activity": session.progress.activity, "queued": queued,
                    "jobs": [{"what": what, "started": now - (time.monotonic() - since)} for what, since in jobs],
                    "utilisation": utilisation}
            try:
                write_atomically(session.ws.tag_dir / LIVE_FILE, json.dumps(live) + "\n")
            except OSError:
                pass  # a full disk must not end the night over a status file
        if not self.tickets and not self.intake.proposals.busy:
            session.progress.doing("deciding")

