"""Where a night's files live, and which night a command means.

In the repository: results.tsv and CURRENT_STATE.md (the current night's), runs/<tag>/ (night.json, the
night's settings; last_stop.json, how its last session ended; one folder per run). Outside it, in the
per-user cache: the loop's integrity store (protected copies, its own copy of results.tsv, fold gold) and
the job workspaces, keyed by the repository's path, where train.py cannot reach them.

A night is a night: with no --tag, a command means the latest night of this repository that did not end
normally (a budget or STOP ends one normally), whatever the date; `--new` starts another.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from research_loop.records.ledger import RESULTS_FILE, STATE_FILE, now_iso, tag_of
from research_loop.safe_io import read_text, write_atomically

NIGHT_FILE = "night.json"
LAST_STOP_FILE = "last_stop.json"
STOP_FILE = "STOP"
PROGRAM_FILE = "program.md"
TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class WorkspaceError(Exception):
    """A one-line, user-facing problem with a tag or the night's files."""


def cache_root() -> Path:
    """The per-user cache, where prepare.py writes the holdout gold: prepare.cache_dir() is its one definition,
    so the loop can never look for the gold anywhere else."""
    import prepare

    return prepare.cache_dir()


REPO_ID_FILE = "ner-autoresearch-id"  # in .git: a fresh clone at the same path is another repository


def repo_key(repo: Path) -> str:
    """The repository's path and a random id kept in its .git folder (made on first use)."""
    path = Path(repo).resolve()
    identity = ""
    id_file = path / ".git" / REPO_ID_FILE
    if (path / ".git").is_dir():
        try:
            identity = id_file.read_text().strip()
        except FileNotFoundError:
            identity = uuid.uuid4().hex
            try:
                id_file.write_text(identity + "\n")
            except OSError:
                identity = ""
        except OSError:
            identity = ""
    return hashlib.sha256(f"{path}:{identity}".encode()).hexdigest()[:12]


def check_tag(tag: str) -> str:
    if not TAG_PATTERN.match(tag) or ".." in tag or tag.endswith((".lock", ".")):
        raise WorkspaceError(f"--tag {tag!r}: use letters, digits, '.', '_' and '-' (at most 64), like nov25")
    return tag


@dataclass(frozen=True)
class Workspace:
    repo: Path
    tag: str

    @property
    def tag_dir(self) -> Path:
        return self.repo / "runs" / self.tag

    @property
    def results_path(self) -> Path:
        return self.repo / RESULTS_FILE

    @property
    def state_path(self) -> Path:
        return self.repo / STATE_FILE

    @property
    def store(self) -> Path:
        """The loop's private folder for this night, outside the repository."""
        return cache_root() / "loop" / repo_key(self.repo) / self.tag

    @property
    def jobs_root(self) -> Path:
        return cache_root() / "jobs" / repo_key(self.repo)

    def run_dir(self, run: int) -> Path:
        return self.tag_dir / f"{run:04d}"

    def trial_dir(self, run: int, index: int, seed: int, fold: int | None) -> Path:
        """The first trial's files sit in the run folder itself; later ones in seed-<s>/ or fold-<k>-seed-<s>/
        (a cross-validated baseline runs each fold on a second seed too, to measure the noise)."""
        if index == 0:
            return self.run_dir(run)
        return self.run_dir(run) / (f"fold-{fold}-seed-{seed}" if fold is not None else f"seed-{seed}")

    def night(self) -> dict:
        return read_json(self.tag_dir / NIGHT_FILE)

    def write_night(self, night: dict) -> None:
        write_atomically(self.tag_dir / NIGHT_FILE, json.dumps(night, indent=1) + "\n")

    def write_stop(self, reason: str, ok: bool, finished: bool) -> None:
        """finished: the night ended as planned (a budget or STOP), so the next plain command starts a new one."""
        stop = {"stop_reason": reason, "ok": ok, "finished": finished, "timestamp": now_iso()}
        write_atomically(self.tag_dir / LAST_STOP_FILE, json.dumps(stop) + "\n")

    def last_stop(self) -> dict:
        return read_json(self.tag_dir / LAST_STOP_FILE)

    def results_file(self) -> Path:
        """results.tsv when it belongs to this tag, else the tag's archived copy under runs/<tag>/."""
        if tag_of(self.results_path) == self.tag:
            return self.results_path
        return self.tag_dir / RESULTS_FILE


def read_json(path: Path) -> dict:
    try:
        value = json.loads(read_text(path))
    except (FileNotFoundError, ValueError):
        return {}
    except OSError as exc:
        raise WorkspaceError(f"{path}: unreadable ({exc})") from None
    return value if isinstance(value, dict) else {}


def nights(repo: Path) -> list[tuple[str, dict]]:
    """(tag, night.json) of every night of this repository, oldest first."""
    found = []
    for path in (Path(repo) / "runs").glob(f"*/{NIGHT_FILE}"):
        found.append((path.parent.name, read_json(path)))
    return sorted(found, key=lambda item: item[1].get("started", ""))


def latest_tag(repo: Path) -> str | None:
    """The newest night's tag (for report, status and export), else results.tsv's."""
    found = nights(repo)
    return found[-1][0] if found else tag_of(Path(repo) / RESULTS_FILE)


def resolve_tag(repo: Path, tag: str | None, new: bool, today: datetime | None = None) -> tuple[str, str]:
    """(tag, a line saying what it means) for `run`: the given tag; else the latest unfinished night; else
    (or with --new) a new tag named after today's date, made unique."""
    if tag is not None:
        check_tag(tag)
        exists = (Path(repo) / "runs" / tag / NIGHT_FILE).is_file()
        return tag, (f"resuming night {tag}" if exists else f"starting night {tag}")
    found = nights(repo)
    if found and not new:
        last_tag, night = found[-1]
        stop = read_json(Path(repo) / "runs" / last_tag / LAST_STOP_FILE)
        if not stop.get("finished"):
            how = f"stopped: {stop['stop_reason']}" if stop.get("stop_reason") else "it was killed"
            return last_tag, (f"resuming night {last_tag} (started {night.get('started', '?')}; {how}); "
                              "--new starts another")
    base = (today or datetime.now()).strftime("%b%d").lower()
    name, number = base, 1
    while (Path(repo) / "runs" / name / NIGHT_FILE).is_file():  # calibrate may have made the folder already
        number += 1
        name = f"{base}-{number}"
    return name, f"starting night {name}"
