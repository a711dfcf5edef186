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

import time

from research_loop.config_block import normalised
from research_loop.evaluation.trial import Candidate, Trial, outcome_of
from research_loop.execution.after_run import check_after_run
from research_loop.execution.dispatch import count_attempt, job_for
from research_loop.execution.executors import Ticket
from research_loop.model_cache import ModelCacheError, ensure_cached, model_name
from research_loop.night.config import NightConfig
from research_loop.night.live_status import LiveStatus, in_flight_lines
from research_loop.night.session import Session
from research_loop.night.stale import retire_stale
from research_loop.night.stopping import Stop
from research_loop.proposals.intake import Intake
from research_loop.records.recorder import Recorder, crash_point
from research_loop.records.run_record import Status

POLL_S = 0.2


def started(trial: Trial) -> bool:
    return bool(trial.running or trial.done)


def priority(trial: Trial) -> tuple:
    """The baseline first, then runs already under way (nearer a decision), then the rest in run order."""
    return (not trial.candidate.is_baseline, not started(trial), trial.candidate.run)


def may_start(trial: Trial, ending: Stop | None, stop_requested: bool, budget, queue: list[Trial]) -> bool:
    """Whether a candidate that has not started may start now (one that has, always finishes): not after
    Ctrl-C, STOP or --max-hours; after --max-runs only within the budget; the queue drains otherwise."""
    if started(trial):
        return True
    if stop_requested:
        return False
    if ending is None:
        return True
    if ending.kind == "now":
        return False
    if ending.kind == "runs":
        under_way = sum(1 for item in queue if started(item))
        return budget.max_runs is None or budget.runs + under_way < budget.max_runs
    return True


LIVE_EVERY_S = 2.0
LIVE_FILE = "live.json"  # runs/<tag>/: what the loop is doing now, for `agent_loop.py status`


class Scheduler:
    def __init__(self, session: Session, intake: Intake, recorder: Recorder, queue: list[Trial],
                 options: NightConfig):
        self.session, self.intake, self.recorder = session, intake, recorder
        self.queue = queue
        self.options = options  # timeout_s, run_budget_s, train_options, kill grace, max_bounces
        self.tickets: dict[tuple[int, int], Ticket] = {}
        self.ending: Stop | None = None
        self.loop_seconds: dict[int, float] = {}
        self.attempted: set[int] = set()
        self.live = LiveStatus(session)
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
                self._acknowledge_stop()
            for trial in sorted(self.queue, key=priority):
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
            self.live.show(self.tickets, self.queue, self.intake.proposals.busy)
            if self._done():
                return self.ending
            self._charge(None, elapsed)

    def _acknowledge_stop(self) -> None:
        """STOP or Ctrl-C, said at once on screen and in live.json (so `status` shows it)."""
        if self.live.stopping or self.ending is None or not self.session.stop.stop_requested:
            return
        cause = self.session.stop.requested_by or "Ctrl-C"
        runs = sorted({run for run, _ in self.tickets})
        after = f"after run{'s' if len(runs) > 1 else ''} {', '.join(map(str, runs))}" if runs else "now"
        self.live.stopping = (f"stopping {after} ({cause} seen {time.strftime('%H:%M:%S')}); "
                              "Ctrl-C again kills it")
        if cause == "STOP":  # Ctrl-C said so itself, from its handler
            self.session.progress.note(self.live.stopping)
        self.live.written = 0.0  # write live.json now

    def _may_start(self, trial: Trial) -> bool:
        return may_start(trial, self.ending, self.session.stop.stop_requested, self.session.budget, self.queue)

    def _done(self) -> bool:
        return self.ending is not None and not any(started(trial) or self._may_start(trial) for trial in self.queue)

    # ----- asking -----

    def _ask_if_wanted(self) -> None:
        session = self.session
        if self.ending is not None or session.stop.stop_requested or self.intake.proposals.busy or \
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
                if len(self.tickets) >= session.executor.slots or not self._submit(trial, index):
                    return  # no free slot, or the trial ended before its job (its model is not there)
            return
        if trial.running:
            return
        if trial.candidate.is_baseline:
            self._log(trial, Status.BASELINE, "")
        else:
            status = Status.KEEP if verdict.action == "keep" else Status.DISCARD
            self._log(trial, status, verdict.reason)
            if status is Status.KEEP:
                self.cancelled.update(retire_stale(self.session, self.queue, self._cancel, self.intake,
                                                   self.recorder))

    def _submit(self, trial: Trial, index: int) -> bool:
        """Start one trial job; False when the trial ended instead (logged, or the night stopping)."""
        candidate = trial.candidate
        if not (trial.running or trial.done) and candidate.run not in self.attempted:
            if not self._model_ready(trial):
                return False
            self.attempted.add(candidate.run)
            count_attempt(self.session.ws, candidate.run)
            crash_point("after_attempt", candidate.run)
        job, ticket = job_for(self.session, trial, index, self.options)
        trial.running.add(index)
        self.tickets[(candidate.run, index)] = ticket
        self.session.executor.submit(job, ticket)
        return True

    def _model_ready(self, trial: Trial) -> bool:
        """The model in the local cache before the first trial (the sandbox has no network)."""
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
        seed, fold = trial.keys[ticket.index]
        folder = session.ws.trial_dir(ticket.run, ticket.index, seed, fold)
        tampering, stop = check_after_run(session, ticket.run)
        if stop:
            self.ending = Stop(stop, ok=False)
        outcome = outcome_of(result, ticket.index, (seed, fold), trial.candidate.commit, folder, session.files.scorer,
                             session.files.gold[fold], ticket.with_test)
        if tampering:
            outcome.kind, outcome.note = "tampered", tampering
            outcome.save(folder)
        trial.done[ticket.index] = outcome
        if not outcome.ok:
            session.last_failure_tail = result.log_tail
        self._charge(ticket.run, time.monotonic() - started)

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

    # ----- stopping -----

    def _cancel(self, trial: Trial) -> None:
        for index in list(trial.running):
            self.session.executor.cancel(self.tickets[(trial.candidate.run, index)])

    def in_flight_lines(self) -> list[str]:
        return in_flight_lines(self.session, self.queue)

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

