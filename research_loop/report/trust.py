"""The night's best against the baseline, and how far to trust its gain.

Pure functions over numbers and records (the report reads the files):
- Comparison: strict (mean ± sd over trials), relaxed and per-type F1 of both runs, on val and the holdout.
- Paired gain: best minus baseline on the same (seed, fold) trials; mean ± t(0.975, n-1) x sd / sqrt(n).
- Per-fold gains (cross-validation): the same differences, one per fold.
- Holdout gain: a paired bootstrap over holdout rows (the same resampled rows for both runs).
- Shrinkage: selection gain, holdout gain, and the optimism expected from keeping the best of N proposals.
- Warnings: val running ahead of the holdout, many crashes, a budget, a plateau, no sandbox, an unknown cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from statistics import mean, stdev

import numpy as np
from scipy.integrate import trapezoid
from scipy.stats import norm, t  # scipy comes with seqeval (through scikit-learn)

from research_loop.evaluation.acceptance import Noise, make_policy
from research_loop.evaluation.acceptance import night_noise as acceptance_night_noise
from research_loop.records.run_record import RunRecord, Status

PLATEAU_RUNS = 15  # no keep in this many runs is a plateau
CRASH_SHARE = 0.25  # more failed runs than this share is worth a warning
OVERFIT_SDS = 2.0  # val gain ahead of holdout gain by more than this many baseline sds
CONFIDENCE = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 2026
TrialKey = tuple[int, int | None]


# ----- The best against the baseline -----


@dataclass(frozen=True)
class Score:
    """An F1: the mean over trials (CV: pooled over the folds), their sd (None for one trial), the trial count."""

    mean: float
    sd: float | None = None
    trials: int = 1


@dataclass(frozen=True)
class Comparison:
    """One metric of the best run against the baseline, on val (or CV) and on the blind holdout."""

    metric: str
    baseline_val: Score | None
    best_val: Score | None
    baseline_holdout: Score | None
    best_holdout: Score | None

    @property
    def val_gain(self) -> float | None:
        return self.best_val.mean - self.baseline_val.mean if self.best_val and self.baseline_val else None

    @property
    def holdout_gain(self) -> float | None:
        return self.best_holdout.mean - self.baseline_holdout.mean if self.best_holdout and self.baseline_holdout else None


def holdout_entry(entries: list[dict], run: int | None) -> dict | None:
    """The holdout scoring of a run: its "final" one when there is one, else the latest."""
    mine = [entry for entry in entries if run is not None and str(entry.get("run")) == str(run)]
    return ([entry for entry in mine if entry.get("role") == "final"] or mine or [None])[-1]


def as_score(value, trials: int, sd: float | None = None) -> Score | None:
    """An F1 with its trial count (None for a missing value)."""
    return None if value is None else Score(float(value), sd, max(trials, 1))


def compare(best: RunRecord | None, baseline: RunRecord | None, entries: list[dict],
            entity_types: list[str]) -> list[Comparison]:
    """Strict (mean ± sd over trials), relaxed and per-type F1 of the best against the baseline, val and holdout."""

    def val(record: RunRecord | None, metric: str, name: str | None = None) -> Score | None:
        if record is None:
            return None
        value = record.per_type.get(name) if name else getattr(record, metric)
        return as_score(value, record.trials, record.strict_f1_sd if metric == "strict_f1" and not name else None)

    def held(record: RunRecord | None, metric: str, name: str | None = None) -> Score | None:
        entry = holdout_entry(entries, record.run if record else None) or {}
        value = (entry.get("per_type") or {}).get(name) if name else entry.get(metric)
        trials = [float(f1) for f1 in entry.get("seed_scores") or []]
        sd = stdev(trials) if metric == "strict_f1" and not name and len(trials) > 1 else None
        return as_score(value, len(trials), sd)

    rows = [("strict F1", "strict_f1", None), ("relaxed F1", "relaxed_f1", None),
            *((f"strict F1 {name}", "strict_f1", name) for name in entity_types)]
    return [Comparison(label, val(baseline, metric, name), val(best, metric, name), held(baseline, metric, name),
                       held(best, metric, name)) for label, metric, name in rows]


# ----- How far to trust the gain: paired trials -----


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided interval (None when there is too little to build one)."""

    estimate: float
    low: float | None = None
    high: float | None = None
    n: int = 1  # paired trials, or holdout rows for the bootstrap

    def contains(self, value: float) -> bool:
        return self.low is not None and self.low <= value <= self.high


