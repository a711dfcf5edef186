"""A scratch copy of the project for a benchmark's nights: the files a night needs, with the fixed files
train.py imports taken from the loop's own list (so a new fixed file reaches every benchmark)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from research_loop.records.integrity import FIXED_FILES

PROJECT_FILES = (*FIXED_FILES, "train.py", "program.md", "agent_loop.py", "pyproject.toml", ".gitignore",
                 "research_loop", "data/README.md")


def copy_project(repo: Path) -> None:
    """The project's files into repo (a new folder), without caches."""
    repo.mkdir(parents=True)
    for name in PROJECT_FILES:
        path = PROJECT / name
        if path.is_dir():
            shutil.copytree(path, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, repo / name)
