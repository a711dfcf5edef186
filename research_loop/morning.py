"""Gathers what the morning report reads: a tag's results.tsv rows, its loop-only holdout scores, why the
last session stopped, and which directions are closed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import holdout, ledger, state
from .loop import DEFAULT_CLOSE_AFTER, NIGHT_FILE, PROGRAM_FILE, STOP_REASON_FILE
from .report import ReportError


@dataclass
class Night:
    tag: str
    rows: list[dict]
    holdout: list[dict]
    stop_reason: str | None
    closed_directions: set[str]
    tokens: dict | None  # LLM tokens of the night: input (cache included) and output


def results_file(repo: Path, tag: str) -> Path:
    """results.tsv when it belongs to the tag, else the tag's archived copy under runs/<tag>/."""
    current = repo / ledger.RESULTS_FILE
    if ledger.tag_of(ledger.read_rows(current)) == tag:
        return current
    return repo / "runs" / tag / ledger.RESULTS_FILE


def default_tag(repo: Path) -> str | None:
    """The tag of the current results.tsv."""
    return ledger.tag_of(ledger.read_rows(repo / ledger.RESULTS_FILE))


def load_night(repo: Path, tag: str | None, prepare_module) -> Night:
    """Read a night's files; ReportError (one line) when there is nothing to report."""
    tag = tag or default_tag(repo)
    if tag is None:
        raise ReportError(f"{repo / ledger.RESULTS_FILE}: no runs yet; start one with `python agent_loop.py`")
    path = results_file(repo, tag)
    rows = [row for row in ledger.read_rows(path) if row.get("tag") == tag]
    if not rows:
        raise ReportError(f"{path}: no runs of tag {tag}")
    try:
        scores_path = holdout.scores_path(prepare_module.holdout_gold_path(repo / "data"), repo, tag)
        holdout_scores = holdout.read_scores(scores_path)
    except prepare_module.DataError:
        holdout_scores = []  # prepared with --holdout-frac 0
    stop_file = repo / "runs" / tag / STOP_REASON_FILE
    stop_reason = json.loads(stop_file.read_text())["stop_reason"] if stop_file.is_file() else None
    program = repo / PROGRAM_FILE
    reopened = state.reopened_directions(program.read_text(encoding="utf-8")) if program.is_file() else set()
    night_file = repo / "runs" / tag / NIGHT_FILE
    night = json.loads(night_file.read_text()) if night_file.is_file() else {}
    close_after = night.get("close_after", DEFAULT_CLOSE_AFTER)
    closed = state.closed_directions(rows, close_after, reopened)
    tokens = None
    if any(row.get("tokens_in") for row in rows):
        tokens = {"input": sum(int(row.get("tokens_in") or 0) for row in rows),
                  "output": sum(int(row.get("tokens_out") or 0) for row in rows)}
    return Night(tag, rows, holdout_scores, stop_reason, closed, tokens)
