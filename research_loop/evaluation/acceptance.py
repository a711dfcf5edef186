"""Acceptance policies: which trials (seeds, or CV folds) a run needs next, and then keep or discard.

A run's trials are planned by the night (`TrialKey`s: (seed, fold)); trial j of a candidate is paired with
trial j of the best. `Monotonic` is the seeds' rule (one trial, keep when better). `Confirm` (the default)
screens on the first trial (a candidate not ahead of the best there is discarded after one run), runs the
others (all at once, when there are workers), and keeps the candidate only when its gain beats a margin set
by the night's measured noise: paired, a one-sided z test on the mean per-trial difference; unpaired, on
the difference of means. The noise can never be zero: its floor is one gold span's worth of F1 on one
trial's scored rows. bench/acceptance_sim.py measures the policies: false keeps, power, runs per proposal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist, mean
from typing import Protocol

POWER = 0.8  # the detection probability "smallest detectable gain" refers to
LOGGED_DECIMALS = 6  # results.tsv's precision (run_record.py writes f"{score:.6f}")
MIN_PAIRED_DF = 4  # measured paired noise replaces the prior once it has this many degrees of freedom
TrialKey = tuple[int, int | None]  # (seed, fold)


@dataclass(frozen=True)
class Noise:
    """The sd the margin is built from (of one trial's score, or of one paired difference) and its origin."""

    sd: float
    df: int
    floor: float
    source: str  # e.g. "measured on 12 paired differences", "prior", "floor"

    def describe(self) -> str:
        return f"{self.sd:.4f} ({self.source}; floor {self.floor:.4f})"


@dataclass(frozen=True)
class Standing:
    """What a run is compared with: the best run's per-trial scores, and the night's noise."""

    best: dict[TrialKey, float] | None = None
    noise: Noise | None = None


@dataclass(frozen=True)
class Verdict:
    action: str  # "run" (the trials in `run`), "keep" or "discard"
    run: tuple[int, ...] = ()
    reason: str = ""


class AcceptancePolicy(Protocol):
    """What the loop asks of a policy; a new one is a class with these and an entry in POLICIES."""

    name: str
    trials: int  # trials a confirmed run (and the baseline) gets
    paired: bool  # compares trial by trial with the best (so a cross-validated baseline measures replicates)
    screens: bool  # a first trial screens, the rest confirm (so only a confirming trial predicts test rows)

    def detectable_gain(self, sd: float) -> float | None:
        """The true gain kept with probability POWER at noise sd; None when the policy has no such figure."""

    def decide(self, scores: dict[int, float], keys: list[TrialKey], standing: Standing) -> Verdict: ...


def logged(score: float) -> float:
    """A score as results.tsv holds it (round() and "%.6f" round the same binary value the same way)."""
    return round(score, LOGGED_DECIMALS)


def like_for_like(scores: dict[int, float], standing: Standing) -> tuple[dict[int, float], Standing]:
    """The candidate's and the best's scores at the precision results.tsv logs, so a comparison reads the same
    whether the best is a record in memory (full precision) or one read back after a resume (6 decimals): a
    tie stays a tie. Every policy compares through this, and only through this."""
    best = None if standing.best is None else {key: logged(value) for key, value in standing.best.items()}
    return {index: logged(value) for index, value in scores.items()}, Standing(best, standing.noise)


def _mean_best(standing: Standing) -> float:
    return logged(mean(standing.best.values()))


@dataclass(frozen=True)
class Monotonic:
    """One trial per run; keep when its strict F1 beats the best's mean (the baseline is kept)."""

    name: str = "monotonic"
    trials: int = 1
    paired: bool = False
    screens: bool = False

    def detectable_gain(self, sd: float) -> float | None:
        return None  # one trial, any gain: no figure to give

    def decide(self, scores: dict[int, float], keys: list[TrialKey], standing: Standing) -> Verdict:
        scores, standing = like_for_like(scores, standing)
        if 0 not in scores:
            return Verdict("run", (0,))
        if standing.best is None:
            return Verdict("keep", reason="baseline")
        best = _mean_best(standing)
        if scores[0] > best:
            return Verdict("keep", reason=f"{scores[0]:.4f} > best {best:.4f}")
        return Verdict("discard", reason=f"{scores[0]:.4f} <= best {best:.4f}")


@dataclass(frozen=True)
class Confirm:
    """Screen on trial 1, confirm on all `trials`, keep only a gain beyond z(1 - alpha) standard errors."""

    trials: int = 3
    min_delta: float = 0.0
    alpha: float = 0.01
    paired: bool = True
    name: str = "confirm"
    screens: bool = True

    def margin(self, n: int, n_best: int, sd: float) -> float:
        """The smallest gain that counts for means over n (and n_best) trials."""
        z = NormalDist().inv_cdf(1 - self.alpha)
        spread = sd / math.sqrt(n) if self.paired else sd * math.sqrt(1 / n + 1 / n_best)
        return max(self.min_delta, z * spread)

    def detectable_gain(self, sd: float) -> float:
        """The true gain this policy keeps with probability POWER (the screen aside)."""
        k = self.trials
        spread = sd / math.sqrt(k) if self.paired else sd * math.sqrt(2 / k)
        return self.margin(k, k, sd) + NormalDist().inv_cdf(POWER) * spread

    def decide(self, scores: dict[int, float], keys: list[TrialKey], standing: Standing) -> Verdict:
        scores, standing = like_for_like(scores, standing)
        if standing.best is None:  # the baseline: every trial it was given (replicates too), to measure the noise
            missing = tuple(index for index in range(len(keys)) if index not in scores)
            return Verdict("run", missing) if missing else Verdict("keep", reason=f"baseline over {len(keys)} trials")
        planned = min(self.trials, len(keys))
        missing = tuple(index for index in range(planned) if index not in scores)
        if 0 not in scores:
            return Verdict("run", (0,))
        first_best = standing.best.get(keys[0])
        if first_best is None:
            raise ValueError(f"the best run has no score for trial {keys[0]}")
        if scores[0] <= first_best:
            return Verdict("discard", reason=f"{_label(keys[0])}: {scores[0]:.4f} <= best {first_best:.4f}")
        if missing:
            return Verdict("run", missing)
        if self.paired:
            differences = [scores[index] - standing.best[keys[index]] for index in range(planned)]
            gain = mean(differences)
            what = f"mean paired gain {gain:+.4f}"
        else:
            gain = mean(scores[index] for index in range(planned)) - _mean_best(standing)
            what = f"mean gain {gain:+.4f}"
        margin = self.margin(planned, len(standing.best), standing.noise.sd)
        verdict = "keep" if gain > margin else "discard"
        sign = ">" if verdict == "keep" else "<="
        return Verdict(verdict, reason=f"{what} {sign} margin {margin:.4f} over {planned} trials")


def _label(key: TrialKey) -> str:
    seed, fold = key
    return f"fold {fold}" if fold is not None else f"seed {seed}"


def pooled_sd(groups: list[list[float]]) -> tuple[float | None, int]:
    """Pooled within-group sd over groups of two or more values, and its degrees of freedom."""
    squares, df = 0.0, 0
    for values in groups:
        if len(values) >= 2:
            centre = mean(values)
            squares += sum((value - centre) ** 2 for value in values)
            df += len(values) - 1
    return (math.sqrt(squares / df), df) if df else (None, 0)


def estimate_noise(policy: AcceptancePolicy, baseline: list[float], confirmed_scores: list[list[float]],
                   confirmed_differences: list[list[float]], calibration: list[float], floor: float,
                   replicate_differences: list[float] = ()) -> Noise:
    """The night's noise for the policy's comparisons.

    Unpaired: the pooled sd of trial scores within a run (calibration, the baseline, and confirmed runs'
    trials after the first: the first passed a screen, so it is biased upwards). Paired: the pooled sd of
    confirmed runs' paired differences (again without the first); until that has MIN_PAIRED_DF degrees of
    freedom, the prior sqrt(2) x the unpaired sd, which assumes no help from pairing. A cross-validated
    baseline's second-seed trials give paired differences of their own (replicate_differences). Never below
    `floor`."""
    unpaired, unpaired_df = pooled_sd([calibration, baseline, *(scores[1:] for scores in confirmed_scores)])
    if policy.paired:
        groups = [differences[1:] for differences in confirmed_differences] + [list(replicate_differences)]
        measured, df = pooled_sd(groups)
        if measured is not None and df >= MIN_PAIRED_DF:
            sd, source = measured, f"measured on {df} degrees of freedom of paired differences"
        elif unpaired is not None:
            sd, df, source = math.sqrt(2) * unpaired, unpaired_df, "prior: sqrt(2) x the seed sd, until pairs are measured"
        else:
            sd, df, source = 0.0, 0, "not measured yet"
    else:
        sd, df = unpaired or 0.0, unpaired_df
        source = f"measured on {df} degrees of freedom" if unpaired is not None else "not measured yet"
    if sd < floor:
        return Noise(floor, df, floor, f"floor: one gold span of a trial's rows (measured {sd:.4f})")
    return Noise(sd, df, floor, source)


def make_policy(name: str, trials: int = 3, min_delta: float = 0.0, alpha: float = 0.01,
                paired: bool = True) -> AcceptancePolicy:
    """The policy for --policy / --seeds (or --folds) / --min-delta, from POLICIES."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}: choose {' or '.join(POLICIES)}")
    return POLICIES[name](trials=trials, min_delta=min_delta, alpha=alpha, paired=paired)


def _confirm(trials: int, min_delta: float, alpha: float, paired: bool) -> Confirm:
    if trials < 2:
        raise ValueError("--policy confirm needs 2 or more seeds (or folds)")
    return Confirm(trials=trials, min_delta=min_delta, alpha=alpha, paired=paired)


# --policy NAME -> a builder taking (trials, min_delta, alpha, paired); a new policy is one more line here.
POLICIES: dict[str, Callable[..., AcceptancePolicy]] = {
    "confirm": _confirm,
    "monotonic": lambda **_: Monotonic(),
}


def night_noise(policy: AcceptancePolicy, records: list, full_trials: int, calibration: list[float],
                floor: float) -> Noise:
    """The night's noise from its records (results.tsv rows): the baseline's trials (and, in cross-validation,
    its second-seed replicates of each fold), calibration, and every confirmed run's trials and paired
    differences against the best it was compared with."""
    kept, reference = {}, None
    scores, differences = [], []
    for record in records:
        if record.status.value in ("keep", "discard") and record.trials >= full_trials:
            compared = kept.get(record.parent) or reference
            scores.append(record.seed_scores)
            if compared is not None:
                base = compared.scores_by_trial()
                differences.append([score - base[key] for key, score in record.scores_by_trial().items()
                                    if key in base])
        if record.status.kept:
            kept[record.commit] = reference = record
    baseline = next((record for record in records if record.status.value == "baseline"), None)
    replicates = []
    if baseline is not None:
        first_of_fold = {}
        for (seed, fold), score in baseline.scores_by_trial().items():
            if fold is None:
                continue
            if fold in first_of_fold:
                replicates.append(score - first_of_fold[fold])
            else:
                first_of_fold[fold] = score
    main = baseline.seed_scores[:full_trials] if baseline is not None else []
    return estimate_noise(policy, main, scores, differences, calibration, floor, replicates)
