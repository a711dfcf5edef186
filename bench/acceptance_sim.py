"""How often does each acceptance policy keep noise, find a real gain, and what does it cost in GPU runs?

A simulated night: every run's val strict F1 = the candidate's true quality + Gaussian seed noise (sd
taken from `agent_loop.py calibrate`, or given). The policies are the loop's own objects, driven the
way the loop drives them. Prints one table per noise level:

    python bench/acceptance_sim.py                       # sd 0.005 .. 0.03
    python bench/acceptance_sim.py --sd 0.012 --nights 4000
    python bench/acceptance_sim.py --calibration runs/<tag>/calibration.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from research_loop.acceptance import Monotonic, Standing, make_policy, pooled_noise

TRUE_GAIN = 0.03  # the real improvement whose acceptance rate the issue asks about
GAIN_POSITIONS = (1, 10, 50, 90)  # where in the night the real change is proposed


def run_candidate(policy, quality: float, standing: Standing, sd: float, rng) -> tuple[str, list[float]]:
    """Ask the policy seed by seed, as the loop does; return the verdict and the seed scores."""
    scores: list[float] = []
    while True:
        verdict = policy.decide(scores, standing)
        if verdict.action != "run":
            return verdict.action, scores
        scores.append(quality + rng.normal(0.0, sd))


def simulate_night(policy, gains: list[float], sd: float, rng) -> dict:
    """One night: a baseline, then one candidate per entry of `gains` (its true gain over the best)."""
    _, baseline = run_candidate(policy, 0.0, Standing(), sd, rng)
    best_quality, best_scores, all_scores = 0.0, baseline, [baseline]
    runs, accepted = len(baseline), []
    for gain in gains:
        noise_sd, noise_df = pooled_noise(all_scores)
        standing = Standing(best_scores=best_scores, baseline_scores=baseline, noise_sd=noise_sd, noise_df=noise_df)
        verdict, scores = run_candidate(policy, best_quality + gain, standing, sd, rng)
        runs += len(scores)
        all_scores.append(scores[1:])  # as the loop pools noise: a candidate's first seed was screened
        accepted.append(verdict == "keep")
        if verdict == "keep":
            best_quality, best_scores = best_quality + gain, scores
    return {"runs": runs, "accepted": accepted}


def measure(policy, sd: float, nights: int, proposals: int, seed: int) -> dict:
    """False accepts under a null agent, runs spent, and the acceptance rate of a true +TRUE_GAIN change."""
    rng = np.random.default_rng(seed)
    null = [simulate_night(policy, [0.0] * proposals, sd, rng) for _ in range(nights)]
    false_accepts = np.mean([sum(night["accepted"]) for night in null])
    runs = np.mean([night["runs"] for night in null])
    power = {}
    for position in GAIN_POSITIONS:
        gains = [0.0] * proposals
        gains[position - 1] = TRUE_GAIN
        hits = [simulate_night(policy, gains, sd, rng)["accepted"][position - 1] for _ in range(nights // 4)]
        power[position] = float(np.mean(hits))
    return {
        "policy": policy.name, "sd": sd, "false_accepts_per_night": float(false_accepts),
        "gpu_runs_per_night": float(runs), "false_accepts_per_100_runs": float(100 * false_accepts / runs),
        "power": power,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd", type=float, nargs="*", default=[0.005, 0.01, 0.015, 0.02, 0.03])
    parser.add_argument("--calibration", type=Path, help="calibration.json written by agent_loop.py calibrate")
    parser.add_argument("--nights", type=int, default=2000)
    parser.add_argument("--proposals", type=int, default=100, help="candidates per night after the baseline")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per confirmed candidate (confirm)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sds = [json.loads(args.calibration.read_text())["sd"]] if args.calibration else args.sd
    policies = [Monotonic(), make_policy("confirm", seeds=args.seeds)]
    results = []
    print(f"{args.proposals} proposals per night, {args.nights} nights; true gain {TRUE_GAIN:+.2f}\n")
    header = "| seed sd | policy | false accepts / night | GPU runs / night | false accepts / 100 runs | "
    header += " | ".join(f"P(accept +{TRUE_GAIN}) at #{p}" for p in GAIN_POSITIONS) + " |"
    print(header)
    print("|" + "---|" * (5 + len(GAIN_POSITIONS)))
    for sd in sds:
        for policy in policies:
            row = measure(policy, sd, args.nights, args.proposals, seed=7)
            results.append(row)
            powers = " | ".join(f"{row['power'][p]:.2f}" for p in GAIN_POSITIONS)
            print(f"| {sd:.3f} | {row['policy']} | {row['false_accepts_per_night']:.2f} | "
                  f"{row['gpu_runs_per_night']:.0f} | {row['false_accepts_per_100_runs']:.2f} | {powers} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
