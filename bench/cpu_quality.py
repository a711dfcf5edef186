"""CPU quality: MiniLM trained with train.py on the full Task 7 train, val strict / relaxed F1 over seeds,
for the BIO and the IO label scheme; prints a table of mean +- sd.

Each run is train.py's own run() (imported, in this process) with its config constants MODEL_NAME, EPOCHS,
LABEL_SCHEME and LEARNING_RATE set from this script's command line (as the loop's --set would write them) and
the seed passed as train.py's --seed; everything else is train.py's config. The default --lr is 1e-4, not
train.py's 1e-5 (meant for DeBERTa-large): with 1e-5, MiniLM predicts only O after 3 epochs.
Only train and val are given to the runs (a view of the data folder without holdout.jsonl and test.jsonl),
so the blind holdout stays untouched and no time goes to predicting the 578 long test rows.
The printed scores are re-read from each run's pred_val.jsonl with evaluate.score_files.

Usage: python bench/cpu_quality.py [--epochs 5] [--lr 1e-4] [--seeds 1 2 3] [--schemes BIO IO]
                                   [--data DIR] [--out runs/bench_cpu_quality]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared CPUs: idle OpenMP threads must not spin

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import runtime
import train  # the repository root is on the path only from here on
from evaluate import score_files
from prepare import DATA_DIR


def train_and_val_only(data_dir: Path, view: Path) -> Path:
    """A folder that links train.jsonl, val.jsonl, manifest.json (and aux/, when prepared) of data_dir."""
    view.mkdir(parents=True, exist_ok=True)
    for name in ("train.jsonl", "val.jsonl", "manifest.json", "aux"):
        if (data_dir / name).exists():
            (view / name).symlink_to((data_dir / name).resolve())
    return view


def one_run(data_dir: Path, out_dir: Path, seed: int, settings: dict) -> dict:
    """train.run() with `settings` applied to train.py's config; the val scores of what it wrote."""
    saved = {name: getattr(train, name) for name in settings}
    try:
        for name, value in settings.items():
            setattr(train, name, value)
        options = ["--data", str(data_dir), "--out", str(out_dir), "--device", "cpu", "--seed", str(seed)]
        summary = train.run(runtime.parse_args(options))
    finally:
        for name, value in saved.items():
            setattr(train, name, value)
    scores = score_files(out_dir / "pred_val.jsonl", data_dir / "val.jsonl")
    return {
        "strict_f1": scores["strict"]["f1"],
        "relaxed_f1": scores["relaxed"]["f1"],
        "train_seconds": summary["train_seconds"],
    }


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="MiniLM epochs per run")
    parser.add_argument(
        "--lr", type=float, default=1e-4, help="learning rate (MiniLM needs more than DeBERTa)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--schemes", nargs="+", default=["BIO", "IO"], choices=["BIO", "IO"])
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="prepared data folder")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/bench_cpu_quality"), help="run outputs go here"
    )
    args = parser.parse_args(argv)
    lr = args.lr
    print(f"MiniLM, {args.epochs} epochs, lr {lr}, seeds {args.seeds}, schemes {args.schemes}", flush=True)

    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_view = train_and_val_only(args.data, Path(tmp) / "data")
        for scheme in args.schemes:
            for seed in args.seeds:
                start = time.perf_counter()
                settings = {
                    "MODEL_NAME": "minilm",
                    "EPOCHS": args.epochs,
                    "LABEL_SCHEME": scheme,
                    "LEARNING_RATE": lr,
                }
                result = one_run(data_view, args.out / f"{scheme}-seed{seed}", seed, settings)
                results.setdefault(scheme, []).append(result)
                print(
                    f"{scheme} seed {seed}: strict_f1 {result['strict_f1']:.4f}  relaxed_f1 "
                    f"{result['relaxed_f1']:.4f}  ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )

    print(f"\n| scheme | val strict F1 (n={len(args.seeds)}) | val relaxed F1 | train s / run |")
    print("|---|---|---|---|")
    for scheme, runs in results.items():
        strict, relaxed = mean_sd([r["strict_f1"] for r in runs]), mean_sd([r["relaxed_f1"] for r in runs])
        print(
            f"| {scheme} | {strict} | {relaxed} | {statistics.mean(r['train_seconds'] for r in runs):.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
