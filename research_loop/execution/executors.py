"""Where jobs run: `LocalExecutor` (this machine, N slots, one GPU each when there are GPUs) or, with the ray
extra, `RayExecutor` (research_loop/ray_executor.py). Both take jobs without blocking, report finished ones
when polled, kill one on request, and count each worker's busy seconds for the utilisation figures.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from research_loop.execution.jobs import Job, JobResult, run_job
from research_loop.execution.sandbox import DEFAULT_LIMITS, Limits, gpu_devices
from research_loop.safe_io import open_no_follow


@dataclass
class Ticket:
    """One submitted job, as the scheduler knows it."""

    run: int
    index: int  # the trial's index in its run
    log_path: Path
    pid_path: Path
    cancelled: threading.Event = field(default_factory=threading.Event)
    worker: str = ""
    started: float = 0.0
    with_test: bool = False  # the job's view holds the test rows
    seed: int = 0
    fold: int | None = None


class Executor(Protocol):
    slots: int

    def submit(self, job: Job, ticket: Ticket) -> None: ...

    def poll(self, timeout: float) -> list[tuple[Ticket, JobResult]]: ...

    def cancel(self, ticket: Ticket) -> None: ...

    def busy_seconds(self) -> dict[str, float]: ...

    def shutdown(self) -> None: ...


def visible_gpus() -> list[str]:
    """GPU indices jobs may use: CUDA_VISIBLE_DEVICES when set, else one per /dev/nvidiaN node."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [item.strip() for item in given.split(",") if item.strip()]
    return sorted({path.removeprefix("/dev/nvidia") for path in gpu_devices()
                   if path.removeprefix("/dev/nvidia").isdigit()}, key=int)


class LocalExecutor:
    """Jobs as sandboxed subprocesses of this machine, at most `slots` at once (one thread each)."""

    def __init__(self, slots: int, backend: str, jobs_root: Path, repo: Path, private: list[Path],
                 limits: Limits = DEFAULT_LIMITS, grace_s: float = 10.0):
        self.slots, self.backend, self.jobs_root, self.repo = slots, backend, jobs_root, repo
        self.private, self.limits, self.grace_s = private, limits, grace_s
        self.gpus = visible_gpus()
        self.free = list(range(slots))
        self.finished: queue.Queue = queue.Queue()
        self.busy: dict[str, float] = {f"local-{slot}": 0.0 for slot in range(slots)}
        self.lock = threading.Lock()

    def _slot_env(self, slot: int) -> dict[str, str]:
        if not self.gpus:
            return {}
        return {"CUDA_VISIBLE_DEVICES": self.gpus[slot % len(self.gpus)]}

    def submit(self, job: Job, ticket: Ticket) -> None:
        with self.lock:
            if not self.free:
                raise RuntimeError("no free slot")  # the scheduler never submits more than `slots` jobs
            slot = self.free.pop(0)
        ticket.worker = f"local-{slot}" + (f"/gpu{self._slot_env(slot)['CUDA_VISIBLE_DEVICES']}" if self.gpus else "")
        job.env = {**job.env, **self._slot_env(slot)}
        ticket.started = time.monotonic()
        threading.Thread(target=self._run, args=(job, ticket, slot), daemon=True,
                         name=f"job-{ticket.run}-{ticket.index}").start()

    def _run(self, job: Job, ticket: Ticket, slot: int) -> None:
        try:
            ticket.log_path.parent.mkdir(parents=True, exist_ok=True)
            ticket.log_path.unlink(missing_ok=True)
            fd = open_no_follow(ticket.log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            with os.fdopen(fd, "wb") as log:
                result = run_job(job, self.backend, jobs_root=self.jobs_root, repo=self.repo, private=self.private,
                                 log=log, abort=ticket.cancelled.is_set, grace_s=self.grace_s, limits=self.limits,
                                 on_start=lambda pid: ticket.pid_path.write_text(f"{pid}\n"),
                                 worker=ticket.worker)
        # a bug or a full disk: the run is a crash with the reason, not a dead thread
        except Exception as exc:  # noqa: BLE001
            result = JobResult("crash", None, time.monotonic() - ticket.started, f"loop: {type(exc).__name__}: {exc}",
                               worker=ticket.worker)
        finally:
            ticket.pid_path.unlink(missing_ok=True)
            with self.lock:
                self.busy[f"local-{slot}"] += time.monotonic() - ticket.started
                self.free.append(slot)
                self.free.sort()
        if ticket.cancelled.is_set() and result.kind in ("crash", "timeout"):
            result.kind = "aborted"
        self.finished.put((ticket, result))

    def poll(self, timeout: float) -> list[tuple[Ticket, JobResult]]:
        done = []
        try:
            done.append(self.finished.get(timeout=timeout))
            while True:
                done.append(self.finished.get_nowait())
        except queue.Empty:
            pass
        return done

    def cancel(self, ticket: Ticket) -> None:
        ticket.cancelled.set()

    def busy_seconds(self) -> dict[str, float]:
        with self.lock:
            return dict(self.busy)

    def shutdown(self) -> None:
        pass


def kill_stale(pid_file: Path, contains: Callable[[bytes], bool] = lambda line: b"train.py" in line) -> bool:
    """Kill the process group of a job a killed loop left running (its pid file says which)."""
    import signal

    try:
        pid = int(pid_file.read_text().strip())
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        command_line = b""
    pid_file.unlink(missing_ok=True)
    if not contains(command_line):
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True
