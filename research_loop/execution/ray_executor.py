"""Jobs on Ray (the `ray` extra): a local cluster by default, or an existing one (--ray-address), so runs go
to every GPU of this machine or of other machines.

The loop (the head) keeps git, the agent, scoring, results.tsv and the holdout. A worker receives the job
(the candidate's train.py, the fixed files, the data view, the seed and fold) as a Ray task requesting one
GPU (or a share of the CPUs where there is none), runs it in its own sandbox, and sends back only the
prediction files and the log. The model must be in each worker's Hugging Face cache (the head caches it
locally; on other machines, set HF_HOME to shared storage or run the same night once there).

Ray's own processes ignore the terminal's Ctrl-C and die with the loop (Ray's fate sharing), so a kill -9 of
the loop leaves no run behind; the restart runs the interrupted trials again.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from research_loop.execution.executors import Ticket
from research_loop.execution.jobs import Job, JobResult
from research_loop.execution.sandbox import DEFAULT_LIMITS, Limits
from research_loop.safe_io import open_no_follow

RAY_MISSING = "--workers > 1 and --ray-address need Ray: pip install -e \".[ray]\""


def require_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


def _run_remote(job: Job, backend: str, limits: Limits, grace_s: float, repo: str, private: list[str]) -> JobResult:
    """Runs on a Ray worker: the job in this machine's sandbox, everything returned as bytes. The head's
    repository and private folders are hidden wherever they exist here too (a worker on the head's machine
    sees the same file system), and so is this machine's own loop cache."""
    import socket
    import tempfile

    from research_loop.execution import sandbox
    from research_loop.execution.jobs import run_job
    from research_loop.night.folders import cache_root

    if backend != "none" and sandbox.probe(backend):
        try:
            backend, _ = sandbox.choose("auto", allow_none=False)
        except sandbox.SandboxError as exc:
            return JobResult("sandbox", None, 0.0, f"sandbox: {exc}", worker=socket.gethostname())
    gpus = ",".join(str(gpu) for gpu in __import__("ray").get_gpu_ids())
    worker = f"{socket.gethostname()}/pid{os.getpid()}" + (f"/gpu{gpus}" if gpus else "")
    root = Path(tempfile.gettempdir()) / "ner-autoresearch-ray-jobs"
    if gpus:
        job.env = {**job.env, "CUDA_VISIBLE_DEVICES": gpus}
    hidden = [Path(path) for path in private] + [cache_root()]
    return run_job(job, backend, jobs_root=root, repo=Path(repo), private=hidden, log=None, grace_s=grace_s,
                   limits=limits, worker=worker)


class RayExecutor:
    """The executor interface on Ray tasks; `slots` jobs at once."""

    def __init__(self, slots: int, backend: str, jobs_root: Path, repo: Path, private: list[Path],
                 address: str | None = None, limits: Limits = DEFAULT_LIMITS, grace_s: float = 10.0):
        ray = require_ray()
        started = time.monotonic()
        if not ray.is_initialized():
            options = {"address": address} if address else {"include_dashboard": False, "num_cpus": os.cpu_count()}
            ray.init(log_to_driver=False, configure_logging=False, **options)
        self.startup_s = time.monotonic() - started
        self.ray, self.slots, self.backend, self.limits, self.grace_s = ray, slots, backend, limits, grace_s
        self.repo, self.private = str(repo), [str(path) for path in private]
        resources = ray.cluster_resources()
        if resources.get("GPU", 0) >= 1:
            self.task_options = {"num_gpus": 1, "num_cpus": 1}
        else:
            self.task_options = {"num_cpus": max(1, int(resources.get("CPU", 1)) // slots)}
        self.remote = ray.remote(max_retries=0)(_run_remote)
        self.pending: dict = {}  # object ref -> ticket
        self.busy: dict[str, float] = {}
        self.lock = threading.Lock()

    def submit(self, job: Job, ticket: Ticket) -> None:
        ticket.started = time.monotonic()
        ticket.worker = "ray (queued)"
        ref = self.remote.options(**self.task_options).remote(job, self.backend, self.limits, self.grace_s,
                                                              self.repo, self.private)
        with self.lock:
            self.pending[ref] = ticket

    def poll(self, timeout: float) -> list[tuple[Ticket, JobResult]]:
        with self.lock:
            refs = list(self.pending)
        if not refs:
            time.sleep(timeout)
            return []
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        done = []
        for ref in ready:
            with self.lock:
                ticket = self.pending.pop(ref)
            result = self._result(ref, ticket)
            ticket.worker = result.worker
            with self.lock:
                self.busy[result.worker] = self.busy.get(result.worker, 0.0) + result.seconds
            self._write_log(ticket, result)
            done.append((ticket, result))
        return done

    def _result(self, ref, ticket: Ticket) -> JobResult:
        from ray.exceptions import RayError

        try:
            return self.ray.get(ref)
        except RayError as exc:
            kind = "aborted" if ticket.cancelled.is_set() else "crash"
            line = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            return JobResult(kind, None, time.monotonic() - ticket.started, f"ray: {line}", worker="ray")

    def _write_log(self, ticket: Ticket, result: JobResult) -> None:
        ticket.log_path.parent.mkdir(parents=True, exist_ok=True)
        ticket.log_path.unlink(missing_ok=True)
        fd = open_no_follow(ticket.log_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "wb") as log:
            log.write(result.log if result.log is not None else result.log_tail.encode())

    def cancel(self, ticket: Ticket) -> None:
        ticket.cancelled.set()
        with self.lock:
            refs = [ref for ref, item in self.pending.items() if item is ticket]
        for ref in refs:
            self.ray.cancel(ref, force=True)

    def busy_seconds(self) -> dict[str, float]:
        with self.lock:
            return dict(self.busy)

    def shutdown(self) -> None:
        self.ray.shutdown()
