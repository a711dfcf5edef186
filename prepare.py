"""Fixed data API: what train.py and the loop read from a prepared data/ (splits, labels, auxiliary sets,
the manifest and its checks, where the holdout gold lives) and the prediction writers. Every job carries
this file; the loop protects it.

`python prepare.py` builds data/ (research_loop/preparation; no job runs it):

python prepare.py                          Task 7 train/dev CSVs from the organisers' repository
python prepare.py --source DIR             the same CSVs from a local folder (sha256-checked)
python prepare.py --format conll --source DIR   train.tsv, devel.tsv (optionally test.tsv), token<TAB>tag
python prepare.py --hf DATASET_ID_OR_SAVED_DIR  a Hugging Face dataset (tokens, ner_tags)
  --test FILE            unlabeled test CSV (ID,tokens) -> data/test.jsonl
  --aux NAME=SOURCE      an auxiliary NER set for transfer (CoNLL folder or HF dataset) -> data/aux/NAME/
  --task-card FILE       your own task description for the agent, instead of the one written from the data

Outside the repository, in the per-user cache (cache_dir()), it writes the holdout gold and a prepared
stamp: which manifest it wrote for this data folder, so the loop can tell a re-preparation from tampering.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("train", "val", "holdout", "test")
TASK_CARD = "task.md"
AUX_DIR = "aux"


class DataError(Exception):
    """One-line, user-facing message naming file, row and field."""


def row_error(file, row: str, field: str, what: str) -> DataError:
    """A DataError in the house format: `<file>: row <row>: <field>: <what>`."""
    return DataError(f"{file}: row {row}: {field}: {what}")


# ----- What train.py and the loop read -----


def read_manifest(data_dir: Path = DATA_DIR) -> dict:
    """The manifest prepare.py wrote; DataError when data/ was never prepared."""
    path = Path(data_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `python prepare.py` first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_split(name: str, data_dir: Path = DATA_DIR) -> list[dict]:
    """Rows of one prepared split ("train", "val", "holdout", "test"); holdout and test rows have no tags."""
    if name not in SPLITS:
        raise DataError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
    path = Path(data_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `python prepare.py` first")
    return read_jsonl(path)


def load_labels(data_dir: Path = DATA_DIR) -> list[str]:
    """The BIO label list: "O", then "B-T", "I-T" for each entity type (sorted)."""
    return list(read_manifest(data_dir)["labels"])


def load_entity_types(data_dir: Path = DATA_DIR) -> list[str]:
    """The entity types of the prepared data, sorted."""
    return list(read_manifest(data_dir)["entity_types"])


def write_predictions_jsonl(path, rows) -> None:
    """One `{"id", "tags"}` JSON object per line."""
    write_jsonl(Path(path), [{"id": row["id"], "tags": list(row["tags"])} for row in rows])


def write_submission_csv(path, rows, ids=None) -> None:
    """The official `ID,predicted_ner_tags` CSV; ID is each row's source_id, the cell a Python list literal.

    With `ids`, writes exactly those official IDs in that order (DataError when one has no row).
    """
    by_id = {row.get("source_id", row["id"]): row for row in rows}
    if ids is None:
        ids = list(by_id)
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(f"{path}: no predictions for {len(missing)} ids ({', '.join(missing[:3])})")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")  # as the organisers' sample_submission.csv
        writer.writerow(["ID", "predicted_ner_tags"])
        for official_id in ids:
            writer.writerow([official_id, repr(list(by_id[official_id]["tags"]))])


def cache_dir() -> Path:
    """$NER_AUTORESEARCH_CACHE, else $XDG_CACHE_HOME/ner-autoresearch, else ~/.cache/ner-autoresearch."""
    if os.environ.get("NER_AUTORESEARCH_CACHE"):
        return Path(os.environ["NER_AUTORESEARCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ner-autoresearch"


def holdout_gold_path(data_dir: Path = DATA_DIR) -> Path:
    """Where the holdout gold lives, outside the repository: keyed by the sha256 of data/holdout.jsonl."""
    holdout = Path(data_dir) / "holdout.jsonl"
    if not holdout.is_file():
        raise DataError(f"{holdout}: not found; run `python prepare.py` with a holdout first")
    return cache_dir() / "holdout" / f"{sha256_file(holdout)}.jsonl"


def aux_names(data_dir: Path = DATA_DIR) -> list[str]:
    """The auxiliary data sets prepared with --aux (data/aux/<name>/), sorted; [] when there are none."""
    return sorted(read_manifest(data_dir).get("aux", {}))


def load_aux(name: str, data_dir: Path = DATA_DIR) -> tuple[list[dict], list[str]]:
    """(rows, BIO labels) of one auxiliary data set; its labels are its own, not the target's."""
    names = aux_names(data_dir)
    if name not in names:
        raise DataError(
            f"no auxiliary data set {name!r} in {data_dir} (prepared: {', '.join(names) or 'none'}); "
            "add one with `python prepare.py ... --aux NAME=SOURCE`"
        )
    folder = Path(data_dir) / AUX_DIR / name
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: not found; run `python prepare.py ... --aux {name}=SOURCE` again")
    labels = json.loads(manifest_path.read_text(encoding="utf-8"))["labels"]
    return read_jsonl(folder / "train.jsonl"), list(labels)


