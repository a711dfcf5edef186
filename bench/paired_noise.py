"""How much pairing and cross-validation shrink the noise a keep decision must beat.

For the unchanged recipe and a few small real changes (learning rate x1.5, IO labels, warm-up 0.1 -> 0.2,
label smoothing 0.1), train.py runs as the loop runs it (sandboxed jobs on the loop's data views) on K
seeds of val and on K cross-validation folds. Per mode it reports the unpaired sd (trial to trial, the
unchanged recipe) and, per change, the mean paired difference against the unchanged recipe on the same
seed/fold and the sd of those differences: the noise each acceptance rule faces.

    python bench/paired_noise.py --trials 5 --set MODEL_NAME=minilm --set EPOCHS=2 --set LEARNING_RATE=2e-4 --limit 600
    python bench/paired_noise.py --trials 2 --limit 64 --set MODEL_NAME=minilm --set EPOCHS=1   # a quick look

Writes runs/bench_paired_noise/results.json (every trial's scores, after each trial) and prints a Markdown
table. Run again with the same arguments to resume: trials whose predictions exist are scored, not re-run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from statistics import mean, stdev

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from research_loop import config_block
from research_loop.evaluation.dataviews import DataViews, write_gold
from research_loop.evaluation.scoring import Scorer, import_file
from research_loop.execution import sandbox
from research_loop.execution.jobs import Job, run_job
from research_loop.night.folders import cache_root
from research_loop.night.opening import private_folders
from research_loop.records.integrity import FIXED_FILES

ANOTHER_SEED = "unchanged, another seed"  # a null change on another seed: what a replicate of the baseline measures


def changes(base: str) -> dict[str, str]:
    """name -> train.py: the unchanged recipe and the small changes the table measures."""
    values = config_block.values(base)
    return {
        "unchanged": base,
        ANOTHER_SEED: base,
        "learning rate x1.5": config_block.set_constant(base, "LEARNING_RATE", values["LEARNING_RATE"] * 1.5),
        "IO labels": config_block.set_constant(base, "LABEL_SCHEME", "IO"),
        "warm-up 0.1 -> 0.2": config_block.set_constant(base, "WARMUP_RATIO", 0.2),
        "label smoothing 0.1": config_block.set_constant(base, "LABEL_SMOOTHING", 0.1),
    }


def run_trials(recipes: dict[str, str], mode: str, trials: int, limit: int | None, out: Path, backend: str,
               scorer: Scorer, save) -> dict[str, list[float]]:
    """Runs every recipe on every seed (val) or fold (cv); a trial whose prediction is already in `out` is
    scored again, not re-run, so a killed measurement resumes where it stopped."""
    views = DataViews(ROOT / "data", mode, folds=trials)
    fixed = {name: (ROOT / name).read_bytes() for name in FIXED_FILES}
    scores: dict[str, list[float]] = {}
    for index in range(trials):
        seed, fold = (42, index) if mode == "cv" else (42 + index, None)
        view = views.view(fold)
        gold = write_gold(view.gold, out / "gold" / f"{mode}-{fold}.jsonl")
        for name, text in recipes.items():
            folder = out / mode / name.replace(" ", "_").replace(">", "").replace(",", "") / f"trial-{index}"
            folder.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            if (folder / "pred_val.jsonl").exists():
                scores.setdefault(name, []).append(scorer.score_file(folder / "pred_val.jsonl", gold).strict)
                continue
            trial_seed = seed + (1 if mode == "cv" else 100) if name == ANOTHER_SEED else seed
            with (folder / "run.log").open("wb") as log:
                result = run_job(Job(text, fixed, view.files, trial_seed, fold,
                                     extra_args=("--limit", str(limit)) if limit else ()),
                                 backend, jobs_root=cache_root() / "jobs" / "bench", repo=ROOT, log=log,
                                 private=private_folders(ROOT, views.manifest))
            if result.kind != "ok":
                raise SystemExit(f"{mode} {name} trial {index}: {result.kind}: {result.error_line()}")
            (folder / "pred_val.jsonl").write_bytes(result.outputs["pred_val.jsonl"])
            score = scorer.score_file(folder / "pred_val.jsonl", gold).strict
            scores.setdefault(name, []).append(score)
            print(f"{mode} trial {index} ({'fold' if fold is not None else 'seed'} "
                  f"{fold if fold is not None else seed}) {name}: strict F1 {score:.4f} "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
            save(mode, scores)
    return scores


def table(results: dict[str, dict[str, list[float]]]) -> list[str]:
    lines = ["| mode | change | mean strict F1 | unpaired sd | mean paired gain | sd of paired differences | n |",
             "|---|---|---|---|---|---|---|"]
    for mode, scores in results.items():
        base = scores["unchanged"]
        for name, values in scores.items():
            differences = [value - reference for value, reference in zip(values, base)]
            unpaired = stdev(values) if len(values) > 1 else math.nan
            paired = stdev(differences) if name != "unchanged" and len(differences) > 1 else math.nan
            gain = mean(differences) if name != "unchanged" else math.nan
            lines.append(f"| {mode} | {name} | {mean(values):.4f} | {unpaired:.4f} | "
                         + ("" if math.isnan(gain) else f"{gain:+.4f}") + " | "
                         + ("" if math.isnan(paired) else f"{paired:.4f}") + f" | {len(values)} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="seeds on val, and folds in CV (default 5)")
    parser.add_argument("--modes", nargs="+", default=["val", "cv"], choices=["val", "cv"])
    parser.add_argument("--set", dest="settings", action="append", default=[], help="NAME=VALUE for the recipe")
    parser.add_argument("--limit", type=int, help="train on the first N rows only")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_paired_noise")
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "unshare", "none"])
    args = parser.parse_args(argv)
    base = config_block.apply_settings((ROOT / "train.py").read_text(),
                                       [config_block.parse_assignment(text) for text in args.settings])
    backend, _ = sandbox.choose(args.sandbox, allow_none=args.sandbox == "none")
    evaluate = import_file(ROOT / "evaluate.py", "evaluate")
    scorer = Scorer(evaluate, json.loads((ROOT / "data" / "manifest.json").read_text())["entity_types"])
    results: dict[str, dict[str, list[float]]] = {}

    def save(mode: str, scores: dict[str, list[float]]) -> None:
        """Writes every score so far, so an interrupted measurement still leaves its numbers."""
        results[mode] = scores
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"settings": args.settings, "limit": args.limit,
                                                           "results": results}, indent=1) + "\n")

    for mode in args.modes:
        save(mode, run_trials(changes(base), mode, args.trials, args.limit, args.out, backend, scorer, save))
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
