"""A control group per job, where the kernel lets this user make one: a cap on processes and threads
(pids.max) and on memory. RLIMIT_NPROC does not bind root, and RLIMIT_AS would break CUDA (it maps huge
virtual ranges), so these caps come from cgroups: cgroup v2 or the v1 pids/memory controllers when their
folders are writable (root, or a delegated subtree), else `systemd-run --user --scope` (see sandbox.py).
The job's launcher joins the group itself before it starts anything (sandbox_init.py `limits`)."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
_counter = itertools.count()


def _own_paths() -> dict[str, str]:
    """controller ('' for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


def _parents() -> dict[str, Path]:
    """Where a job's group can be made: {"v2": dir} or {"pids": dir, "memory": dir} (v1)."""
    own = _own_paths()
    if (ROOT / "cgroup.controllers").is_file() and "" in own:
        folder = ROOT / own[""].lstrip("/")
        controllers = (folder / "cgroup.subtree_control").read_text().split() if (folder / "cgroup.subtree_control").is_file() else []
        if _writable(folder) and "pids" in controllers:
            return {"v2": folder}
    found = {}
    for controller in ("pids", "memory"):
        base = ROOT / controller
        folder = base / own.get(controller, "/").lstrip("/")
        if _writable(folder):
            found[controller] = folder
        elif _writable(base):
            found[controller] = base
    return found


class JobCgroup:
    """A job's own control group(s); `procs` are the files the launcher writes its pid into."""

    def __init__(self, processes: int, memory_bytes: int | None):
        self.folders: list[Path] = []
        self.procs: list[str] = []
        name = f"ner-autoresearch-{os.getpid()}-{next(_counter)}"
        for kind, parent in _parents().items():
            folder = parent / name
            try:
                folder.mkdir()
            except OSError:
                continue
            self.folders.append(folder)
            try:
                if kind in ("v2", "pids"):
                    (folder / "pids.max").write_text(f"{processes}\n")
                if memory_bytes and kind == "v2" and (folder / "memory.max").exists():
                    (folder / "memory.max").write_text(f"{memory_bytes}\n")
                if memory_bytes and kind == "memory":
                    (folder / "memory.limit_in_bytes").write_text(f"{memory_bytes}\n")
            except OSError:
                pass
            self.procs.append(str(folder / "cgroup.procs"))

    @property
    def caps_processes(self) -> bool:
        return any((folder / "pids.max").is_file() for folder in self.folders)

    def remove(self) -> None:
        """Remove the groups (the kernel refuses while a process is left: then they stay for the next start)."""
        for folder in self.folders:
            try:
                folder.rmdir()
            except OSError:
                pass


def remove_stale() -> None:
    """Groups a killed loop left behind, once their processes are gone."""
    for parent in _parents().values():
        for folder in parent.glob("ner-autoresearch-*"):
            try:
                folder.rmdir()
            except OSError:
                shutil.rmtree(folder, ignore_errors=True) if not (folder / "cgroup.procs").exists() else None
