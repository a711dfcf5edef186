"""What train.py (or anything else) must not change, checked against copies kept outside the repository.

- `ProtectedFiles`: the fixed files, the loop's package, program.md and data/, hashed and copied into the
  integrity store (outside the repository, kept across restarts); a changed one is moved aside and put back.
- `verify_data`: at start, data/ against its manifest, the manifest against the stamp prepare.py wrote
  outside the repository, and the holdout gold against the hash prepare.py recorded.
- `TreeWatch`: the whole working tree (tracked, untracked and ignored files, .git's config and hooks)
  fingerprinted; after each run anything new or changed outside the loop's own files is reported, and
  moved aside or restored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from research_loop.safe_io import read_bytes, write_atomically

FIXED_FILES = ("prepare.py", "evaluate.py", "runtime.py")  # what train.py imports: every job carries them
PROTECTED_FILES = (*FIXED_FILES, "agent_loop.py", "program.md", "pyproject.toml")
PROTECTED_DIRS = ("research_loop", "data")
SKIPPED_PARTS = ("__pycache__",)
# .git files the loop's own git steps change; everything else under .git (config, hooks, info) is watched.
GIT_OWN = ("objects", "logs", "refs", "index", "HEAD", "ORIG_HEAD", "FETCH_HEAD", "packed-refs", "COMMIT_EDITMSG",
           "index.lock", "gc.log")


class IntegrityError(Exception):
    """Something protected cannot be put back; the message is one line saying what to do."""


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the repository root
    kind: str  # modified, deleted or added

    def __str__(self) -> str:
        return f"{self.path} ({self.kind})"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def listed(violations: list[Violation]) -> str:
    return ", ".join(str(violation) for violation in violations)


class ProtectedFiles:
    """Hashes of the protected files as the loop accepted them, with copies to restore from, in `store`."""

    def __init__(self, repo: Path, store: Path):
        self.repo, self.store = repo, store
        self.snapshot = store / "snapshot"
        self.hashes_file = store / "protected.json"
        self.hashes: dict[str, str] = {}

    def load(self) -> None:
        """The hashes the last session accepted (their copies are in the snapshot)."""
        try:
            self.hashes = json.loads(read_bytes(self.hashes_file))
        except (OSError, ValueError):
            self.hashes = {}

    def scan(self) -> list[str]:
        found = [name for name in PROTECTED_FILES if (self.repo / name).is_file()]
        for folder in PROTECTED_DIRS:
            for path in sorted((self.repo / folder).rglob("*")):
                relative = path.relative_to(self.repo)
                if (path.is_file() or path.is_symlink()) and not set(relative.parts) & set(SKIPPED_PARTS) \
                        and path.suffix != ".pyc":
                    found.append(relative.as_posix())
        return found

    def accept_all(self) -> None:
        """Take every protected file as it is now (at start, after the checks that it is right)."""
        shutil.rmtree(self.snapshot, ignore_errors=True)
        self.hashes = {}
        for relative in self.scan():
            self.accept(relative, save=False)
        self._save()

    def accept(self, relative: str, save: bool = True) -> None:
        """Take a file's current content as the good one (program.md before a run: the human may edit it)."""
        path = self.repo / relative
        if path.is_symlink() or not path.is_file():
            self.hashes.pop(relative, None)
        else:
            data = read_bytes(path)
            self.hashes[relative] = hashlib.sha256(data).hexdigest()
            write_atomically(self.snapshot / relative, data)
        if save:
            self._save()

    def _save(self) -> None:
        write_atomically(self.hashes_file, json.dumps(self.hashes, indent=1, sort_keys=True) + "\n")

    def violations(self) -> list[Violation]:
        present = set(self.scan())
        found = []
        for relative, expected in self.hashes.items():
            path = self.repo / relative
            if relative not in present:
                found.append(Violation(relative, "deleted"))
            elif path.is_symlink() or sha256_of(path) != expected:
                found.append(Violation(relative, "modified"))
        return found + [Violation(relative, "added") for relative in sorted(present - set(self.hashes))]

    def restore(self, violations: list[Violation], save_dir: Path) -> list[str]:
        """Put the loop's copy back over each violated file, the changed one saved in save_dir first. A file
        whose copy is gone or altered stays where it is (a copy is saved) and is returned: the caller restores
        it from git or stops, and nothing the user had goes missing."""
        unrestored = []
        for violation in violations:
            path = self.repo / violation.path
            saved = save_dir / violation.path
            if violation.kind == "added":
                saved.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, saved)
                continue
            copy = self.snapshot / violation.path
            if not (copy.is_file() and sha256_of(copy) == self.hashes[violation.path]):
                if path.is_file() and not path.is_symlink():
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, saved)
                unrestored.append(violation.path)
                continue
            if path.exists() or path.is_symlink():
                saved.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, saved)
            write_atomically(path, read_bytes(copy))
        return unrestored