@dataclass(frozen=True)
class Shrinkage:
    """The selection gain next to the holdout gain, and the optimism expected from picking a maximum.

    optimism = sigma_gain x E[max of N standard normals], with sigma_gain = the night's noise sd (of one paired
    difference) / sqrt(the best's trials) and N = the proposals that got a score (keeps and discards; a crash
    cannot be chosen). If none of the N had a real effect, the best of their measured gains would still average
    this much above zero: a rough guide to how much of the selection gain is luck, not a correction."""

    selection_gain: float
    holdout_gain: float | None
    proposals: int
    sigma_gain: float
    expected_max: float

    @property
    def optimism(self) -> float:
        return self.sigma_gain * self.expected_max

    @property
    def shrunk_gain(self) -> float:
        return self.selection_gain - self.optimism


@dataclass
class Trust:
    """What the report says under "How far to trust it"; `missing` says which parts could not be said."""

    paired: Interval | None = None
    fold_gains: list[tuple[int, float]] = field(default_factory=list)
    holdout: Interval | None = None
    shrinkage: Shrinkage | None = None
    noise: Noise | None = None
    missing: list[str] = field(default_factory=list)


def paired_differences(best: dict[TrialKey, float], baseline: dict[TrialKey, float]) -> dict[TrialKey, float]:
    """best minus baseline on the trials both ran, in the best's trial order."""
    return {key: score - baseline[key] for key, score in best.items() if key in baseline}


def t_interval(differences: list[float], confidence: float = CONFIDENCE) -> Interval:
    """mean ± t(1 - (1 - confidence) / 2, n - 1) x sd / sqrt(n); no interval for fewer than two values."""
    if not differences:
        raise ValueError("a paired gain needs at least one pair")
    centre = mean(differences)
    if len(differences) < 2:
        return Interval(centre, n=1)
    quantile = float(t.ppf(1 - (1 - confidence) / 2, len(differences) - 1))
    half = quantile * stdev(differences) / math.sqrt(len(differences))
    return Interval(centre, centre - half, centre + half, len(differences))


def fold_gains(differences: dict[TrialKey, float]) -> list[tuple[int, float]]:
    """(fold, gain) for cross-validation trials; [] on val."""
    return [(fold, gain) for (_, fold), gain in differences.items() if fold is not None]


# ----- The holdout gain: a paired bootstrap over rows -----


def span_counts(gold: dict[str, list[str]], predicted: dict[str, list[str]], spans) -> np.ndarray:
    """Per gold row (in gold's order): (exact span matches, predicted spans, gold spans) under `spans`
    (evaluate.spans, the scorer's own reading of BIO tags)."""
    counts = []
    for row_id, gold_tags in gold.items():
        gold_spans, predicted_spans = spans(gold_tags), spans(predicted[row_id])
        counts.append((len(set(gold_spans) & set(predicted_spans)), len(predicted_spans), len(gold_spans)))
    return np.array(counts, dtype=float).reshape(-1, 3)


