"""The blind holdout: scored by the loop after each keep and for the final best, kept where no agent looks.

Scores go to a loop-only file in the per-user cache, outside the repository: not results.tsv, not
CURRENT_STATE.md, nothing the agent's view_file can open, and not visible inside the sandbox.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from research_loop.night.folders import repo_key
from research_loop.records.ledger import now_iso
from research_loop.safe_io import append_durably, read_text

SCORES_FOLDER = "holdout-scores"


def scores_path(gold_path: Path, repo: Path, tag: str) -> Path:
    """<cache>/holdout-scores/<repository key>-<tag>.jsonl, beside the cache's holdout/ folder."""
    return gold_path.parent.parent / SCORES_FOLDER / f"{repo_key(repo)}-{tag}.jsonl"


def read_scores(path: Path) -> list[dict]:
    """Every holdout scoring so far ([] when none, or when the file is unreadable)."""
    try:
        text = read_text(path)
    except OSError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def append_score(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    append_durably(path, (json.dumps(entry) + "\n").encode("utf-8"))


def score_run(scorer, gold_path: Path, prediction_files: list[Path], run: int, commit: str, role: str) -> dict:
    """Mean holdout scores over a run's trials (one pred_holdout.jsonl each) as one entry."""
    results = [scorer.score_file(path, gold_path) for path in prediction_files]
    strict = [result.strict for result in results]
    return {
        "run": str(run), "commit": commit, "role": role,
        "strict_f1": mean(strict), "relaxed_f1": mean(result.relaxed for result in results),
        "per_type": {name: mean(result.per_type.get(name, 0.0) for result in results)
                     for name in results[0].per_type} if results else {},
        "seed_scores": strict, "files": [str(path) for path in prediction_files], "timestamp": now_iso(),
    }