def verify_data(data_dir: Path, prepare) -> list[str]:
    """Problems with data/ (one line each): files against the manifest, the manifest against prepare.py's
    stamp, the holdout gold against its recorded hash."""
    problems = list(prepare.manifest_problems(data_dir))
    manifest_path = data_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    expected_gold = manifest.get("holdout_gold_sha256")
    if expected_gold and (data_dir / "holdout.jsonl").is_file():
        gold = prepare.holdout_gold_path(data_dir)
        if not gold.is_file():
            problems.append(f"{gold}: the holdout gold is missing; run prepare.py again")
        elif sha256_of(gold) != expected_gold:
            problems.append(f"{gold}: the holdout gold differs from what prepare.py wrote; run prepare.py again")
    return problems


# ----- The whole working tree -----


def _fingerprint(path: Path) -> tuple:
    info = path.lstat()
    return (stat.S_IFMT(info.st_mode), info.st_mode & 0o7777, info.st_size, info.st_mtime_ns, info.st_ino)


class TreeWatch:
    """A fingerprint of every file in the working tree but the loop's own (runs/<tag>/, results.tsv,
    CURRENT_STATE.md, .git's objects and refs), and the bytes of .git's small control files."""

    def __init__(self, repo: Path, own: list[str]):
        self.repo = repo
        self.own = set(own)  # repo-relative paths (files or folders) the loop itself writes
        self.files: dict[str, tuple] = {}
        self.git_files: dict[str, bytes] = {}

    def _skip(self, relative: str) -> bool:
        parts = relative.split("/")
        if parts[0] == ".git" and len(parts) > 1 and parts[1] in GIT_OWN:
            return True
        return any(relative == own or relative.startswith(own.rstrip("/") + "/") for own in self.own)

    def scan(self) -> dict[str, tuple]:
        found = {}
        for folder, subfolders, names in os.walk(self.repo, followlinks=False):
            base = Path(folder)
            relative_folder = base.relative_to(self.repo).as_posix()
            subfolders[:] = [sub for sub in subfolders
                             if not self._skip(sub if relative_folder == "." else f"{relative_folder}/{sub}")
                             or (os.path.islink(base / sub))]
            for name in names + [sub for sub in subfolders if os.path.islink(base / sub)]:
                relative = name if relative_folder == "." else f"{relative_folder}/{name}"
                if not self._skip(relative):
                    try:
                        found[relative] = _fingerprint(base / name)
                    except FileNotFoundError:
                        continue
        return found

    def take(self) -> None:
        """The tree as it is now is the good one."""
        self.files = self.scan()
        self.git_files = {}
        for relative in self.files:
            if relative.startswith(".git/") and stat.S_ISREG(self.files[relative][0]):
                self.git_files[relative] = (self.repo / relative).read_bytes()

    def refresh(self, relative: str) -> None:
        """The loop changed this file itself."""
        path = self.repo / relative
        if path.exists() or path.is_symlink():
            self.files[relative] = _fingerprint(path)
        else:
            self.files.pop(relative, None)

    def changes(self) -> list[Violation]:
        now = self.scan()
        found = [Violation(path, "added") for path in sorted(set(now) - set(self.files))]
        found += [Violation(path, "deleted") for path in sorted(set(self.files) - set(now))]
        found += [Violation(path, "modified") for path in sorted(set(now) & set(self.files))
                  if now[path] != self.files[path]]
        return found

    def undo(self, changes: list[Violation], save_dir: Path, restore_tracked) -> list[str]:
        """New files move to save_dir; .git control files get their bytes back; other changed files are
        restored by restore_tracked(path) -> bool when git has them. Returns what could not be undone."""
        left = []
        for change in changes:
            path = self.repo / change.path
            if change.kind in ("added", "modified") and (path.exists() or path.is_symlink()):
                (save_dir / change.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, save_dir / change.path)
            if change.kind == "added":
                continue
            if change.path in self.git_files:
                write_atomically(path, self.git_files[change.path])
            elif not restore_tracked(change.path):
                left.append(change.path)
        self.take()
        return left
