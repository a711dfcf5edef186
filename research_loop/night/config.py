"""What shapes one night, in one type: built once from the command line (cli.commands.build_config), or by a
caller of run_loop, and read by every stage: opening, the scheduler, dispatch, the proposal source.

Durations are in seconds here; the command line takes minutes and converts them once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from research_loop.evaluation.acceptance import AcceptancePolicy, Monotonic, TrialKey
from research_loop.execution.sandbox import Limits
from research_loop.records.run_record import RunRecord
from research_loop.records.tracking import NullTracker


@dataclass
class NightConfig:
    repo: Path
    tag: str
    agent: str = ""  # the agent's name (the registry's key), for night.json and the tracker
    writes_code: bool = True  # the agent writes train.py (an LLM): running it unsandboxed needs --no-sandbox
    settings: list[tuple[str, object]] = field(default_factory=list)  # --set NAME=VALUE (a new night)
    train_options: tuple[str, ...] = ()  # loop-owned train.py options (--limit N, --device D)
    # ----- the evaluation plan: fixed when the night starts, kept when it resumes
    eval_mode: str = "val"  # val | cv
    folds: int = 5
    seeds: tuple[int, ...] = (42, 43, 44)
    split_seed: int = 2026
    policy: AcceptancePolicy = field(default_factory=Monotonic)
    run_budget_s: float | None = None  # every run's wall-clock budget (train.py gets the deadline)
    # ----- budgets of this session
    max_runs: int | None = None  # rows this session (baseline and invalid ones included)
    max_hours: float | None = None
    max_cost_usd: float | None = None
    # ----- jobs
    timeout_s: float | None = None  # per job; None: 3x the baseline's per-trial time, at least min_timeout_s
    min_timeout_s: float = 600.0
    baseline_timeout_s: float = 7200.0
    kill_grace_s: float = 10.0
    sandbox: str = "auto"  # a key of execution.sandbox.SANDBOXES, or auto
    allow_unsandboxed: bool = False  # --no-sandbox, or an agent that writes no code (builtin, null, optuna)
    limits: Limits = field(default_factory=Limits)
    workers: int = 1
    lookahead: int = 1  # proposals prepared ahead of the free workers (0: strictly one after another)
    ray_address: str | None = None
    # ----- proposals
    check_duplicates: bool = True
    max_bounces: int = 3
    close_after: int = 5
    agent_retry_s: float = 60.0
    agent_max_failures: int = 8
    agent_patience_s: float = 1800.0  # stop the night when the agent stayed unreachable this long
    # ----- the branch
    base: str | None = None  # a new night's base commit (None: HEAD); a night never starts from another's tip
    from_branch: str | None = None  # the branch checked out before the night (the end line names it)
    progress: bool = True
    tracker: object = field(default_factory=NullTracker)

    def timeout(self, records: list[RunRecord], is_baseline: bool) -> float:
        """A job's wall-clock limit: the given one; else the run budget plus slack; else 3x the baseline's
        per-trial time (at least min_timeout_s); before any baseline, baseline_timeout_s."""
        if self.timeout_s:
            return self.timeout_s
        if self.run_budget_s:  # train.py was told the deadline: past it is an overrun
            return self.run_budget_s + max(5.0, 0.1 * self.run_budget_s)
        baseline = None if is_baseline else next((r for r in records if r.status.value == "baseline"), None)
        if baseline is None or not baseline.seconds or not baseline.trials:
            return self.baseline_timeout_s
        return max(self.min_timeout_s, 3 * baseline.seconds / baseline.trials)

    def trial_keys(self) -> list[TrialKey]:
        """The night's trial plan: seeds on val, or one seed per fold in cross-validation."""
        if self.eval_mode == "cv":
            return [(self.seeds[0], fold) for fold in range(self.folds)]
        return [(seed, None) for seed in self.seeds]

    def replicate_keys(self) -> list[TrialKey]:
        """Extra baseline trials that measure the noise a paired comparison faces: in cross-validation, every
        fold again on a second seed (the baseline's folds differ in difficulty, so their spread is not noise)."""
        if self.eval_mode == "cv":
            return [(self.seeds[0] + 1, fold) for fold in range(self.folds)]
        return []
