"""How often does each acceptance rule keep noise, how small a real gain does it find, and what does it cost?

A simulated night through the loop's own policy objects and noise estimate (research_loop/acceptance.py,
driven on RunRecords the way the loop drives them). A trial's strict F1 is

    quality of the recipe + fold effect (CV) + a seed effect shared by recipes on the same seed + own noise

with the sds taken from bench/paired_noise.py's measurements (or given): the unpaired sd of the unchanged
recipe across trials, the sd of paired differences of small real changes, and the sd of a null change on
another seed (what a cross-validated baseline's replicates measure). Rules compared: unpaired confirm on val
seeds, paired confirm on val seeds, paired confirm on CV folds. Reported per rule: false keeps per 100
proposals of a null agent, trials (runs) per proposal, the share of a true gain kept at several sizes, and
the smallest gain kept 80% of the time.

    python bench/acceptance_sim.py --measured runs/bench_paired_noise/results.json
    python bench/acceptance_sim.py --val-sd 0.03 --val-paired-sd 0.02 --cv-sd 0.05 --cv-paired-sd 0.02
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

import numpy as np
from markdown_table import table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from research_loop.evaluation.acceptance import Confirm, Standing, night_noise
from research_loop.records.run_record import RunRecord, Status

GAINS = (0.01, 0.02, 0.03, 0.04, 0.06, 0.08)
POSITION = 10  # the real change is the 10th proposal of the night


@dataclass(frozen=True)
class Scheme:
    name: str
    paired: bool
    keys: tuple  # (seed, fold) of each trial
    replicates: tuple  # the baseline's extra trials
    sd_fold: float
    sd_seed: float  # shared by recipes on the same seed
    sd_own: float  # each recipe's own noise per trial
    floor: float  # one gold span of a trial's scored rows


def scheme_from(name: str, paired: bool, cv: bool, unpaired_sd: float, paired_sd: float, replicate_sd: float,
                trials: int, floor: float) -> Scheme:
    """Split the measured sds into the model's three parts (see the module docstring)."""
    own = paired_sd / math.sqrt(2)
    seed = math.sqrt(max(0.0, replicate_sd ** 2 / 2 - own ** 2))
    fold = math.sqrt(max(0.0, unpaired_sd ** 2 - seed ** 2 - own ** 2)) if cv else 0.0
    keys = tuple((42, k) for k in range(trials)) if cv else tuple((42 + k, None) for k in range(trials))
    replicates = tuple((43, k) for k in range(trials)) if cv and paired else ()
    return Scheme(name, paired, keys, replicates, fold, seed, own, floor)


class World:
    """The trial effects of one simulated night: fixed per fold and per seed, shared by every recipe."""

    def __init__(self, scheme: Scheme, rng):
        self.scheme, self.rng = scheme, rng
        self.fold = {k: rng.normal(0, scheme.sd_fold) for k in range(16)}
        self.seed = {}

    def score(self, quality: float, key) -> float:
        _seed, fold = key
        shared = self.seed.setdefault(key, self.rng.normal(0, self.scheme.sd_seed))
        return quality + (self.fold[fold] if fold is not None else 0.0) + shared + self.rng.normal(0, self.scheme.sd_own)


def run(policy: Confirm, world: World, quality: float, keys, standing: Standing) -> tuple[str, dict]:
    """Ask the policy, as the scheduler does, until it decides; returns the verdict and the trial scores."""
    scores: dict[int, float] = {}
    while True:
        verdict = policy.decide({i: round(s, 6) for i, s in scores.items()}, list(keys), standing)
        if verdict.action != "run":
            return verdict.action, scores
        for index in verdict.run:
            scores[index] = world.score(quality, keys[index])


def record(run_number: int, status: Status, keys, scores: dict, parent: str) -> RunRecord:
    ordered = [keys[index] for index in sorted(scores)]
    item = RunRecord(run=run_number, tag="sim", status=status, commit=f"c{run_number}", parent=parent)
    item.seeds = [key[0] for key in ordered]
    item.folds = [key[1] for key in ordered if key[1] is not None]
    item.seed_scores = [round(scores[index], 6) for index in sorted(scores)]
    item.strict_f1 = mean(item.seed_scores)
    return item


def night(scheme: Scheme, policy: Confirm, gains: list[float], rng) -> dict:
    world = World(scheme, rng)
    records = []
    baseline_keys = scheme.keys + scheme.replicates
    _, scores = run(policy, world, 0.0, baseline_keys, Standing())
    records.append(record(0, Status.BASELINE, baseline_keys, scores, ""))
    best, quality, trials, kept = records[0], 0.0, 0, []
    for number, gain in enumerate(gains, start=1):
        noise = night_noise(policy, records, policy.trials, [], scheme.floor)
        standing = Standing(best=best.scores_by_trial(), noise=noise)
        verdict, scores = run(policy, world, quality + gain, scheme.keys, standing)
        trials += len(scores)
        status = Status.KEEP if verdict == "keep" else Status.DISCARD
        records.append(record(number, status, scheme.keys, scores, best.commit))
        kept.append(status is Status.KEEP)
        if status is Status.KEEP:
            best, quality = records[-1], quality + gain
    return {"kept": kept, "trials": trials}


