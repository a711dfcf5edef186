"""One results.tsv row as a typed record: `Status` and `RunRecord`, parsed once where rows are read.

The file format stays a tab-separated table with a header. Files written before the `device` column was
added quoted cells CSV-style (a description with a quote became `"...""x""..."`); newer files write every
cell as it is (tabs, newlines and backslashes escaped as \\t, \\n, \\\\), and the header tells which is which.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field, fields
from statistics import mean, stdev


class Status(str, enum.Enum):
    BASELINE = "baseline"  # the unmodified train.py, run on every seed/fold: the first best
    KEEP = "keep"  # beat the best by the policy's margin; the branch moved to it
    DISCARD = "discard"  # ran and scored, not kept
    CRASH = "crash"  # train.py failed (exit code, out of memory, unusable predictions)
    TIMEOUT = "timeout"  # killed at the wall-clock limit
    INVALID = "invalid"  # never ran: did not compile, a duplicate, a closed direction, stale, tampering

    def __str__(self) -> str:
        return self.value

    @property
    def kept(self) -> bool:
        return self in (Status.BASELINE, Status.KEEP)

    @property
    def ran(self) -> bool:
        """train.py ran (its text counts for the duplicate check)."""
        return self is not Status.INVALID

    @property
    def failed(self) -> bool:
        return self in (Status.CRASH, Status.TIMEOUT)

    @property
    def scored(self) -> bool:
        return self in (Status.BASELINE, Status.KEEP, Status.DISCARD)


HEAD_COLUMNS = ["run", "tag", "commit", "status", "strict_f1", "relaxed_f1"]
TAIL_COLUMNS = ["peak_vram_gb", "seconds", "seed_scores", "strict_f1_sd", "seeds", "cost_usd", "tokens_in",
                "tokens_out", "direction", "description", "note", "timestamp"]
# Added later; a file whose header has them writes plain cells (see the module docstring).
NEW_COLUMNS = ["device", "sandbox", "folds", "epochs", "workers", "parent"]
PLAIN_CELLS_MARKER = "device"


class RecordError(ValueError):
    """A results.tsv cell that cannot be read; the message is one line naming the file, run and column."""


def columns_for(entity_types: list[str]) -> list[str]:
    """The header of a new results.tsv: fixed columns, one strict_f1_<TYPE> per entity type, then the rest."""
    return [*HEAD_COLUMNS, *(f"strict_f1_{name}" for name in entity_types), *TAIL_COLUMNS, *NEW_COLUMNS]


def entity_types_in(columns: list[str]) -> list[str]:
    return [column.removeprefix("strict_f1_") for column in columns
            if column.startswith("strict_f1_") and column != "strict_f1_sd"]


ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": ""}


def escape_cell(value: object) -> str:
    """A cell that cannot break the TSV or a line-based reader: tabs and newlines become \\t and \\n; every
    other control or line-separator character, and any lone surrogate, becomes \\uXXXX."""
    out = []
    for char in str(value):
        code = ord(char)
        if char in ESCAPES:
            out.append(ESCAPES[char])
        elif code < 32 or 0x7F <= code <= 0x9F or char in "\u2028\u2029" or 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def _f(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _numbers(values: list[float]) -> str:
    return ",".join(_f(value) for value in values)


@dataclass
class RunRecord:
    """One run: a proposal that was checked, and (unless invalid) trained on one or more seeds/folds."""

    run: int
    tag: str
    status: Status
    commit: str = ""
    strict_f1: float | None = None  # mean over seeds; in CV mode, strict F1 pooled over the folds' rows
    relaxed_f1: float | None = None
    per_type: dict[str, float | None] = field(default_factory=dict)  # strict F1 per entity type
    peak_vram_gb: float | None = None
    seconds: float = 0.0  # train.py's wall time, every seed/fold summed
    seed_scores: list[float] = field(default_factory=list)  # strict F1 of each seed/fold, in trial order
    strict_f1_sd: float | None = None
    seeds: list[int] = field(default_factory=list)
    folds: list[int] = field(default_factory=list)  # empty unless --eval cv
    cost_usd: float | None = 0.0  # None: the agent's cost is not known (an unpriced model)
    tokens_in: int = 0
    tokens_out: int = 0
    direction: str = ""
    description: str = ""
    note: str = ""
    timestamp: str = ""
    device: str = ""
    sandbox: str = ""
    epochs: float | None = None  # epochs train.py actually did, mean over seeds/folds
    workers: list[str] = field(default_factory=list)  # which worker ran each seed/fold
    parent: str = ""  # the best commit the proposal was based on

    @property
    def trials(self) -> int:
        return len(self.seed_scores)

    @property
    def trial_keys(self) -> list[tuple[int, int | None]]:
        """(seed, fold) of each scored trial, for pairing with another run's."""
        folds = self.folds or [None] * len(self.seeds)
        return list(zip(self.seeds, folds))[: len(self.seed_scores)]

    def scores_by_trial(self) -> dict[tuple[int, int | None], float]:
        return dict(zip(self.trial_keys, self.seed_scores))

    def set_scores(self, strict: list[float], relaxed: list[float], per_type: dict[str, list[float]],
                   pooled: tuple[float, float, dict[str, float]] | None = None) -> None:
        """Fill the score columns from per-trial results (pooled: CV's scores over the union of folds)."""
        self.seed_scores = list(strict)
        self.strict_f1_sd = stdev(strict) if len(strict) > 1 else None
        if pooled is not None:
            self.strict_f1, self.relaxed_f1, types = pooled
            self.per_type = dict(types)
        elif strict:
            self.strict_f1, self.relaxed_f1 = mean(strict), mean(relaxed)
            self.per_type = {name: mean(values) for name, values in per_type.items()}

    # ----- cells -----

    def to_cells(self, entity_types: list[str]) -> dict[str, str]:
        scored = self.status.scored and self.strict_f1 is not None
        cells = {
            "run": str(self.run), "tag": self.tag, "commit": self.commit, "status": self.status.value,
            "strict_f1": _f(self.strict_f1) if scored else "", "relaxed_f1": _f(self.relaxed_f1) if scored else "",
            "peak_vram_gb": "" if self.peak_vram_gb is None else f"{self.peak_vram_gb:.2f}",
            "seconds": f"{self.seconds:.1f}", "seed_scores": _numbers(self.seed_scores),
            "strict_f1_sd": _f(self.strict_f1_sd), "seeds": ",".join(map(str, self.seeds)),
            "cost_usd": "" if self.cost_usd is None else f"{self.cost_usd:.4f}",
            "tokens_in": str(self.tokens_in), "tokens_out": str(self.tokens_out),
            "direction": self.direction, "description": self.description, "note": self.note,
            "timestamp": self.timestamp, "device": self.device, "sandbox": self.sandbox,
            "folds": ",".join(map(str, self.folds)), "epochs": "" if self.epochs is None else f"{self.epochs:.2f}",
            "workers": ",".join(self.workers), "parent": self.parent,
        }
        for name in entity_types:
            cells[f"strict_f1_{name}"] = _f(self.per_type.get(name)) if scored else ""
        return {key: escape_cell(value) for key, value in cells.items()}

    @classmethod
    def from_cells(cls, cells: dict[str, str], where: str = "results.tsv") -> RunRecord:
        """A record from a row's cells (missing columns take their defaults); RecordError names the cell."""
        reader = _CellReader(cells, where)
        record = cls(run=reader.integer("run"), tag=cells.get("tag") or "", status=reader.status())
        record.commit = cells.get("commit") or ""
        record.strict_f1, record.relaxed_f1 = reader.number("strict_f1"), reader.number("relaxed_f1")
        record.per_type = {name: reader.number(f"strict_f1_{name}") for name in entity_types_in(list(cells))}
        record.peak_vram_gb = reader.number("peak_vram_gb")
        record.seconds = reader.number("seconds") or 0.0
        record.seed_scores = reader.numbers("seed_scores")
        record.strict_f1_sd = reader.number("strict_f1_sd")
        record.seeds = [int(value) for value in reader.numbers("seeds")]
        record.folds = [int(value) for value in reader.numbers("folds")]
        record.cost_usd = reader.number("cost_usd") if "cost_usd" in cells else 0.0  # an empty cell: unknown
        record.tokens_in = int(reader.number("tokens_in") or 0)
        record.tokens_out = int(reader.number("tokens_out") or 0)
        record.epochs = reader.number("epochs")
        for name in ("direction", "description", "note", "timestamp", "device", "sandbox", "parent"):
            setattr(record, name, cells.get(name) or "")
        record.workers = [worker for worker in (cells.get("workers") or "").split(",") if worker]
        return record


class _CellReader:
    def __init__(self, cells: dict[str, str], where: str):
        self.cells, self.where = cells, where

    def _fail(self, column: str, what: str) -> RecordError:
        run = (self.cells.get("run") or "?").strip() or "?"
        return RecordError(f"{self.where}: run {run}: {column}: {what}: {self.cells.get(column)!r}")

    def integer(self, column: str) -> int:
        try:
            return int((self.cells.get(column) or "").strip())
        except ValueError:
            raise self._fail(column, "not a whole number") from None

    def number(self, column: str) -> float | None:
        value = (self.cells.get(column) or "").strip()
        if not value:
            return None
        try:
            number = float(value)
        except ValueError:
            raise self._fail(column, "not a number") from None
        if not math.isfinite(number):
            raise self._fail(column, "not a finite number")
        return number

    def numbers(self, column: str) -> list[float]:
        value = (self.cells.get(column) or "").strip()
        try:
            return [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise self._fail(column, "not a list of numbers") from None

    def status(self) -> Status:
        try:
            return Status((self.cells.get("status") or "").strip())
        except ValueError:
            raise self._fail("status", f"not one of {', '.join(status.value for status in Status)}") from None


RECORD_FIELDS = [item.name for item in fields(RunRecord)]