def strict_f1(totals: np.ndarray) -> np.ndarray:
    """Micro F1 from summed (hits, predicted, gold) counts, last axis: 2h / (p + g), 0 where p + g is 0. It
    equals evaluate.py's 2PR / (P + R) with its zero-division rule."""
    hits, predicted, gold = totals[..., 0], totals[..., 1], totals[..., 2]
    denominator = predicted + gold
    return np.divide(2 * hits, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def bootstrap_gain(best: list[np.ndarray], baseline: list[np.ndarray], resamples: int = RESAMPLES,
                   seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> Interval:
    """The holdout gain (mean strict F1 over the best's trials minus the baseline's) with a percentile interval.

    Each array holds one trial's span_counts over the same rows. A resample draws the rows with replacement;
    strict F1 is micro-averaged, so a resample's F1 is the F1 of its summed counts (what score_rows gives for
    the resampled rows). Both runs see the same resamples (paired); seeded, so the interval is reproducible."""
    rows = len(best[0])
    if rows == 0 or any(len(counts) != rows for counts in [*best, *baseline]):
        raise ValueError("every trial needs counts for the same, non-empty set of holdout rows")

    def gain(weights: np.ndarray) -> np.ndarray:
        def mean_f1(trials):
            return np.mean([strict_f1(weights @ counts) for counts in trials], axis=0)
        return mean_f1(best) - mean_f1(baseline)

    draws = np.random.default_rng(seed).multinomial(rows, np.full(rows, 1 / rows), size=resamples).astype(float)
    gains = gain(draws)
    tail = (1 - confidence) / 2
    low, high = np.quantile(gains, [tail, 1 - tail])
    return Interval(float(gain(np.ones(rows))), float(low), float(high), rows)


# ----- The night's noise and the optimism of a choice -----


def night_noise(records: list[RunRecord], full_trials: int, calibration: list[float], floor: float) -> Noise:
    """The sd of one paired difference, estimated as the loop's confirm policy does from the night's records."""
    policy = make_policy("confirm", trials=max(2, full_trials), paired=True)
    return acceptance_night_noise(policy, records, full_trials, calibration, floor)


def expected_max_normal(n: int) -> float:
    """E[max of n independent standard normals] = the integral of x n phi(x) Phi(x)^(n-1) dx (0 for n = 1)."""
    if n < 1:
        raise ValueError("the maximum of no draws is undefined")
    x = np.linspace(-12.0, 12.0, 96_001)
    density = n * norm.pdf(x) * norm.cdf(x) ** (n - 1)
    return float(trapezoid(x * density, x))


def shrinkage(selection_gain: float, holdout_gain: float | None, proposals: int, noise_sd: float,
              trials: int) -> Shrinkage:
    """See Shrinkage: sigma_gain = noise_sd / sqrt(trials) (noise_sd: of one paired difference)."""
    return Shrinkage(selection_gain, holdout_gain, proposals, noise_sd / math.sqrt(max(trials, 1)),
                     expected_max_normal(max(proposals, 1)))


def assess(best: RunRecord | None, baseline: RunRecord | None, records: list[RunRecord], noise: Noise | None,
           holdout: Interval | None, holdout_gain: float | None, holdout_missing: str | None) -> Trust:
    """The trust section from the records, the night's noise, the holdout gain and its bootstrap interval (or
    why it is missing)."""
    trust = Trust(noise=noise, holdout=holdout)
    if holdout_missing:
        trust.missing.append(holdout_missing)
    if baseline is None or best is None or best is baseline:
        trust.missing.insert(0, "no keep: the baseline is still the best, so there is no gain to trust"
                             if baseline is not None else "no baseline run: nothing to compare with")
        return trust
    differences = paired_differences(best.scores_by_trial(), baseline.scores_by_trial())
    if differences:
        trust.paired = t_interval(list(differences.values()))
        trust.fold_gains = fold_gains(differences)
    if len(differences) < 2:
        trust.missing.append(f"the best and the baseline share {len(differences)} trial(s): no paired interval "
                             "(a one-trial baseline, or a policy that runs one trial)")
    proposals = sum(record.status in (Status.KEEP, Status.DISCARD) for record in records)
    if noise is not None and best.strict_f1 is not None and baseline.strict_f1 is not None:
        trust.shrinkage = shrinkage(best.strict_f1 - baseline.strict_f1, holdout_gain,
                                    proposals, noise.sd, best.trials)
    return trust


# ----- Warnings: what to be wary of before believing the night -----


@dataclass(frozen=True)
class Alert:
    kind: str  # overfit, crashes, budget, stopped, plateau, unsandboxed, unpriced
    message: str


def overfit_alert(val_gain: float | None, holdout_gain: float | None, baseline_sd: float | None,
                  floor: float = 0.0) -> Alert | None:
    """Val gains running ahead of holdout gains by more than 2 sd of the baseline's trials (at least the floor)."""
    if val_gain is None or holdout_gain is None or baseline_sd is None:
        return None
    margin = OVERFIT_SDS * max(baseline_sd, floor)
    if val_gain - holdout_gain <= margin:
        return None
    return Alert("overfit", f"overfitting val? the best run gains {val_gain:+.4f} strict F1 on val but "
                            f"{holdout_gain:+.4f} on the blind holdout (more than {OVERFIT_SDS:g} sd = {margin:.4f} apart)")


def crash_alert(crashes: int, runs: int) -> Alert | None:
    if not runs or crashes / runs <= CRASH_SHARE:
        return None
    return Alert("crashes", f"many failed runs: {crashes} of {runs} crashed or timed out ({crashes / runs:.0%}); "
                            "see the logs under runs/")


# How a night ends as planned (stopping.py's reasons): a budget the user set, or the STOP file. Not a warning;
# the summary's "stopped" line says it. --max-cost-usd stays a warning: the agent's spending ended the night.
PLANNED_STOPS = ("--max-runs reached", "--max-hours reached", "stopped by the STOP file")


def stop_alert(reason: str | None) -> Alert | None:
    if not reason or reason.startswith(PLANNED_STOPS):
        return None
    return Alert("budget" if "reached" in reason else "stopped", f"stopped: {reason}")


def collapse_alert(runs: tuple[int, ...] | list[int]) -> Alert | None:
    """The all-O collapse: runs that predicted no span at all (a score of 0 that says nothing about the idea)."""
    if not runs:
        return None
    listed = ", ".join(map(str, runs))
    return Alert("collapse", f"all-O collapse: {len(runs)} run{'s' if len(runs) != 1 else ''} predicted no span at "
                             f"all (run{'s' if len(runs) != 1 else ''} {listed}); see {'their' if len(runs) != 1 else 'its'} run.log")


def plateau_alert(kept: list[bool], stamps: list[datetime | None], wall_seconds: float) -> Alert | None:
    """No keep (baseline or keep) in the last 15 runs, or none in the last third of the night (3+ runs, by time)."""
    since_keep = len(kept) - 1 - max(index for index, flag in enumerate(kept) if flag) if any(kept) else len(kept)
    if since_keep >= PLATEAU_RUNS:
        return Alert("plateau", f"plateau: no keep in the last {since_keep} runs")
    if not wall_seconds or not stamps or stamps[-1] is None:
        return None
    last_third = [flag for flag, stamp in zip(kept, stamps)
                  if stamp is not None and (stamps[-1] - stamp).total_seconds() < wall_seconds / 3]
    if len(last_third) >= 3 and not any(last_third):
        return Alert("plateau", f"plateau: no keep in the last third of the night ({len(last_third)} runs)")
    return None


def exposure_alerts(unsandboxed_runs: int, unpriced_runs: int, known_cost_usd: float) -> list[Alert]:
    """Runs without a sandbox, and runs whose LLM cost is unknown."""
    found = []
    if unsandboxed_runs:
        found.append(Alert("unsandboxed", f"UNSANDBOXED: {unsandboxed_runs} run(s) ran train.py with your user's "
                                          "full powers (sandbox none)"))
    if unpriced_runs:
        known = f"the night cost at least ${known_cost_usd:.2f}" if known_cost_usd > 0 else "no priced calls"
        found.append(Alert("unpriced", f"LLM cost unknown for {unpriced_runs} run(s) (an unpriced model): {known}"))
    return found
