"""Shared fixtures: the real Task 7 data prepared once per session, away from the repository's data/."""

import os
from pathlib import Path

import pytest

import prepare

TASK7_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "smm4h2026-task7"


@pytest.fixture(scope="session")
def prepared_task7(tmp_path_factory):
    """A data dir prepared from the shared Task 7 train/dev CSVs and the unlabeled test file (read-only, please).

    The holdout gold goes to a temporary cache: NER_AUTORESEARCH_CACHE points there from the first use of
    this fixture until the session ends (then it is restored), so `holdout_gold_path(data_dir)` finds it.
    """
    root = tmp_path_factory.mktemp("prepared_task7")
    previous_cache = os.environ.get("NER_AUTORESEARCH_CACHE")
    os.environ["NER_AUTORESEARCH_CACHE"] = str(root / "cache")
    try:
        args = ["--source", str(TASK7_DIR), "--test", str(TASK7_DIR / "new_test_data_unlabeled.csv")]
        assert prepare.main([*args, "--out", str(root / "data")]) == 0
        yield root / "data"
    finally:
        if previous_cache is None:
            os.environ.pop("NER_AUTORESEARCH_CACHE", None)
        else:
            os.environ["NER_AUTORESEARCH_CACHE"] = previous_cache
