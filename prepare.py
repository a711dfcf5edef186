"""Fixed data preparation: fetch, validate, split and write data/; plus the data helpers train.py imports.

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

import argparse
import ast
import csv
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("train", "val", "holdout", "test")
HOLDOUT_FRAC = 1 / 3  # share of the official dev rows kept blind
SPLIT_SEED = 2026  # seeds the holdout split; same split on every run and machine

TASK7_URL = (
    "https://raw.githubusercontent.com/SumonKantiDey/SMM4H-HeaRD-2026-Task-7-Reddit-Impacts2/main/dataset/"
)
TASK7_FILES = {"train": "new_train_data.csv", "dev": "new_dev_data.csv"}
# sha256 of the official release (organisers' repository @ 912a1572); a URL on `main` may move, these don't.
TASK7_SHA256 = {
    "new_train_data.csv": "618dbac2c98896eca2b30f3d657bc116ce4180dae84c9c2486e487e417c5b6fa",
    "new_dev_data.csv": "597a8bad0612a35c4613b37a62795e4c1146e81a0e5e4ce9c21b4d9fe542fa1b",
}
# The unlabeled test file shared with the team; other test files are accepted, the summary says so.
TASK7_TEST_SHA256 = "4fa37b47c36ee4a127eb994aa3f32b4f40533f7bcad17a33babb1e98b8a51518"

TAG_PATTERN = re.compile(r"O|[BI]-\S+")
CONLL_FILES = ("train.tsv", "devel.tsv")  # test.tsv is optional
TASK_CARD = "task.md"
AUX_DIR = "aux"
AUX_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Written by each run, the manifest last; anything of these a run does not write is removed.
OUTPUT_FILES = ("train.jsonl", "val.jsonl", "holdout.jsonl", "test.jsonl", TASK_CARD, "manifest.json")
# What the task card says about the Task 7 entity types (the organisers' guidelines, in short).
TASK7_TYPES = {
    "ClinicalImpacts": "health consequences, such as overdose, withdrawal, addiction, hospital visits",
    "SocialImpacts": "effects on life and relationships, such as job loss, arrests, family conflict, money",
}


class DataError(Exception):
    """One-line, user-facing message naming file, row and field."""


def row_error(file, row: str, field: str, what: str) -> DataError:
    """A DataError in the house format: `<file>: row <row>: <field>: <what>`."""
    return DataError(f"{file}: row {row}: {field}: {what}")


# ----- Helpers train.py imports -----


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


# ----- Validation -----


def check_tags(file, row: str, tokens: list[str], tags: list[str], field: str = "ner_tags") -> None:
    """Raise a DataError for a tag that is not O / B-X / I-X, or a tag count that differs from the tokens."""
    for position, tag in enumerate(tags):
        if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
            raise row_error(
                file, row, field, f"invalid tag {tag!r} at position {position} (expected O, B-X or I-X)"
            )
    if len(tags) != len(tokens):
        raise row_error(file, row, field, f"{len(tags)} tags for {len(tokens)} tokens")


def parse_list_cell(file, row: str, field: str, cell: str) -> list[str]:
    """A CSV cell holding a Python list literal of strings (the Task 7 format)."""
    try:
        value = ast.literal_eval(cell)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise row_error(file, row, field, f"not a Python list literal of strings: {cell[:40]!r}")
    if not value:
        raise row_error(file, row, field, "empty list")
    return value


# ----- Readers: each returns rows {"id", "source_id", "tokens", "tags"?} -----


def read_csv_rows(path: Path, columns: list[str]):
    """Yield (line number, row dict) from a CSV, after checking the file and its header."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    csv.field_size_limit(sys.maxsize)  # test rows run past 9,000 tokens (65 kB cells)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [column for column in columns if column not in (reader.fieldnames or [])]
            if missing:
                raise row_error(
                    path, "1 (header)", missing[0], f"missing column (found: {reader.fieldnames})"
                )
            for row in reader:
                yield reader.line_num, row
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except csv.Error as error:
        raise DataError(f"{path}: not a readable CSV ({error})") from None


