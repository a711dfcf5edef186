"""The official Task 7 scorer (FIXED file): strict (seqeval) and relaxed (token-overlap) span P/R/F1.

Usage: python evaluate.py PRED --gold GOLD [--json OUT] [--subset] [--types A,B]
PRED and GOLD are prepared JSONL files ({"id", "tags"} per line) or official CSVs
(ID + predicted_ner_tags or ner_tags). A predicted entity type outside the task's types is an error; the
types come from --types, else the manifest.json beside GOLD, else GOLD's own spans.
Exit codes: 0 scored, 2 bad input, 1 when the reader of stdout closed it early (`... | head -1`).
The math is pure; file reading and printing come after it.
"""

from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

TAG_PATTERN = re.compile(r"O|[BI]-\S+")
TAG_COLUMNS = ("predicted_ner_tags", "ner_tags")  # official prediction column first, then gold
SHOWN_IDS = 3  # how many offending ids an error message lists


class ScoreError(Exception):
    """Bad scorer input; the message is one line naming the file, the row and what is wrong."""


# ----- Metrics (pure) -----


def spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) spans with end exclusive, read as seqeval's default (conlleval) mode does."""
    from seqeval.metrics.sequence_labeling import get_entities  # imported here: it pulls in scikit-learn

    return [(span_type, start, end + 1) for span_type, start, end in get_entities(list(tags))]


def _prf(hits: float, predicted: float, gold: float) -> dict:
    """Precision, recall and F1 from counts; any zero division gives 0.0, as seqeval and the organisers do."""
    precision = hits / predicted if predicted else 0.0
    recall = hits / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _summarise(hits: Counter, predicted: Counter, gold: Counter) -> dict:
    """Pooled and per-type P/R/F1 over every type seen in gold or predictions."""
    types = sorted(set(predicted) | set(gold))
    pooled = _prf(sum(hits.values()), sum(predicted.values()), sum(gold.values()))
    pooled["per_type"] = {t: _prf(hits[t], predicted[t], gold[t]) for t in types}
    return pooled


def _relaxed_hits(gold_spans: list, pred_spans: list) -> Counter:
    """Overlapping tokens per type, the organisers' way: a prediction of the same type counts its overlap with
    the first gold span it overlaps, and only once; one gold span may collect several predictions."""
    hits: Counter = Counter()
    used: set[int] = set()
    for gold_type, gold_start, gold_end in gold_spans:
        for index, (pred_type, pred_start, pred_end) in enumerate(pred_spans):
            if index in used or pred_type != gold_type:
                continue
            overlap = min(gold_end, pred_end) - max(gold_start, pred_start)
            # No break: one gold span may absorb several predictions, but each prediction counts once.
            if overlap > 0:
                hits[gold_type] += overlap
                used.add(index)
    return hits


def score(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Strict and relaxed micro P/R/F1, pooled and per type, for aligned rows of BIO tags."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold rows but {len(pred)} predicted rows")
    strict_hits, strict_pred, strict_gold = Counter(), Counter(), Counter()
    relaxed_hits, relaxed_pred, relaxed_gold = Counter(), Counter(), Counter()
    for row, (gold_tags, pred_tags) in enumerate(zip(gold, pred, strict=True)):
        if len(gold_tags) != len(pred_tags):
            raise ValueError(f"row {row}: {len(gold_tags)} gold tags but {len(pred_tags)} predicted")
        gold_spans, pred_spans = spans(gold_tags), spans(pred_tags)
        strict_gold.update(span[0] for span in gold_spans)
        strict_pred.update(span[0] for span in pred_spans)
        strict_hits.update(span[0] for span in set(gold_spans) & set(pred_spans))
        for span_type, start, end in gold_spans:
            relaxed_gold[span_type] += end - start
        for span_type, start, end in pred_spans:
            relaxed_pred[span_type] += end - start
        relaxed_hits.update(_relaxed_hits(gold_spans, pred_spans))
    return {
        "strict": _summarise(strict_hits, strict_pred, strict_gold),
        "relaxed": _summarise(relaxed_hits, relaxed_pred, relaxed_gold),
    }


# ----- Checks on in-memory rows -----


def _some(ids: list[str]) -> str:
    """The first few ids of a list, for an error message."""
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (", ..." if len(ids) > SHOWN_IDS else "")


