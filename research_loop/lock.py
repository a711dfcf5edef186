"""One loop (or calibrate, or export's retrain) per repository: runs/<tag>/loop.lock, flock-ed while it runs
(the kernel drops the lock when the process dies, so a killed loop never blocks the next)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockError(Exception):
    """Another loop holds this repository; the message is one line."""


class LoopLock:
    def __init__(self, repo: Path, tag: str):
        self.repo, self.tag = Path(repo), tag
        self.path = self.repo / "runs" / tag / "loop.lock"
        self.file = None

    def acquire(self) -> None:
        holder = running_loop(self.repo)
        if holder:
            raise LockError(f"another loop is running on this repository (pid {holder[1]}, tag {holder[0]})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            self.file = None
            raise LockError(f"another loop is running on this repository (tag {self.tag})") from None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self) -> None:
        if self.file is not None:
            self.path.unlink(missing_ok=True)
            self.file.close()
            self.file = None

    def __enter__(self) -> LoopLock:  # noqa: PYI034 (a final class)
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def running_loop(repo: Path) -> tuple[str, int] | None:
    """(tag, pid) of a loop holding a lock on this repository, or None."""
    for path in sorted((Path(repo) / "runs").glob("*/loop.lock")):
        try:
            file = path.open("a+")
        except OSError:
            continue
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                text = file.read().strip()
                return path.parent.name, int(text) if text.isdigit() else -1
            fcntl.flock(file, fcntl.LOCK_UN)
    return None