def read_task7_csv(path: Path, split: str) -> list[dict]:
    """An official Task 7 CSV (tokens, labels, ID, ner_tags); `labels` is ignored, `ner_tags` is the BIO gold.

    Train IDs repeat, so train rows get fresh ids (train_0000, ...); dev IDs are unique and kept.
    """
    rows, seen = [], set()
    for line_number, record in read_csv_rows(path, ["ID", "tokens", "ner_tags"]):
        source_id = record["ID"]
        where = f"{source_id} (line {line_number})"
        tokens = parse_list_cell(path, where, "tokens", record["tokens"])
        tags = parse_list_cell(path, where, "ner_tags", record["ner_tags"])
        check_tags(path, where, tokens, tags)
        row_id = f"train_{len(rows):04d}" if split == "train" else source_id
        if row_id in seen:
            raise row_error(path, where, "ID", f"duplicate ID {source_id!r}")
        seen.add(row_id)
        rows.append({"id": row_id, "source_id": source_id, "tokens": tokens, "tags": tags})
    return rows


def read_test_csv(path: Path) -> list[dict]:
    """An unlabeled test CSV (ID, tokens); IDs must be unique and are kept."""
    rows, seen = [], set()
    for line_number, record in read_csv_rows(path, ["ID", "tokens"]):
        where = f"{record['ID']} (line {line_number})"
        if record["ID"] in seen:
            raise row_error(path, where, "ID", f"duplicate ID {record['ID']!r}")
        seen.add(record["ID"])
        tokens = parse_list_cell(path, where, "tokens", record["tokens"])
        rows.append({"id": record["ID"], "source_id": record["ID"], "tokens": tokens})
    return rows


