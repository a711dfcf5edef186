"""A session's shared state: the night's records, the best run, the noise, and what the agent sees."""

from __future__ import annotations

from dataclasses import dataclass, field

from research_loop.agents.base import Agent, Context
from research_loop.config_block import normalised
from research_loop.evaluation import diagnostics
from research_loop.evaluation.acceptance import AcceptancePolicy, Noise, Standing, TrialKey, night_noise
from research_loop.hygiene import plain_lines
from research_loop.night.folders import PROGRAM_FILE, Workspace
from research_loop.night.opening import NightFiles
from research_loop.night.progress import Progress
from research_loop.night.stopping import Budget, StopControl
from research_loop.records import current_state as state
from research_loop.records.run_record import RunRecord
from research_loop.redact import redact
from research_loop.safe_io import read_tail, read_text, write_atomically

RECENT_ROWS = 20  # rows of results.tsv shown to the agent
MAX_SECTION_CHARS = 60_000  # a prompt section past this is cut (a huge train.py output cannot flood the prompt)


def clipped(text: str) -> str:
    return text if len(text) <= MAX_SECTION_CHARS else text[:MAX_SECTION_CHARS] + "\n[... cut here ...]"


@dataclass
class Session:
    ws: Workspace
    files: NightFiles
    agent: Agent
    policy: AcceptancePolicy
    keys: list[TrialKey]
    replicates: list[TrialKey]  # the baseline's extra trials (cross-validation: each fold on a second seed)
    stop: StopControl
    budget: Budget
    progress: Progress
    tracker: object
    executor: object
    close_after: int = 5
    check_duplicates: bool = True
    records: list[RunRecord] = field(default_factory=list)
    seen: dict[str, RunRecord] = field(default_factory=dict)  # train.py's syntax tree -> the run that ran it
    allocated: int = -1  # the highest run number handed out this session
    last_failure_tail: str | None = None
    noise_floor: float = 0.0

    @property
    def unit(self) -> str:
        return "fold" if self.keys[0][1] is not None else "seed"

    @property
    def full_trials(self) -> int:
        return min(self.policy.trials, len(self.keys))

    def best(self) -> RunRecord | None:
        return state.best_record(self.records)

    def baseline(self) -> RunRecord | None:
        return state.baseline_record(self.records)

    def next_run(self) -> int:
        known = [record.run for record in self.records] + list(self.files.git.run_refs(self.ws.tag)) + [self.allocated]
        self.allocated = max(known, default=-1) + 1
        return self.allocated

    # ----- noise and the comparison -----

    def noise(self) -> Noise:
        return night_noise(self.policy, self.records, self.full_trials, self.files.calibration, self.noise_floor)

    def standing(self) -> Standing:
        best = self.best()
        return Standing(best=best.scores_by_trial() if best else None, noise=self.noise())

    def noise_line(self) -> str:
        if self.baseline() is None:
            return ""
        noise = self.noise()
        what = "paired differences" if self.policy.paired else "strict F1 between trials"
        line = f"Noise (sd of {what}): {noise.describe()}"
        detectable = self.policy.detectable_gain(noise.sd)
        if detectable is not None:
            line += f"; the smallest gain kept 80% of the time: {detectable:+.4f}"
        return line + "."

    # ----- what the agent sees -----

    def closed_directions(self) -> set[str]:
        reopened = state.reopened_directions(read_text(self.ws.repo / PROGRAM_FILE, default=""))
        return state.closed_directions(self.records, self.close_after, reopened, self.full_trials)

    def remember(self, record: RunRecord) -> None:
        if record.status.ran and record.commit and self.files.git.exists(record.commit):
            try:
                self.seen.setdefault(normalised(self.files.git.show(record.commit)), record)
            except (KeyError, ValueError, SyntaxError, UnicodeDecodeError):
                pass

    def recent_results(self) -> str:
        lines = read_text(self.ws.results_path, default="").splitlines()
        return "\n".join(lines[:1] + lines[1:][-RECENT_ROWS:])

    def context(self, train_py: str, feedback: str | None, in_flight: list[str]) -> Context:
        last = self.records[-1] if self.records else None
        log = self.ws.run_dir(last.run) / "run.log" if last else None
        failed = last is not None and last.status.failed
        task_card = read_text(self.ws.repo / "data" / "task.md", default="")
        return Context(
            repo=self.ws.repo, program_md=read_text(self.ws.repo / PROGRAM_FILE, default=""),
            current_state_md=clipped(redact(read_text(self.ws.state_path, default=""))),
            recent_results=clipped(redact(self.recent_results())), train_py=train_py,
            last_log_path=log if log is not None and log.is_file() else None,
            last_log_tail=plain_lines(redact(self.last_failure_tail or read_tail(log))) if failed and log else None,
            feedback=clipped(redact(feedback)) if feedback else None, in_flight=in_flight,
            task_card=clipped(redact(task_card)),
            runs_so_far=len(self.records))

    def trial_folders(self, record: RunRecord) -> dict:
        return diagnostics.run_folders(self.ws, record)

    def write_state(self, in_flight: list[str]) -> None:
        best = self.best()
        budget = self.budget
        budget.hours = self.stop.hours
        limits = [f"runs {budget.runs}" + (f" of {budget.max_runs}" if budget.max_runs else ""),
                  f"hours {budget.hours:.2f}" + (f" of {budget.max_hours:g}" if budget.max_hours else ""),
                  f"cost ${budget.cost_usd:.2f}" + (" (and some not priced)" if budget.cost_unknown else "")
                  + (f" of ${budget.max_cost_usd:g}" if budget.max_cost_usd else "")]
        night = self.ws.night()
        evaluation = (f"{night.get('folds')}-fold cross-validation over train and val" if self.unit == "fold"
                      else "val")
        pairing = " paired" if self.policy.paired else ""
        policy_line = (f"Acceptance: {self.policy.name}{pairing} ({self.full_trials} {self.unit}s; strict F1 on "
                       f"{evaluation}).")
        run_budget = night.get("run_budget_s")
        view = state.StateView(
            tag=self.ws.tag, policy_line=policy_line, noise_line=self.noise_line(),
            sandbox_line=("UNSANDBOXED: train.py runs with the user's full powers." if self.files.backend == "none"
                          else ""),
            run_budget_line=(f"Every run gets the same wall-clock budget of {run_budget / 60:g} minutes: train.py "
                             "gets the deadline and stops training in time; longer training costs epochs, not "
                             "time (see the epochs column)." if run_budget else ""),
            budget_line="; ".join(limits) + ".",
            best_train_py=self.files.git.show(best.commit) if best else None,
            entity_types=self.files.entity_types, closed=self.closed_directions(), close_after=self.close_after,
            full_trials=self.full_trials, unit=self.unit, in_flight=in_flight,
            diagnostics_lines=diagnostics.state_lines(self.records, self.trial_folders, self.keys,
                                                      self.files.entity_types, self.unit))
        write_atomically(self.ws.state_path, state.render(self.records, view))

