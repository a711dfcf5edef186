"""One loop (or calibrate, or export's retrain) per repository: runs/<tag>/loop.lock, flock-ed while it runs
(the kernel drops the lock when the process dies, so a killed loop never blocks the next)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockError(Exception):
    """Another loop holds this repository; the message is one line."""


class LoopLock:
    def __init__(self, repo: Path, tag: str, command: str = "run"):
        self.repo, self.tag, self.command = Path(repo), tag, command  # the agent_loop.py command holding it
        self.path = self.repo / "runs" / tag / "loop.lock"
        self.file = None

    def acquire(self) -> None:
        holder = running_loop(self.repo)
        if holder:
            raise LockError(f"`agent_loop.py {holder[2]}` is running on this repository (pid {holder[1]}, "
                            f"night {holder[0]})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            self.file = None
            raise LockError(f"another command is running on this repository (night {self.tag})") from None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()} {self.command}\n")
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


def running_loop(repo: Path) -> tuple[str, int, str] | None:
    """(tag, pid, command) of the loop, calibrate or export holding a lock on this repository, or None."""
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
                pid, _, command = file.read().strip().partition(" ")
                return path.parent.name, int(pid) if pid.isdigit() else -1, command or "run"
            fcntl.flock(file, fcntl.LOCK_UN)
    return None
