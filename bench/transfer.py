"""Transfer from a related NER set: the target alone against auxiliary set -> target, with val and holdout
strict F1 over several seeds.

train.py runs as the loop runs it (sandboxed jobs on the loop's data view); AUX_DATASETS names a set that
`prepare.py --aux NAME=SOURCE` prepared under data/aux/. The holdout is scored here with its gold from the
cache, as the loop's report does (no run can see it).

    python prepare.py --source DIR --aux ncbi=NCBI_DIR --aux bc5cdr=BC5CDR_DIR
    python bench/transfer.py --seeds 3 --limit 600 --set MODEL_NAME=minilm --set EPOCHS=2 --set LEARNING_RATE=2e-4

Writes runs/bench_transfer/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import mean, stdev

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from markdown_table import table

from research_loop import config_block
from research_loop.evaluation.dataviews import DataViews
from research_loop.evaluation.scoring import Scorer, import_file
from research_loop.execution import sandbox
from research_loop.execution.jobs import Job, run_job
from research_loop.night.folders import cache_root
from research_loop.night.opening import private_folders
from research_loop.records.integrity import FIXED_FILES


def recipes(base: str, aux_names: list[str], aux_epochs: int, mode: str) -> dict[str, str]:
    out = {"target alone": base}
    for name in aux_names:
        text = config_block.set_constant(base, "AUX_DATASETS", [name])
        text = config_block.set_constant(text, "AUX_EPOCHS", aux_epochs)
        out[f"{name} -> target"] = config_block.set_constant(text, "TRANSFER_MODE", mode)
    return out


def summarise(values: list[float]) -> str:
    return f"{mean(values):.4f} ± {stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--aux", nargs="+", default=["ncbi", "bc5cdr"], help="prepared auxiliary sets")
    parser.add_argument("--aux-epochs", type=int, default=1)
    parser.add_argument("--mode", default="sequential", choices=["sequential", "mixed"])
    parser.add_argument("--set", dest="settings", action="append", default=[], help="NAME=VALUE for the recipe")
    parser.add_argument("--limit", type=int, help="train on the first N rows of each set only")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_transfer")
    args = parser.parse_args(argv)
    prepare = import_file(ROOT / "prepare.py", "prepare")
    evaluate = import_file(ROOT / "evaluate.py", "evaluate")
    data = ROOT / "data"
    scorer = Scorer(evaluate, prepare.load_entity_types(data))
    gold_holdout = prepare.holdout_gold_path(data)
    base = config_block.apply_settings((ROOT / "train.py").read_text(),
                                       [config_block.parse_assignment(text) for text in args.settings])
    backend, _ = sandbox.choose("auto", allow_none=False)
    views = DataViews(data, "val")
    view = views.view()
    fixed = {name: (ROOT / name).read_bytes() for name in FIXED_FILES}
    results: dict[str, dict[str, list[float]]] = {}
    for name, text in recipes(base, args.aux, args.aux_epochs, args.mode).items():
        for seed in range(42, 42 + args.seeds):
            folder = args.out / name.replace(" ", "_").replace(">", "") / f"seed-{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            with (folder / "run.log").open("wb") as log:
                result = run_job(Job(text, fixed, view.files, seed,
                                     extra_args=("--limit", str(args.limit)) if args.limit else ()),
                                 backend, jobs_root=cache_root() / "jobs" / "bench", repo=ROOT, log=log,
                                 private=private_folders(ROOT, views.manifest))
            if result.kind != "ok":
                raise SystemExit(f"{name} seed {seed}: {result.kind}: {result.error_line()}")
            for output in ("pred_val.jsonl", "pred_holdout.jsonl"):
                (folder / output).write_bytes(result.outputs[output])
            val = scorer.score_file(folder / "pred_val.jsonl", data / "val.jsonl").strict
            held = scorer.score_file(folder / "pred_holdout.jsonl", gold_holdout).strict
            entry = results.setdefault(name, {"val": [], "holdout": [], "seconds": []})
            entry["val"].append(val)
            entry["holdout"].append(held)
            entry["seconds"].append(result.seconds)
            print(f"{name} seed {seed}: val {val:.4f}, holdout {held:.4f} ({time.monotonic() - started:.0f} s)",
                  flush=True)
    (args.out / "results.json").write_text(json.dumps({"settings": args.settings, "limit": args.limit,
                                                       "aux_epochs": args.aux_epochs, "mode": args.mode,
                                                       "results": results}, indent=1) + "\n")
    print(table(["recipe", "val strict F1", "holdout strict F1", "seconds per run", "seeds"],
                [[name, summarise(entry["val"]), summarise(entry["holdout"]), f"{mean(entry['seconds']):.0f}",
                  str(len(entry["val"]))] for name, entry in results.items()]))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