def read_conll(path: Path, prefix: str) -> list[dict]:
    """`token<TAB>tag` lines, a blank line between sentences; ids prefix_00000, ..."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows, tokens, tags = [], [], []

    def flush():
        if tokens:
            row_id = f"{prefix}_{len(rows):05d}"
            rows.append({"id": row_id, "source_id": row_id, "tokens": tokens.copy(), "tags": tags.copy()})
            tokens.clear()
            tags.clear()

    try:
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    flush()
                    continue
                if line.startswith("-DOCSTART-"):
                    continue
                where = f"{prefix}_{len(rows):05d} (line {line_number})"
                parts = line.split("\t")
                if len(parts) != 2 or not parts[0]:
                    raise row_error(path, where, "line", f"expected token<TAB>tag, got {line[:40]!r}")
                check_tags(path, where, [parts[0]], [parts[1]], field="tag")
                tokens.append(parts[0])
                tags.append(parts[1])
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    flush()
    return rows


def read_hf(dataset_id: str, required: tuple[str, ...] = ("train", "validation")) -> dict[str, list[dict]]:
    """A Hugging Face dataset (hub id, or a folder saved with save_to_disk): {"train", "dev"?, "test"?}
    from its splits train / validation / test; a split in `required` must be there."""
    import datasets  # slow to import; only this source needs it
    import huggingface_hub

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()  # hub retries would log many lines; the user gets one error line
    huggingface_hub.utils.logging.set_verbosity_error()
    try:
        if Path(dataset_id).exists():
            loaded = datasets.load_from_disk(dataset_id)
        else:
            loaded = datasets.load_dataset(dataset_id)
    except (OSError, ValueError) as error:  # offline hub, missing or unsaved folder: the user needs one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{dataset_id}: cannot load the dataset ({reason})") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"{dataset_id}: expected a DatasetDict with train and validation splits")
    result = {}
    for split, prefix in (("train", "train"), ("validation", "dev"), ("test", "test")):
        if split not in loaded:
            if split not in required:
                continue
            raise DataError(f"{dataset_id}: missing split {split!r} (found: {list(loaded)})")
        result[prefix] = hf_rows(loaded[split], f"{dataset_id} [{split}]", prefix, labeled=prefix != "test")
    return result


def hf_rows(split, name: str, prefix: str, labeled: bool) -> list[dict]:
    """Rows of one HF split; ClassLabel tag ids become their names."""
    for column in ("tokens", "ner_tags") if labeled else ("tokens",):
        if column not in split.column_names:
            raise row_error(name, "-", column, f"missing column (found: {split.column_names})")
    names = None
    if labeled:
        inner = getattr(split.features["ner_tags"], "feature", None)
        names = getattr(inner, "names", None)  # ClassLabel names, else the tags are strings already
    rows = []
    for index, record in enumerate(split.to_list()):
        row_id = f"{prefix}_{index:05d}"
        source_id = str(record.get("id", row_id))
        tokens = record["tokens"]
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise row_error(name, row_id, "tokens", "not a non-empty list of strings")
        row = {"id": row_id, "source_id": source_id, "tokens": tokens}
        if labeled:
            tags = record["ner_tags"]
            if names is not None:
                if not all(isinstance(t, int) and 0 <= t < len(names) for t in tags):
                    raise row_error(name, row_id, "ner_tags", f"tag id outside the ClassLabel names {names}")
                tags = [names[t] for t in tags]
            check_tags(name, row_id, tokens, tags)
            row["tags"] = tags
        rows.append(row)
    return rows


# ----- Sources -----


def fetch_task7(download_dir: Path) -> Path:
    """Download the official train/dev CSVs into download_dir; DataError (suggesting --source) on failure."""
    download_dir.mkdir(parents=True, exist_ok=True)
    for name in TASK7_FILES.values():
        url = TASK7_URL + name
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                (download_dir / name).write_bytes(response.read())
        except OSError as error:  # URLError, HTTPError and timeouts are all OSErrors
            reason = getattr(error, "reason", error)
            raise DataError(
                f"{url}: download failed ({reason}); pass --source DIR (a folder with new_train_data.csv "
                "and new_dev_data.csv)"
            ) from None
    return download_dir


def check_sha256(path: Path, expected: str) -> str:
    """The file's sha256; DataError when it differs from the recorded official value."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    actual = sha256_file(path)
    if actual != expected:
        raise DataError(
            f"{path}: sha256 mismatch: expected {expected[:12]}..., got {actual[:12]}... "
            "(not the official Task 7 release)"
        )
    return actual


def load_source(args, download_dir: Path) -> dict:
    """Read the chosen source: {"train", "dev", "test"?, "source", "format", "inputs"}."""
    if args.hf:
        data = read_hf(args.hf)
        return {**data, "source": args.hf, "format": "hf", "inputs": {}}
    if args.source and not Path(args.source).is_dir():
        raise DataError(f"{args.source}: not a folder; --source takes the folder that holds the data files")
    if args.format == "conll":
        if not args.source:
            raise DataError("--format conll needs --source DIR (a folder with train.tsv and devel.tsv)")
        folder = Path(args.source)
        missing = [name for name in CONLL_FILES if not (folder / name).is_file()]
        if missing:
            raise DataError(
                f"{folder / missing[0]}: file not found; --format conll expects train.tsv and devel.tsv "
                f"(optionally test.tsv) in {folder}"
            )
        data = {
            "train": read_conll(folder / "train.tsv", "train"),
            "dev": read_conll(folder / "devel.tsv", "dev"),
        }
        names = ["train.tsv", "devel.tsv"]
        if (folder / "test.tsv").is_file():
            data["test"] = tokens_only(read_conll(folder / "test.tsv", "test"))  # its tags are not used
            names.append("test.tsv")
        inputs = {name: sha256_file(folder / name) for name in names}
        return {**data, "source": str(folder.resolve()), "format": "conll", "inputs": inputs}
    folder = Path(args.source) if args.source else fetch_task7(download_dir)
    has_csvs = all((folder / name).is_file() for name in TASK7_FILES.values())
    if args.source and not has_csvs and any(folder.glob("*.tsv")):
        raise DataError(
            f"{folder}: no Task 7 CSVs ({', '.join(TASK7_FILES.values())}) but .tsv files; "
            "for token<TAB>tag folders add `--format conll`"
        )
    inputs = {name: check_sha256(folder / name, TASK7_SHA256[name]) for name in TASK7_FILES.values()}
    data = {split: read_task7_csv(folder / name, split) for split, name in TASK7_FILES.items()}
    source = str(folder.resolve()) if args.source else TASK7_URL
    return {**data, "source": source, "format": "task7", "inputs": inputs}