def score_rows(gold: dict[str, list[str]], pred: dict[str, list[str]], pred_name: str = "PRED") -> dict:
    """Check that pred covers exactly the gold ids with rows of the gold lengths, then score()."""
    missing = [row_id for row_id in gold if row_id not in pred]
    if missing:
        raise ScoreError(
            f"{pred_name} lacks {len(missing)} of {len(gold)} gold ids ({_some(missing)}); "
            "pass --subset to score only the rows PRED has"
        )
    extra = [row_id for row_id in pred if row_id not in gold]
    if extra:
        raise ScoreError(f"{pred_name} has {len(extra)} ids not in the gold file ({_some(extra)})")
    for row_id, gold_tags in gold.items():
        if len(pred[row_id]) != len(gold_tags):
            raise ScoreError(
                f"{pred_name}: row {row_id}: {len(pred[row_id])} tags, but the gold row has {len(gold_tags)}"
            )
    ids = list(gold)
    return score([gold[row_id] for row_id in ids], [pred[row_id] for row_id in ids])


def _only_rows_in(gold: dict[str, list[str]], pred: dict[str, list[str]]) -> dict[str, list[str]]:
    """The gold rows whose ids PRED has (for --subset)."""
    return {row_id: tags for row_id, tags in gold.items() if row_id in pred}


# ----- Reading files -----


def _checked_tags(value: object, path: Path, row_id: str, field: str, entity_types=None) -> list[str]:
    """The value as a list of valid BIO tags (of `entity_types` when given), or a ScoreError naming file,
    row and field."""
    if not isinstance(value, list):
        raise ScoreError(f"{path}: row {row_id}: tags must be a list, got {type(value).__name__}")
    for position, tag in enumerate(value):
        if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag):
            raise ScoreError(f"{path}: row {row_id}: tag {tag!r} at position {position} is not O, B-X or I-X")
        if entity_types is not None and tag != "O" and tag[2:] not in entity_types:
            raise ScoreError(
                f"{path}: row {row_id}: {field}: unknown entity type {tag[2:]!r} in tag {tag!r} at position "
                f"{position} (the task's types: {', '.join(sorted(entity_types))})"
            )
    return value


def _add_row(
    rows: dict[str, list[str]], path: Path, row_id: object, tags: object, where: str, field: str, entity_types
) -> None:
    """Validate one row and add it, refusing empty or duplicate ids."""
    if not isinstance(row_id, str) or not row_id:
        raise ScoreError(f"{path}: {where}: the id must be a non-empty string, got {row_id!r}")
    if row_id in rows:
        raise ScoreError(f"{path}: row {row_id}: duplicate id")
    rows[row_id] = _checked_tags(tags, path, row_id, field, entity_types)


def _read_jsonl(path: Path, text: str, entity_types=None) -> dict[str, list[str]]:
    """id -> tags from a prepared JSONL file."""
    rows: dict[str, list[str]] = {}
    # Split on newlines only: str.splitlines would also break at U+2028 and friends inside token strings.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScoreError(f"{path}: line {line_number}: not valid JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:  # nesting too deep, a number too long to convert
            raise ScoreError(f"{path}: line {line_number}: not readable JSON ({type(exc).__name__})") from None
        if not isinstance(record, dict) or "id" not in record or "tags" not in record:
            raise ScoreError(f"{path}: line {line_number}: expected an object with 'id' and 'tags'")
        _add_row(rows, path, record["id"], record["tags"], f"line {line_number}", "tags", entity_types)
    return rows


def _read_csv(path: Path, text: str, entity_types=None) -> dict[str, list[str]]:
    """id -> tags from an official CSV, whose tag cells are Python list literals."""
    csv.field_size_limit(2**31 - 1)  # test rows run past 9,000 tokens: beyond csv's default 128 KiB cell
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    tag_column = next((name for name in TAG_COLUMNS if name in columns), None)
    if "ID" not in columns or tag_column is None:
        raise ScoreError(f"{path}: expected columns ID and one of {', '.join(TAG_COLUMNS)}; found {columns}")
    rows: dict[str, list[str]] = {}
    try:
        for line_number, record in enumerate(reader, start=2):
            row_id, cell = record["ID"], record[tag_column]
            if cell is None:
                raise ScoreError(f"{path}: row {row_id}: the {tag_column} cell is missing")
            try:
                tags = ast.literal_eval(cell)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise ScoreError(
                    f"{path}: row {row_id}: the {tag_column} cell is not a Python list literal: {cell[:40]!r}"
                ) from None
            _add_row(rows, path, row_id, tags, f"line {line_number}", tag_column, entity_types)
    except csv.Error as exc:
        raise ScoreError(f"{path}: line {reader.line_num}: unreadable CSV ({exc})") from None
    return rows


