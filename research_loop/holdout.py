"""The blind holdout: scored by the loop after each keep and for the final best, kept where no agent looks.

Scores go to a loop-only file in the per-user cache, next to the holdout gold and outside the repository:
not results.tsv, not CURRENT_STATE.md, nothing the agent's view_file can open, and not reachable through
the cache path train.py is given (the runner points NER_AUTORESEARCH_CACHE at an empty folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from statistics import mean

from .ledger import now_iso

SCORES_FOLDER = "holdout-scores"


def scores_path(gold_path: Path, repo: Path, tag: str) -> Path:
    """<cache>/holdout-scores/<repository key>-<tag>.jsonl, beside the cache's holdout/ folder."""
    repo_key = hashlib.sha256(str(Path(repo).resolve()).encode("utf-8")).hexdigest()[:12]
    return gold_path.parent.parent / SCORES_FOLDER / f"{repo_key}-{tag}.jsonl"


def read_scores(path: Path) -> list[dict]:
    """Every holdout scoring so far ([] when none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_score(path: Path, entry: dict) -> None:
    """Append one scoring, fsynced like a results row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(json.dumps(entry) + "\n")
        file.flush()
        os.fsync(file.fileno())


def score_run(score_files, gold_path: Path, prediction_files: list[Path], run: str, commit: str,
              role: str) -> dict:
    """Mean holdout scores over a run's seeds (one pred_holdout.jsonl per seed) as one entry."""
    results = [score_files(path, gold_path) for path in prediction_files]
    strict = [result["strict"]["f1"] for result in results]
    types = sorted({name for result in results for name in result["strict"]["per_type"]})
    return {
        "run": run, "commit": commit, "role": role,
        "strict_f1": mean(strict),
        "relaxed_f1": mean(result["relaxed"]["f1"] for result in results),
        "per_type": {name: mean(result["strict"]["per_type"].get(name, {}).get("f1", 0.0) for result in results)
                     for name in types},
        "seed_scores": strict,
        "timestamp": now_iso(),
    }
