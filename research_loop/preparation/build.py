"""`python prepare.py`: the whole preparation, all or nothing. The files are built in a staging folder beside
data/ and moved in with the manifest last; the holdout gold and the prepared stamp go into the per-user
cache (outside the repository), so the loop can tell a re-preparation from tampering."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from prepare import (
    AUX_DIR,
    DATA_DIR,
    TASK_CARD,
    DataError,
    holdout_gold_path,
    jsonl_bytes,
    prepared_stamp_path,
    sha256_bytes,
    sha256_file,
    write_json,
)
from research_loop.preparation.sources import (
    TASK7_TEST_SHA256,
    load_source,
    parse_aux_options,
    read_aux_source,
    read_test_csv,
)
from research_loop.preparation.splits import build, write_aux
from research_loop.preparation.task_card import write_task_card

HOLDOUT_FRAC = 1 / 3  # share of the official dev rows kept blind
SPLIT_SEED = 2026  # seeds the holdout split; same split on every run and machine
# Written by each run, the manifest last; anything of these a run does not write is removed.
OUTPUT_FILES = ("train.jsonl", "val.jsonl", "holdout.jsonl", "test.jsonl", TASK_CARD, "manifest.json")


def install(staging: Path, out: Path, trash: Path) -> None:
    """Move the staged files into out/, manifest last; drop our files this run did not produce.
    An old aux/ folder is moved aside into `trash` (same filesystem) before the new one takes its place."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        if not (staging / name).exists() and (out / name).exists():
            (out / name).unlink()
    if (out / AUX_DIR).exists():
        os.replace(out / AUX_DIR, trash / "old-aux")
    if (staging / AUX_DIR).exists():
        os.replace(staging / AUX_DIR, out / AUX_DIR)
    for name in OUTPUT_FILES:
        if (staging / name).exists():
            os.replace(staging / name, out / name)


def write_gold(gold_bytes: bytes, data_dir: Path) -> Path:
    """Write the holdout gold to the cache (outside the repository), where holdout_gold_path finds it."""
    path = holdout_gold_path(data_dir)
    partial = path.with_suffix(".partial")
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(gold_bytes)
        os.replace(partial, path)
    except OSError as error:
        raise DataError(f"{path}: cannot write the holdout gold ({error.strerror})") from None
    return path


def write_prepared_stamp(data_dir: Path, manifest_path: Path) -> Path:
    """Record in the cache which manifest prepare.py installs in data_dir (see manifest_problems)."""
    path = prepared_stamp_path(data_dir)
    stamp = {
        "data_dir": str(Path(data_dir).resolve()),
        "manifest_sha256": sha256_file(manifest_path),
        "holdout_gold_sha256": json.loads(manifest_path.read_text(encoding="utf-8"))["holdout_gold_sha256"],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    partial = path.with_suffix(".partial")
    try:
        write_json(partial, stamp)
        os.replace(partial, path)
    except OSError as error:
        raise DataError(f"{path}: cannot write the prepared stamp ({error.strerror})") from None
    return path


def prepare(args) -> str:
    """Run the whole preparation all-or-nothing; return the summary to print."""
    out = Path(args.out)
    aux_options = parse_aux_options(args.aux or [])
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".prepare-", dir=out.parent))  # same filesystem: os.replace is atomic
    try:
        data = load_source(args, work / "download")
        if args.test:
            data["test"] = read_test_csv(Path(args.test))
            data["inputs"] = {**data["inputs"], Path(args.test).name: sha256_file(Path(args.test))}
        aux_sources = {name: read_aux_source(name, source) for name, source in aux_options}
        staging = work / "data"
        staging.mkdir()
        manifest, described, gold = build(data, args.holdout_frac, args.seed, staging)
        gold_bytes = jsonl_bytes(gold) if gold else None
        manifest["holdout_gold_sha256"] = sha256_bytes(gold_bytes) if gold else None
        if aux_sources:
            manifest["aux"] = {name: write_aux(name, aux, staging) for name, aux in aux_sources.items()}
        manifest["task_card"] = write_task_card(staging, manifest, described, args.task_card)
        manifest["files"] = {
            path.name: sha256_file(path) for path in sorted(staging.iterdir()) if path.is_file()
        }
        write_json(staging / "manifest.json", manifest)
        gold_path = write_gold(gold_bytes, staging) if gold else None
        stamp_path = write_prepared_stamp(
            out, staging / "manifest.json"
        )  # before install: it cannot fail after
        install(staging, out, trash=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary(manifest, out, gold_path, stamp_path, args.test)


def summary(manifest: dict, out: Path, gold_path: Path | None, stamp_path: Path, test_file) -> str:
    lines = [f"prepared {out} from {manifest['source']} ({manifest['format']})"]
    for name, info in manifest["splits"].items():
        spans = "  ".join(f"{t} {n}" for t, n in info.get("spans", {}).items())
        lines.append(f"  {name:<8} {info['rows']:>6} rows  {spans}".rstrip())
    for name, entry in manifest.get("aux", {}).items():
        spans = "  ".join(f"{t} {n}" for t, n in entry["spans"].items())
        used = " + ".join(entry["used"])
        lines.append(f"  aux {name}: {entry['rows']} rows  {spans}  ({used} of {entry['source']})")
    lines.append(f"task card: {out / TASK_CARD} ({manifest['task_card']['source']})")
    if gold_path:
        lines.append(f"holdout gold (outside the repository): {gold_path}")
    lines.append(f"prepared stamp (outside the repository): {stamp_path}")
    if test_file and manifest["format"] == "task7" and sha256_file(Path(test_file)) != TASK7_TEST_SHA256:
        lines.append(
            f"note: {test_file} is not the shared Task 7 test file (sha256 {TASK7_TEST_SHA256[:12]}...)"
        )
    return "\n".join(lines)


def holdout_fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError("must be at least 0 and below 1")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Prepare data/ for ner-autoresearch (see the module docstring)."
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--source", help="local folder instead of downloading")
    source.add_argument(
        "--hf", metavar="DATASET_ID", help="a Hugging Face dataset id or a save_to_disk folder"
    )
    parser.add_argument("--format", choices=["task7", "conll"], default="task7", help="layout of --source")
    parser.add_argument("--test", metavar="FILE", help="unlabeled test CSV (ID,tokens) -> data/test.jsonl")
    parser.add_argument(
        "--aux",
        metavar="NAME=SOURCE",
        action="append",
        help="an auxiliary NER set for transfer: a CoNLL folder or a Hugging Face dataset (repeatable)",
    )
    parser.add_argument(
        "--task-card", metavar="FILE", help="your task description (default: written from the data)"
    )
    parser.add_argument("--holdout-frac", type=holdout_fraction, default=HOLDOUT_FRAC, help="0 turns it off")
    parser.add_argument("--seed", type=int, default=SPLIT_SEED, help="seed of the holdout split")
    parser.add_argument("--out", default=str(DATA_DIR), help="output folder (default: data/)")
    args = parser.parse_args(argv)
    try:
        print(prepare(args))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
