"""results.tsv: one row per run, appended (fsynced) and never rewritten, and checked against the bytes the
loop itself wrote. The loop keeps its own copy outside the repository (in the integrity store), so a file
edited behind its back is noticed, reported, and put back."""

from __future__ import annotations

import csv
import io
import os
from datetime import datetime, timezone
from pathlib import Path

from research_loop.records.run_record import (
    PLAIN_CELLS_MARKER,
    RecordError,
    RunRecord,
    columns_for,
    entity_types_in,
    escape_cell,
)
from research_loop.safe_io import UnsafeFile, append_durably, open_no_follow, read_bytes, write_atomically

RESULTS_FILE = "results.tsv"
STATE_FILE = "CURRENT_STATE.md"


def now_iso() -> str:
    """A UTC timestamp to the second, for the timestamp column."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def parse(data: bytes, where: str = RESULTS_FILE) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows as cell dicts) of a results.tsv's bytes; old CSV-quoted files are read as such."""
    text = data.decode("utf-8", errors="replace")
    if not text.strip():
        return [], []
    header = text.split("\n", 1)[0].rstrip("\r").split("\t")
    if PLAIN_CELLS_MARKER in header:
        lines = text.split("\n")[1:]  # only the loop's own newline ends a row
        rows = [dict(zip(header, line.split("\t"))) for line in lines if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t"))
    for row in rows:  # unescape what escape_cell wrote
        for key, value in row.items():
            if value and "\\" in value:
                row[key] = _unescape(value)
    return header, rows


def _unescape(value: str) -> str:
    out, index = [], 0
    while index < len(value):
        char = value[index]
        if char == "\\" and value[index + 1: index + 2] == "u" and len(value[index + 2: index + 6]) == 4:
            try:
                out.append(chr(int(value[index + 2: index + 6], 16)))
                index += 6
                continue
            except ValueError:
                pass
        if char == "\\" and index + 1 < len(value):
            following = value[index + 1]
            out.append({"t": "\t", "n": "\n", "\\": "\\"}.get(following, "\\" + following))
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)


def read_records(path: Path, tag: str | None = None) -> list[RunRecord]:
    """Every row of a results.tsv (of one tag, when given) as records; [] when the file does not exist."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return []
    _, rows = parse(data, str(path))
    records = [RunRecord.from_cells(row, f"{path}") for row in rows]
    return [record for record in records if tag is None or record.tag == tag]


def tag_of(path: Path) -> str | None:
    """The tag a results.tsv belongs to (its first row's), or None for an empty or missing file."""
    try:
        _, rows = parse(read_bytes(path))
    except (FileNotFoundError, UnsafeFile):
        return None
    return (rows[0].get("tag") or None) if rows else None


def header_of(path: Path) -> list[str]:
    try:
        return parse(read_bytes(path))[0]
    except FileNotFoundError:
        return []


def encode_row(record: RunRecord, header: list[str]) -> bytes:
    cells = record.to_cells(entity_types_in(header))
    return ("\t".join(cells.get(column, "") for column in header) + "\n").encode("utf-8")


class Ledger:
    """The repository's results.tsv and the loop's own copy of it (`mirror`, outside the repository)."""

    def __init__(self, path: Path, mirror: Path, entity_types: list[str]):
        self.path, self.mirror, self.entity_types = Path(path), Path(mirror), entity_types

    def records(self, tag: str | None = None) -> list[RunRecord]:
        return read_records(self.path, tag)

    def append(self, record: RunRecord) -> None:
        """Append one row (header first for a new file), fsynced, and the same bytes to the mirror."""
        header = header_of(self.path) or columns_for(self.entity_types)
        data = encode_row(record, header)
        if not self.path.exists() or self.path.stat().st_size == 0:
            data = ("\t".join(header) + "\n").encode("utf-8") + data
        append_durably(self.path, data)
        append_durably(self.mirror, data)

    def migrate(self) -> list[str]:
        """An older night's results.tsv gets the columns added since, in place (empty cells in its rows, the
        same bytes in the mirror), so a resumed night records them instead of dropping them. Returns the
        columns added."""
        header = header_of(self.path)
        if not header:
            return []
        missing = [column for column in columns_for(entity_types_in(header)) if column not in header]
        if not missing:
            return []
        _, rows = parse(read_bytes(self.path))
        columns = [*header, *missing]  # with the new columns, cells are written plain (escaped), never quoted
        text = "\t".join(columns) + "\n" + "".join(
            "\t".join(escape_cell(row.get(column) or "") for column in columns) + "\n" for row in rows)
        data = text.encode("utf-8")
        write_atomically(self.path, data)
        write_atomically(self.mirror, data)
        return missing

    def drop_partial_row(self) -> bool:
        """Cut a last line that a kill left without its newline (an unfinished append); True when it did."""
        changed = False
        for path in (self.path, self.mirror):
            if not path.is_file() or path.stat().st_size == 0:
                continue
            data = read_bytes(path)
            if data.endswith(b"\n"):
                continue
            fd = open_no_follow(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, data.rfind(b"\n") + 1)
                os.fsync(fd)
            finally:
                os.close(fd)
            changed = changed or path == self.path
        return changed

    def problem(self) -> str | None:
        """Why results.tsv is not what the loop wrote (None when it is, or when neither exists yet)."""
        try:
            actual = read_bytes(self.path)
        except FileNotFoundError:
            actual = None
        except UnsafeFile as exc:
            return str(exc)
        expected = read_bytes(self.mirror) if self.mirror.is_file() else None
        if actual == expected or (expected is None and actual is None):
            return None
        if expected is None:
            return None  # a results.tsv from before the mirror existed: adopted by adopt()
        if actual is None:
            return f"{self.path.name} was deleted"
        return f"{self.path.name} differs from the rows the loop wrote"

    def adopt(self) -> None:
        """Take the current results.tsv as the loop's own (first start with this mirror)."""
        if self.path.is_file() and not self.mirror.exists():
            write_atomically(self.mirror, read_bytes(self.path))

    def restore(self, save_to: Path) -> None:
        """Move the altered results.tsv to save_to and put the loop's own rows back."""
        if self.path.exists() or self.path.is_symlink():
            save_to.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, save_to)
        if self.mirror.is_file():
            write_atomically(self.path, read_bytes(self.mirror))


__all__ = ["RESULTS_FILE", "STATE_FILE", "Ledger", "RecordError", "RunRecord", "now_iso", "read_records", "tag_of"]
