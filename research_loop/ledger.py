"""results.tsv: one tab-separated row per run, appended (flushed and fsynced) and never rewritten."""

from __future__ import annotations

import csv
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

RESULTS_FILE = "results.tsv"
STATE_FILE = "CURRENT_STATE.md"
STATUSES = ("baseline", "keep", "discard", "crash", "timeout", "invalid")
# Statuses whose train.py actually ran: their text counts for the duplicate check.
RAN_STATUSES = ("baseline", "keep", "discard", "crash", "timeout")
KEPT_STATUSES = ("baseline", "keep")

HEAD_COLUMNS = ["run", "tag", "commit", "status", "strict_f1", "relaxed_f1"]
TAIL_COLUMNS = [
    "peak_vram_gb", "seconds", "seed_scores", "strict_f1_sd", "seeds", "cost_usd", "tokens_in", "tokens_out",
    "direction", "description", "note", "timestamp",
]


def columns_for(entity_types: list[str]) -> list[str]:
    """The header: fixed columns, one strict_f1_<TYPE> per entity type, then the rest."""
    return [*HEAD_COLUMNS, *(f"strict_f1_{name}" for name in entity_types), *TAIL_COLUMNS]


def one_line(text: object) -> str:
    """A cell that cannot break the TSV: tabs and newlines become visible escapes."""
    return str(text).replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "").replace("\n", "\\n")


def now_iso() -> str:
    """A UTC timestamp to the second, for the timestamp column."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def read_rows(path: Path) -> list[dict]:
    """Every row of a results.tsv as dicts of strings ([] when the file does not exist)."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def append_row(path: Path, row: dict, columns: list[str]) -> None:
    """Append one row (writing the header first for a new file), then flush and fsync."""
    new_file = not path.is_file() or path.stat().st_size == 0
    if not new_file:
        with path.open(encoding="utf-8", newline="") as file:
            columns = next(csv.reader(file, delimiter="\t"))  # an existing file keeps its own header
    with path.open("a", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns, delimiter="\t", lineterminator="\n",
                                extrasaction="ignore", restval="")
        if new_file:
            writer.writeheader()
        writer.writerow({key: one_line(value) for key, value in row.items() if value is not None})
        file.flush()
        os.fsync(file.fileno())


def tag_of(rows: list[dict]) -> str | None:
    """The tag a results.tsv belongs to (from its first row), or None for an empty or tag-less file."""
    return (rows[0].get("tag") or None) if rows else None


def _free_name(path: Path) -> Path:
    """path, or path.1, path.2, ... : the first name not taken, so an archive never overwrites."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.{number}")
    return candidate


def switch_tag(repo: Path, tag: str) -> str | None:
    """Archive another tag's results.tsv and CURRENT_STATE.md under runs/<oldtag>/, and bring back this
    tag's archived ones; nothing is deleted. Returns the archived tag, if any."""
    results = repo / RESULTS_FILE
    old_tag = tag_of(read_rows(results)) if results.is_file() else None
    archived = None
    if results.is_file() and old_tag != tag:
        archived = old_tag or "untagged-" + datetime.now().strftime("%Y%m%d-%H%M%S")
        archive_dir = repo / "runs" / archived
        archive_dir.mkdir(parents=True, exist_ok=True)
        for name in (RESULTS_FILE, STATE_FILE):
            if (repo / name).is_file():
                shutil.move(repo / name, _free_name(archive_dir / name))
    if not results.is_file():
        for name in (RESULTS_FILE, STATE_FILE):
            saved = repo / "runs" / tag / name
            if saved.is_file():
                shutil.move(saved, repo / name)
    return archived


def as_float(value: str | None) -> float | None:
    """A cell as a float, or None when empty."""
    return float(value) if value not in (None, "") else None


def drop_partial_row(path: Path) -> bool:
    """Cut a last line that a kill left without its newline (an unfinished append); True when it did."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return False
    with path.open("r+b") as file:
        file.truncate(data.rfind(b"\n") + 1)
        file.flush()
        os.fsync(file.fileno())
    return True