def parse_aux_options(texts: list[str]) -> list[tuple[str, str]]:
    """(name, source) for each --aux NAME=SOURCE, in order; DataError for a bad or repeated NAME."""
    parsed, seen = [], set()
    for text in texts:
        name, sep, source = text.partition("=")
        if not sep or not source:
            raise DataError(f"--aux {text!r}: expected NAME=SOURCE, e.g. --aux ncbi=path/to/ncbi-disease")
        if not AUX_NAME_PATTERN.fullmatch(name):
            raise DataError(
                f"--aux {text!r}: NAME must be a simple identifier (a letter, then letters, digits or _), "
                f"not {name!r}"
            )
        if name in seen:
            raise DataError(f"--aux {name}: given twice")
        seen.add(name)
        parsed.append((name, source))
    return parsed


def read_aux_source(name: str, source: str) -> dict:
    """The labelled rows of an auxiliary set: train and devel (validation) together, since none of it is
    scored; its test split is left out. Returns {"rows", "source", "format", "used", "inputs"}."""
    folder = Path(source)
    if folder.is_dir() and (folder / "train.tsv").is_file():
        used = [file for file in CONLL_FILES if (folder / file).is_file()]
        prefixes = {"train.tsv": "train", "devel.tsv": "dev"}  # row ids as for the main data
        rows = [row for file in used for row in read_conll(folder / file, prefixes[file])]
        inputs = {file: sha256_file(folder / file) for file in used}
        return {
            "rows": rows,
            "source": str(folder.resolve()),
            "format": "conll",
            "used": used,
            "inputs": inputs,
        }
    if folder.exists() and not (folder / "dataset_dict.json").is_file():
        raise DataError(
            f"--aux {name}={source}: expected a CoNLL folder (train.tsv, optionally devel.tsv) or a "
            "Hugging Face dataset (a hub id or a save_to_disk folder)"
        )
    splits = read_hf(source, required=("train",))
    used = ["train", "validation"] if "dev" in splits else ["train"]
    rows = splits["train"] + splits.get("dev", [])
    return {"rows": rows, "source": source, "format": "hf", "used": used, "inputs": {}}


# ----- Split, count, write -----


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """Spans (type, start, end inclusive) under the conlleval rules, as seqeval reads them."""
    from seqeval.metrics.sequence_labeling import get_entities  # pulls in scikit-learn (~1 s): load on use

    return get_entities(list(tags))


