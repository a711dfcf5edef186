"""File reads and writes that a hostile train.py cannot redirect: no symlinks followed, logs read only when
they have a single hard link, state written by the loop itself through a temporary file and a rename."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafeFile(OSError):
    """A file the loop refuses to read: a symlink, a hard link to something else, not a regular file."""


def open_no_follow(path: Path, flags: int = os.O_RDONLY, single_link: bool = False, mode: int = 0o644) -> int:
    """os.open without following a symlink in the last component; UnsafeFile for anything but a regular
    file (and, with single_link, for a file with more than one hard link: it may be someone else's)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the last component is a symlink
            raise UnsafeFile(f"{path}: is a symbolic link; refused") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeFile(f"{path}: not a regular file; refused")
    if single_link and info.st_nlink != 1:
        os.close(fd)
        raise UnsafeFile(f"{path}: has {info.st_nlink} hard links; refused")
    return fd


def read_bytes(path: Path, single_link: bool = False, limit: int | None = None) -> bytes:
    """A regular file's bytes (the first `limit`, when given), never through a link."""
    fd = open_no_follow(Path(path), single_link=single_link)
    with os.fdopen(fd, "rb") as file:
        return file.read() if limit is None else file.read(limit)


def read_text(path: Path, single_link: bool = False, default: str | None = None) -> str:
    """A regular file's text (invalid UTF-8 replaced); `default` when it does not exist."""
    try:
        return read_bytes(path, single_link=single_link).decode("utf-8", errors="replace")
    except FileNotFoundError:
        if default is None:
            raise
        return default


def read_tail(path: Path, size: int = 64 * 1024, single_link: bool = True) -> str:
    """The last `size` bytes of a log as text ('' when missing or refused)."""
    try:
        fd = open_no_follow(Path(path), single_link=single_link)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as file:
        file.seek(0, os.SEEK_END)
        file.seek(max(0, file.tell() - size))
        return file.read().decode("utf-8", errors="replace")


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write to a temporary file beside path, fsync, then rename over path: a reader sees the old file or
    the new one, and a symlink planted at path is replaced, never followed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def append_durably(path: Path, data: bytes) -> None:
    """Append to a regular file (created when missing), never through a symlink, then fsync."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = open_no_follow(Path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