def measure(scheme: Scheme, alpha: float, nights: int, proposals: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    policy = Confirm(trials=len(scheme.keys), alpha=alpha, paired=scheme.paired)
    null = [night(scheme, policy, [0.0] * proposals, rng) for _ in range(nights)]
    false_keeps = 100 * mean(sum(item["kept"]) for item in null) / proposals
    runs_per_proposal = mean(item["trials"] for item in null) / proposals
    power = {}
    for gain in GAINS:
        gains = [0.0] * (POSITION - 1) + [gain]
        power[gain] = mean(night(scheme, policy, gains, rng)["kept"][-1] for _ in range(nights))
    smallest = next((gain for gain in GAINS if power[gain] >= 0.8), None)
    return {"scheme": scheme.name, "alpha": alpha, "false_keeps_per_100": false_keeps,
            "runs_per_proposal": runs_per_proposal, "power": power, "smallest_gain_80": smallest,
            "sds": {"fold": scheme.sd_fold, "seed": scheme.sd_seed, "own": scheme.sd_own, "floor": scheme.floor}}


def measured_sds(path: Path) -> dict:
    """From bench/paired_noise.py's results: per mode, the unpaired sd, the pooled sd of paired differences
    over the real changes, and the sd of differences of the null change on another seed."""
    results = json.loads(path.read_text())["results"]
    out = {}
    for mode, scores in results.items():
        base = scores["unchanged"]
        changes = [name for name in scores if name not in ("unchanged", "unchanged, another seed")]
        differences = [[value - ref for value, ref in zip(scores[name], base)] for name in changes]
        squares = sum(sum((d - mean(row)) ** 2 for d in row) for row in differences)
        df = sum(len(row) - 1 for row in differences)
        replicate = [value - ref for value, ref in zip(scores["unchanged, another seed"], base)]
        out[mode] = {"unpaired": stdev(base), "paired": math.sqrt(squares / df), "replicate": stdev(replicate)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measured", type=Path, help="runs/bench_paired_noise/results.json")
    parser.add_argument("--val-sd", type=float, default=0.03)
    parser.add_argument("--val-paired-sd", type=float, default=0.02)
    parser.add_argument("--cv-sd", type=float, default=0.05)
    parser.add_argument("--cv-paired-sd", type=float, default=0.02)
    parser.add_argument("--replicate-sd", type=float, help="sd of a null change on another seed (default: "
                        "sqrt(2) x the val sd)")
    parser.add_argument("--val-spans", type=int, default=78, help="gold spans in val (the noise floor)")
    parser.add_argument("--cv-spans", type=int, default=421, help="gold spans in train + val")
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.01])
    parser.add_argument("--nights", type=int, default=400)
    parser.add_argument("--proposals", type=int, default=100)
    parser.add_argument("--zero-noise", action="store_true", help="also a night whose runs never vary (CPU)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.measured:
        sds = measured_sds(args.measured)
        val, cv = sds["val"], sds.get("cv", sds["val"])
    else:
        replicate = args.replicate_sd or math.sqrt(2) * args.val_sd
        val = {"unpaired": args.val_sd, "paired": args.val_paired_sd, "replicate": replicate}
        cv = {"unpaired": args.cv_sd, "paired": args.cv_paired_sd, "replicate": replicate}
    schemes = [
        scheme_from("unpaired val, 3 seeds", False, False, val["unpaired"], val["paired"], val["replicate"], 3,
                    1 / args.val_spans),
        scheme_from("paired val, 3 seeds", True, False, val["unpaired"], val["paired"], val["replicate"], 3,
                    1 / args.val_spans),
        scheme_from("paired CV, 5 folds", True, True, cv["unpaired"], cv["paired"], cv["replicate"], 5,
                    5 / args.cv_spans),
    ]
    if args.zero_noise:
        schemes.append(Scheme("paired CV, runs that never vary", True, schemes[2].keys, schemes[2].replicates,
                              0.0, 0.0, 0.0, 5 / args.cv_spans))
    rows = [measure(scheme, alpha, args.nights, args.proposals, seed=7) for scheme in schemes for alpha in args.alpha]
    print(f"{args.proposals} proposals per null night, {args.nights} nights; the real change is proposal "
          f"#{POSITION}\n")
    headers = ["rule", "alpha", "false keeps / 100 proposals", "runs / proposal",
               *(f"kept +{gain}" for gain in GAINS), "smallest gain kept 80%"]
    print(table(headers, [[row["scheme"], str(row["alpha"]), f"{row['false_keeps_per_100']:.2f}",
                           f"{row['runs_per_proposal']:.2f}", *(f"{row['power'][gain]:.2f}" for gain in GAINS),
                           f"+{row['smallest_gain_80']}" if row["smallest_gain_80"] else f"> +{GAINS[-1]}"]
                          for row in rows]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
