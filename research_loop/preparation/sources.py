"""Where the rows come from: the official Task 7 CSVs (downloaded and sha256-checked, or from a folder),
token<TAB>tag folders, Hugging Face datasets, an unlabeled test CSV and the auxiliary sets for transfer.
Each reader returns rows {"id", "source_id", "tokens", "tags"?} and names file, row and field in its errors."""

from __future__ import annotations

import ast
import csv
import re
import sys
import urllib.request
from pathlib import Path

from prepare import DataError, row_error, sha256_file

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
AUX_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


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


# ----- Readers -----


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


def tokens_only(rows: list[dict]) -> list[dict]:
    return [{"id": row["id"], "source_id": row["source_id"], "tokens": row["tokens"]} for row in rows]


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