def split_holdout(dev: list[dict], frac: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(val, holdout): a seeded share of the dev rows, stratified by whether a row has any span."""
    if frac == 0:
        return dev, []
    has_span = {row["id"]: bool(entities(row["tags"])) for row in dev}
    total = round(frac * len(dev))
    with_span = sorted(i for i, flag in has_span.items() if flag)
    without_span = sorted(i for i, flag in has_span.items() if not flag)
    take_with = round(total * len(with_span) / len(dev))
    rng = random.Random(seed)  # not hash(): stable across processes and machines
    chosen = set()
    for ids, count in ((with_span, take_with), (without_span, total - take_with)):
        shuffled = ids.copy()
        rng.shuffle(shuffled)
        chosen.update(shuffled[:count])
    val = [row for row in dev if row["id"] not in chosen]
    holdout = [row for row in dev if row["id"] in chosen]
    if not val or not holdout:
        raise DataError(f"dev split: {len(dev)} rows are too few for --holdout-frac {frac:g}")
    return val, holdout


def span_counts(rows: list[dict], types: list[str]) -> dict[str, int]:
    counts = Counter(span[0] for row in rows for span in entities(row["tags"]))
    return {entity_type: counts.get(entity_type, 0) for entity_type in types}


def entity_types_of(rows: list[dict]) -> list[str]:
    return sorted({tag[2:] for row in rows for tag in row["tags"] if tag != "O"})


def bio_labels(types: list[str]) -> list[str]:
    return ["O"] + [f"{prefix}-{t}" for t in types for prefix in ("B", "I")]


def check_unique_ids(splits: dict[str, list[dict]]) -> None:
    """Ids must be unique across every split, since predictions and gold are matched by id."""
    seen = {}
    for split, rows in splits.items():
        for row in rows:
            if row["id"] in seen:
                raise row_error(split, row["id"], "id", f"also in {seen[row['id']]}; ids must be unique")
            seen[row["id"]] = split


def tokens_only(rows: list[dict]) -> list[dict]:
    return [{"id": row["id"], "source_id": row["source_id"], "tokens": row["tokens"]} for row in rows]


def build(data: dict, holdout_frac: float, seed: int, staging: Path) -> tuple[dict, dict, list[dict]]:
    """Write the split files into staging; return the manifest (not yet written), the rows of the splits the
    task card may describe (train, val, test) and the holdout gold rows."""
    val, holdout = split_holdout(data["dev"], holdout_frac, seed)
    labeled = {"train": data["train"], "val": val, "holdout": holdout}
    test = data.get("test")
    check_unique_ids({**labeled, "test": test or []})
    types = entity_types_of([row for rows in labeled.values() for row in rows])
    splits = {}
    for name, rows in labeled.items():
        if name == "holdout" and not rows:
            continue
        write_jsonl(staging / f"{name}.jsonl", tokens_only(rows) if name == "holdout" else rows)
        splits[name] = {"rows": len(rows), "spans": span_counts(rows, types)}
    if test is not None:
        write_jsonl(staging / "test.jsonl", tokens_only(test))
        splits["test"] = {"rows": len(test)}
    manifest = {
        "source": data["source"],
        "format": data["format"],
        "inputs": data["inputs"],
        "labels": bio_labels(types),
        "entity_types": types,
        "splits": splits,
        "split_seed": seed,
        "holdout_frac": holdout_frac,
    }
    gold = [{"id": row["id"], "tags": row["tags"]} for row in holdout]
    described = {"train": data["train"], "val": val, **({"test": test} if test is not None else {})}
    return manifest, described, gold


def write_aux(name: str, aux: dict, staging: Path) -> dict:
    """data/aux/NAME/train.jsonl and its manifest.json; returns the main manifest's entry for it."""
    rows = aux["rows"]
    types = entity_types_of(rows)
    if not types:
        raise DataError(f"--aux {name}={aux['source']}: no entity spans in its labelled rows")
    check_unique_ids({f"aux {name}": rows})
    folder = staging / AUX_DIR / name
    write_jsonl(folder / "train.jsonl", rows)
    own = {
        "name": name,
        "source": aux["source"],
        "format": aux["format"],
        "used": aux["used"],
        "inputs": aux["inputs"],
        "labels": bio_labels(types),
        "entity_types": types,
        "rows": len(rows),
        "spans": span_counts(rows, types),
        "files": {"train.jsonl": sha256_file(folder / "train.jsonl")},
    }
    write_json(folder / "manifest.json", own)
    files = {
        f"{AUX_DIR}/{name}/{file}": sha256_file(folder / file) for file in ("train.jsonl", "manifest.json")
    }
    entry_keys = ("source", "format", "used", "labels", "entity_types", "rows", "spans")
    return {**{key: own[key] for key in entry_keys}, "files": files}


# ----- The task card (data/task.md: what the agent is told about the task) -----


def split_table(described: dict[str, list[dict]], types: list[str]) -> list[str]:
    """A markdown table: rows, words per row and span counts of each split the card describes."""
    lines = ["| split | rows | words per row (mean / max) | spans |", "|---|---|---|---|"]
    for name, rows in described.items():
        lengths = [len(row["tokens"]) for row in rows] or [0]
        if rows and "tags" in rows[0]:
            spans = ", ".join(f"{t} {n:,}" for t, n in span_counts(rows, types).items())
        else:
            spans = "(unlabeled)"
        lines.append(
            f"| {name} | {len(rows):,} | {statistics.mean(lengths):.1f} / {max(lengths):,} | {spans} |"
        )
    return lines


def shown_source(source: str) -> str:
    """A source as the task card names it: a local folder by its name only (the card goes to the agent's LLM,
    which has no business knowing the user's directories); a hub id or a URL as it is."""
    return Path(source).name if Path(source).is_absolute() else source


def task_card(manifest: dict, described: dict[str, list[dict]]) -> str:
    """A short description of the task, written from the data; Task 7 gets its entity types explained."""
    types = manifest["entity_types"]
    if manifest["format"] == "task7":
        lines = [
            "# The task: impacts of non-medical opioid use in Reddit posts (#SMM4H-HeaRD 2026 Task 7)",
            "",
            "Find the spans where a Reddit user reports a consequence of non-medical opioid use, tagged BIO",
            "over the given word tokens. Two entity types:",
            *(f"- `{name}`: {TASK7_TYPES[name]}." for name in types if name in TASK7_TYPES),
            "",
            "The text is informal Reddit writing: mojibake (`â€™`), markers such as",
            "`submission_title : -`, split contractions, slang and typos. Spans are rare (most tokens are",
            "`O`) and their boundaries are fuzzy; the training set is small, so scores vary between seeds",
            "by more than many changes gain.",
        ]
    else:
        name = shown_source(manifest["source"])
        lines = [
            f"# The task: named-entity recognition on {name}",
            "",
            (
                f"Find the spans of {len(types)} entity type{'s' * (len(types) != 1)}, tagged BIO over the "
                f"given word tokens: {', '.join(f'`{t}`' for t in types)}."
            ),
            "(Written by prepare.py from the data alone; `prepare.py --task-card FILE` replaces it.)",
        ]
    source_line = f"Source: {shown_source(manifest['source'])} ({manifest['format']})."
    lines += ["", *split_table(described, types), "", source_line]
    if manifest.get("aux"):
        lines += ["", "Auxiliary NER sets prepared for transfer (`AUX_DATASETS` in train.py):"]
        for aux_name, entry in manifest["aux"].items():
            lines.append(
                f"- `{aux_name}`: {entry['rows']:,} rows, types {', '.join(entry['entity_types'])} "
                f"(from {shown_source(entry['source'])})"
            )
    return "\n".join(lines) + "\n"


def write_task_card(staging: Path, manifest: dict, described: dict, user_card: str | None) -> dict:
    """data/task.md: the user's file as it is, or one written from the data; returns the manifest entry."""
    path = staging / TASK_CARD
    if user_card:
        try:
            text = Path(user_card).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{user_card}: task card not found") from None
        except (OSError, UnicodeDecodeError) as error:
            raise DataError(f"{user_card}: cannot read the task card as UTF-8 text ({error})") from None
        if not text.strip():
            raise DataError(f"{user_card}: the task card is empty")
        path.write_text(text, encoding="utf-8")
        return {"file": TASK_CARD, "source": str(Path(user_card).resolve())}
    path.write_text(task_card(manifest, described), encoding="utf-8")
    return {"file": TASK_CARD, "source": "written by prepare.py from the data"}


# ----- Install -----


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


def write_gold(gold_bytes: bytes, holdout_file: Path) -> Path:
    """Write the holdout gold to the cache (outside the repository), keyed by the holdout file's sha256."""
    path = cache_dir() / "holdout" / f"{sha256_file(holdout_file)}.jsonl"
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
        gold_path = write_gold(gold_bytes, staging / "holdout.jsonl") if gold else None
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


if __name__ == "__main__":
    sys.exit(main())
