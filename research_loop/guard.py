"""Protected files: hashed and copied at loop start, checked around every run, restored when touched.

Protected: prepare.py, evaluate.py, agent_loop.py, program.md, pyproject.toml, everything under
research_loop/ and data/ (the manifest included), plus the loop's own results.tsv. program.md may be
edited by the human between runs: the loop re-accepts it right before each train.py run, so only a change
made while train.py runs counts as tampering. A tampered file's content is saved under the run's folder
before the snapshot copy is put back, so nothing anyone wrote is lost.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROTECTED_FILES = ("prepare.py", "evaluate.py", "agent_loop.py", "program.md", "pyproject.toml", "results.tsv")
PROTECTED_DIRS = ("research_loop", "data")
SKIPPED_PARTS = ("__pycache__",)  # Python writes these when it imports the package; not tampering


class GuardError(Exception):
    """A protected file cannot be restored (its snapshot is gone or altered too)."""


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the repository root
    kind: str  # "modified", "deleted" or "added"

    def __str__(self) -> str:
        return f"{self.path} ({self.kind})"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Guard:
    """Hashes of the protected files as the loop accepted them, and a snapshot copy to restore from."""

    def __init__(self, repo: Path, snapshot_dir: Path):
        self.repo = repo
        self.snapshot_dir = snapshot_dir
        if snapshot_dir.exists():
            shutil.rmtree(snapshot_dir)
        snapshot_dir.mkdir(parents=True)
        self.hashes: dict[str, str] = {}
        for relative in self._scan():
            self.accept(relative)

    def _scan(self) -> list[str]:
        """Relative paths of the protected files present now."""
        found = [name for name in PROTECTED_FILES if (self.repo / name).is_file()]
        for folder in PROTECTED_DIRS:
            for path in sorted((self.repo / folder).rglob("*")):
                relative = path.relative_to(self.repo)
                if path.is_file() and not set(relative.parts) & set(SKIPPED_PARTS) and path.suffix != ".pyc":
                    found.append(relative.as_posix())
        return found

    def accept(self, relative: str) -> None:
        """Take the file's current content as the good one (at start; program.md before a run;
        results.tsv after the loop appends)."""
        path = self.repo / relative
        if not path.is_file():
            self.hashes.pop(relative, None)
            return
        self.hashes[relative] = sha256_of(path)
        copy = self.snapshot_dir / relative
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)

    def violations(self) -> list[Violation]:
        """Every protected file that differs from what the loop accepted."""
        present = set(self._scan())
        found = []
        for relative, expected in self.hashes.items():
            if relative not in present:
                found.append(Violation(relative, "deleted"))
            elif sha256_of(self.repo / relative) != expected:
                found.append(Violation(relative, "modified"))
        found += [Violation(relative, "added") for relative in sorted(present - set(self.hashes))]
        return found

    def restore(self, violations: list[Violation], save_dir: Path,
                from_git: Callable[[str], bool] | None = None) -> None:
        """Put every violated file back from the snapshot (or, when the snapshot was altered too, from_git,
        which restores a tracked file and says whether it could); tampered or added content moves to save_dir."""
        for violation in violations:
            path = self.repo / violation.path
            if path.exists():
                saved = save_dir / violation.path
                saved.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, saved)
            if violation.kind == "added":
                continue
            copy = self.snapshot_dir / violation.path
            if not copy.is_file() or sha256_of(copy) != self.hashes[violation.path]:
                if from_git is not None and from_git(violation.path):
                    continue
                raise GuardError(f"{violation.path}: cannot restore it (its snapshot under "
                                 f"{self.snapshot_dir} is missing or altered); restore it from git or rerun prepare.py")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(copy, path)
