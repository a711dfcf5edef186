"""Acceptance policies: after each seed of a run, say whether to run another seed, keep, or discard.

The loop asks `policy.decide(scores, standing)` with the strict F1 of every seed run so far (none yet at
the start of a run). A policy that wants several seeds (a later `Confirm`: one seed, more only when ahead,
keep when the mean beats the best mean by a noise margin) fits the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Protocol


@dataclass(frozen=True)
class Standing:
    """What a run is compared with: the seed scores of the best run and of the baseline (None before)."""

    best_scores: list[float] | None = None
    baseline_scores: list[float] | None = None


@dataclass(frozen=True)
class Verdict:
    action: str  # "run" (another seed: `seed`), "keep" or "discard"
    seed: int | None = None
    reason: str = ""


class AcceptancePolicy(Protocol):
    name: str

    def decide(self, scores: list[float], standing: Standing) -> Verdict: ...


@dataclass(frozen=True)
class Monotonic:
    """One seed per run; keep when its strict F1 on val beats the best so far (the baseline is kept)."""

    seed: int = 42
    name: str = "monotonic"

    def decide(self, scores: list[float], standing: Standing) -> Verdict:
        if not scores:
            return Verdict("run", seed=self.seed)
        if standing.best_scores is None:
            return Verdict("keep", reason="baseline")
        best = mean(standing.best_scores)
        if scores[0] > best:
            return Verdict("keep", reason=f"{scores[0]:.4f} > best {best:.4f}")
        return Verdict("discard", reason=f"{scores[0]:.4f} <= best {best:.4f}")