def read_tags(path: str | Path, entity_types=None) -> dict[str, list[str]]:
    """id -> tags from a prepared JSONL ("id", "tags") or an official CSV, validating every tag (and, with
    `entity_types`, that each tag's type is one of them)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:  # raw newlines, as csv wants
            text = file.read()
    except FileNotFoundError:
        raise ScoreError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScoreError(f"{path}: cannot read the file ({exc})") from None
    # A prepared JSONL starts with an object; anything else is treated as the official CSV.
    is_jsonl = path.suffix == ".jsonl" or (path.suffix != ".csv" and text.lstrip().startswith("{"))
    rows = _read_jsonl(path, text, entity_types) if is_jsonl else _read_csv(path, text, entity_types)
    if not rows:
        raise ScoreError(f"{path}: no rows")
    return rows


def score_files(
    pred_path: str | Path, gold_path: str | Path, *, subset: bool = False, entity_types=None
) -> dict:
    """Score a prediction file against a gold file, rows matched by id (subset: only PRED's rows).

    With `entity_types`, a predicted tag of any other type is a ScoreError; None checks nothing."""
    gold, pred = read_tags(gold_path), read_tags(pred_path, entity_types)
    if subset:
        gold = _only_rows_in(gold, pred)
    return score_rows(gold, pred, pred_name=str(pred_path))


def gold_types(gold: dict[str, list[str]]) -> set[str]:
    """The entity types of the gold rows' spans."""
    return {span[0] for tags in gold.values() for span in spans(tags)}


def task_types(gold_path: Path, types_option: str | None, gold: dict[str, list[str]]) -> set[str]:
    """The types a prediction may use: --types, else the manifest.json beside the gold file, else the
    gold's own."""
    if types_option is not None:
        types = {name.strip() for name in types_option.split(",") if name.strip()}
        if not types:
            raise ScoreError(f"--types {types_option!r}: expected entity types separated by commas, e.g. A,B")
        return types
    manifest_path = gold_path.parent / "manifest.json"
    if not manifest_path.is_file():
        return gold_types(gold)
    try:
        types = json.loads(manifest_path.read_text(encoding="utf-8"))["entity_types"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ScoreError(
            f"{manifest_path}: no entity_types list to check predictions against ({exc})"
        ) from None
    if not isinstance(types, list) or not all(isinstance(name, str) for name in types):
        raise ScoreError(f"{manifest_path}: entity_types must be a list of strings")
    return set(types)


# ----- Printing and CLI -----


def format_summary(result: dict) -> str:
    """The headline numbers as grep-able `key: value` lines, 4 decimals."""
    lines = []
    for mode in ("strict", "relaxed"):
        for metric in ("f1", "precision", "recall"):
            lines.append(f"{mode}_{metric}: {result[mode][metric]:.4f}")
    return "\n".join(lines)


def per_type_table(result: dict):
    """A rich table of strict and relaxed P/R/F1 for each type and overall (rich: the command line's only)."""
    from rich.table import Table

    table = Table(title="per type")
    table.add_column("type")
    for mode in ("strict", "relaxed"):
        for metric in ("P", "R", "F1"):
            table.add_column(f"{mode} {metric}", justify="right")
    types = sorted(set(result["strict"]["per_type"]) | set(result["relaxed"]["per_type"]))
    empty = {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    for name in [*types, "overall"]:
        cells = []
        for mode in ("strict", "relaxed"):
            figures = result[mode] if name == "overall" else result[mode]["per_type"].get(name, empty)
            cells += [f"{figures[metric]:.4f}" for metric in ("precision", "recall", "f1")]
        table.add_row(name, *cells)
    return table


def main(argv: list[str] | None = None) -> int:
    """Score PRED against GOLD and print the summary; bad input is one `error:` line and exit code 2."""
    parser = argparse.ArgumentParser(description="Score BIO tag predictions (Task 7 strict and relaxed F1).")
    parser.add_argument("pred", type=Path, help="predictions: prepared JSONL or official CSV")
    parser.add_argument("--gold", type=Path, required=True, help="gold tags: prepared JSONL or official CSV")
    parser.add_argument("--json", type=Path, dest="json_out", help="also write the full result dict here")
    parser.add_argument("--subset", action="store_true", help="score only the gold rows that PRED has")
    parser.add_argument(
        "--types",
        metavar="A,B",
        help="entity types predictions may use (default: from the manifest.json beside GOLD, else GOLD's)",
    )
    args = parser.parse_args(argv)
    try:
        gold = read_tags(args.gold)
        pred = read_tags(args.pred, task_types(args.gold, args.types, gold))
        scored_gold = _only_rows_in(gold, pred) if args.subset else gold
        result = score_rows(scored_gold, pred, pred_name=str(args.pred))
    except ScoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json_out:  # before printing, so a reader that stops early (`| head -1`) still gets the file
        try:
            args.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"error: {args.json_out}: cannot write ({exc.strerror})", file=sys.stderr)
            return 2
    if args.subset:
        print(f"note: --subset: scored {len(scored_gold)} of {len(gold)} gold rows", file=sys.stderr)
    try:
        print(format_summary(result))
        from rich.console import Console

        Console(width=110, file=sys.stdout).print(per_type_table(result))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped reading (`| head -1`). As the Python docs advise: point stdout at devnull so
        # the flush at exit does not raise again, and exit 1 rather than print a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