def prepared_stamp_path(data_dir: Path = DATA_DIR) -> Path:
    """Where prepare.py records what it wrote into data_dir: keyed by the folder's resolved path."""
    key = hashlib.sha256(str(Path(data_dir).resolve()).encode("utf-8")).hexdigest()[:16]
    return cache_dir() / "prepared" / f"{key}.json"


def read_prepared_stamp(data_dir: Path = DATA_DIR) -> dict | None:
    """{"data_dir", "manifest_sha256", "holdout_gold_sha256", "timestamp"}, or None when there is none."""
    try:
        stamp = json.loads(prepared_stamp_path(data_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def manifest_problems(data_dir: Path = DATA_DIR) -> list[str]:
    """One line per problem, naming the file: a data file missing, changed or not in the manifest, or a
    manifest that is not the one prepare.py last wrote here (its prepared stamp). [] when all is well.
    The holdout gold itself is the loop's to check, against the manifest's holdout_gold_sha256."""
    data_dir = Path(data_dir)
    manifest_path = data_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [f"{manifest_path}: not found; run `python prepare.py`"]
    except (OSError, ValueError) as error:
        return [f"{manifest_path}: unreadable ({error})"]
    problems = []
    expected = dict(manifest.get("files", {}))
    for info in manifest.get("aux", {}).values():
        expected.update(info.get("files", {}))
    for name, sha256 in expected.items():
        path = data_dir / name
        if not path.is_file():
            problems.append(f"{path}: missing (the manifest lists it)")
        elif sha256_file(path) != sha256:
            problems.append(
                f"{path}: sha256 {sha256_file(path)[:12]}... differs from the manifest's {sha256[:12]}..."
            )
    for path in sorted(data_dir.rglob("*")):
        relative = path.relative_to(data_dir)
        hidden = any(part.startswith(".") for part in relative.parts)
        if (
            path.is_file()
            and not hidden
            and relative.as_posix() not in {*expected, "manifest.json", "README.md"}
        ):
            problems.append(f"{path}: not listed in the manifest")
    stamp, stamp_path = read_prepared_stamp(data_dir), prepared_stamp_path(data_dir)
    if stamp is None:
        problems.append(f"{manifest_path}: no prepared stamp ({stamp_path}); run `python prepare.py` again")
    else:
        if stamp.get("manifest_sha256") != sha256_file(manifest_path):
            problems.append(
                f"{manifest_path}: not the manifest prepare.py wrote at {stamp.get('timestamp')} "
                f"(sha256 differs from the prepared stamp {stamp_path})"
            )
        if stamp.get("holdout_gold_sha256") != manifest.get("holdout_gold_sha256"):
            problems.append(
                f"{manifest_path}: holdout_gold_sha256 differs from the prepared stamp {stamp_path}"
            )
    return problems


# ----- Small file utilities -----


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}: line {line_number}: not valid JSON ({error.msg})") from None
    return rows


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jsonl_bytes(rows))


def write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    from research_loop.preparation.build import main

    sys.exit(main())
