"""The data a trial's train.py sees under data/, and the gold the loop scores its predictions with.

train.py sees tags only for the rows it trains on. `--eval val`: train with tags, val/holdout/test tokens
only, the loop scores val. `--eval cv --folds K`: train and val pooled (the holdout never), split into K
folds stratified by whether a row has a span; fold k's view trains on the other folds and predicts fold k
(tokens only); the loop scores fold k. Test rows are in a view only when asked for (kept runs, export).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

VIEW_SPLITS = ("train.jsonl", "val.jsonl", "holdout.jsonl", "test.jsonl")


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def tokens_only(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "tags"} for row in rows]


def has_span(tags: list[str]) -> bool:
    return any(tag != "O" for tag in tags)


def assign_folds(rows: list[dict], folds: int, seed: int) -> dict[str, int]:
    """row id -> fold, stratified by whether the row has a span; the same on every machine for a seed."""
    rng = random.Random(seed)
    assignment = {}
    for flag in (True, False):
        ids = sorted(row["id"] for row in rows if has_span(row["tags"]) == flag)
        rng.shuffle(ids)
        offset = len(assignment)  # continue the round-robin so the fold sizes stay balanced
        for index, row_id in enumerate(ids):
            assignment[row_id] = (offset + index) % folds
    return assignment


@dataclass
class View:
    files: dict[str, bytes]  # relative to data/
    gold: list[dict]  # {"id", "tags"} of the rows predicted as val.jsonl, in file order
    fold: int | None = None


class DataViews:
    """Builds the views of one night from the prepared data/ folder (read once, at loop start)."""

    def __init__(self, data_dir: Path, mode: str = "val", folds: int = 5, split_seed: int = 2026):
        self.data_dir, self.mode, self.folds, self.split_seed = Path(data_dir), mode, folds, split_seed
        self.manifest = json.loads((self.data_dir / "manifest.json").read_text(encoding="utf-8"))
        self.train = _read_jsonl(self.data_dir / "train.jsonl")
        self.val = _read_jsonl(self.data_dir / "val.jsonl")
        self.extra = {}  # files shown as they are: holdout (already tokens only), the task card, aux sets
        for path in sorted(self.data_dir.rglob("*")):
            relative = path.relative_to(self.data_dir).as_posix()
            if path.is_file() and relative not in (*VIEW_SPLITS, "manifest.json", "README.md"):
                self.extra[relative] = path.read_bytes()
        if (self.data_dir / "holdout.jsonl").is_file():
            self.extra["holdout.jsonl"] = (self.data_dir / "holdout.jsonl").read_bytes()
        self.test = (self.data_dir / "test.jsonl").read_bytes() if (self.data_dir / "test.jsonl").is_file() else None
        if mode == "cv":
            pooled = self.train + self.val
            self.fold_of = assign_folds(pooled, folds, split_seed)
            self.pooled = pooled

    @property
    def has_test(self) -> bool:
        return self.test is not None

    def _manifest(self, train_rows: int, val_rows: int, fold: int | None) -> bytes:
        """What train.py reads from the manifest (labels, types, aux sets), without the real files' hashes."""
        keep = {key: self.manifest[key] for key in ("labels", "entity_types", "aux", "format", "task_card")
                if key in self.manifest}
        keep["view"] = {"eval": self.mode, "fold": fold, "train_rows": train_rows, "val_rows": val_rows}
        return (json.dumps(keep, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    def view(self, fold: int | None = None, with_test: bool = False) -> View:
        if self.mode == "cv":
            if fold is None:
                raise ValueError("a cross-validation view needs a fold")
            train = [row for row in self.pooled if self.fold_of[row["id"]] != fold]
            predicted = [row for row in self.pooled if self.fold_of[row["id"]] == fold]
        else:
            train, predicted, fold = self.train, self.val, None
        files = {"train.jsonl": _jsonl(train), "val.jsonl": _jsonl(tokens_only(predicted)), **self.extra,
                 "manifest.json": self._manifest(len(train), len(predicted), fold)}
        if with_test and self.test is not None:
            files["test.jsonl"] = self.test
        gold = [{"id": row["id"], "tags": row["tags"]} for row in predicted]
        return View(files, gold, fold)

    def span_count(self) -> int:
        """Gold spans the scored rows hold over a whole trial set (val, or every fold): the noise floor's n."""
        rows = self.pooled if self.mode == "cv" else self.val
        return sum(_spans(row["tags"]) for row in rows)

    def fold_span_count(self) -> int:
        """Gold spans in one trial's scored rows (on average, for CV)."""
        return max(1, round(self.span_count() / (self.folds if self.mode == "cv" else 1)))


def _spans(tags: list[str]) -> int:
    """Spans under the conlleval reading: a B- tag, or an I- tag that does not continue a span of its type."""
    count, previous = 0, "O"
    for tag in tags:
        if tag.startswith("B-") or (tag.startswith("I-") and previous[2:] != tag[2:]):
            count += 1
        previous = tag
    return count


def write_gold(gold: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jsonl(gold))
    return path
