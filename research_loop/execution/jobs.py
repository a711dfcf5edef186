"""One train.py run as a job: a private workspace, the sandbox, the output through a pipe, a wall-clock kill.

A job's workspace holds exactly what train.py needs: train.py (the candidate's text), prepare.py and
evaluate.py (the fixed files, from the commit), data/ (the data view: train with tags; val, holdout and
test tokens only) and an empty out/. The sandbox shows it read-only except out/. What train.py prints goes
through a pipe into the loop's own log (capped); what it writes to out/ comes back as bytes (regular files
only, size-capped, never through a link). The workspace is deleted afterwards. The same function runs a job
on this machine or on a Ray worker.
"""

from __future__ import annotations

import math
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from research_loop.execution import sandbox
from research_loop.execution.cgroups import JobCgroup
from research_loop.safe_io import open_no_follow

OOM_PATTERN = re.compile(r"CUDA out of memory|OutOfMemoryError")
LOG_HEAD_BYTES = 8 << 20  # the log keeps its first 8 MB ...
LOG_TAIL_BYTES = 256 << 10  # ... and its last 256 kB
MAX_OUTPUT_FILE = 64 << 20
MAX_OUTPUTS_TOTAL = 256 << 20
MAX_OUTPUT_FILES = 64
EXPECTED_OUTPUTS = ("pred_val.jsonl", "pred_holdout.jsonl", "pred_test.csv", "summary.json")
POLL_S = 0.05
# An output's name: a plain file name starting with a letter or digit (no dot files such as .git or .envrc).
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


@dataclass
class Job:
    """Everything a worker needs to run train.py once (all of it plain data, so it can travel to Ray)."""

    train_py: str
    fixed_files: dict[str, bytes]  # prepare.py, evaluate.py
    data: dict[str, bytes]  # paths under data/ -> content (the data view)
    seed: int
    fold: int | None = None
    timeout_s: float = math.inf  # wall-clock kill
    budget_s: float | None = None  # train.py gets --deadline (start + budget) and must finish by then
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # this slot's device variables
    label: str = ""


@dataclass
class JobResult:
    kind: str  # ok, crash, oom, timeout, aborted, sandbox (the sandbox could not be set up)
    returncode: int | None
    seconds: float
    log_tail: str
    outputs: dict[str, bytes] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # out/ entries not brought back, and why
    log: bytes | None = None  # the whole (capped) log, when no sink was given
    worker: str = ""

    def error_line(self) -> str:
        """The most telling line of the log, for the results row."""
        if self.kind == "timeout":
            return f"killed after {self.seconds:.0f} s (wall-clock limit)"
        lines = [line.strip() for line in self.log_tail.splitlines() if line.strip()]
        if self.kind == "oom":
            return "out of memory: " + next((line for line in reversed(lines) if OOM_PATTERN.search(line)),
                                            "CUDA out of memory")
        if self.kind == "sandbox":
            return next((line for line in reversed(lines) if line.startswith("sandbox:")), "sandbox setup failed")
        last = lines[-1] if lines else "(empty log)"
        return f"exit code {self.returncode}: {last}"[:300]


class LogSink:
    """Writes the pipe into a log: the first LOG_HEAD_BYTES as they come, then only the tail is kept."""

    def __init__(self, target: BinaryIO | None):
        self.target = target
        self.head = bytearray() if target is None else None
        self.written = 0
        self.dropped = 0
        self.tail = bytearray()

    def write(self, chunk: bytes) -> None:
        room = max(0, LOG_HEAD_BYTES - self.written)
        if room:
            part = chunk[:room]
            if self.head is not None:
                self.head += part
            else:
                self._to_target(part)
            self.written += len(part)
        self.dropped += max(0, len(chunk) - room)
        self.tail += chunk
        del self.tail[:-LOG_TAIL_BYTES]

    def close(self) -> bytes | None:
        ending = b""
        if self.dropped:
            kept = min(self.dropped, len(self.tail))
            ending = f"\n[... {self.dropped - kept} bytes of output left out ...]\n".encode() + bytes(self.tail[-kept:])
            if self.head is None:
                self._to_target(ending)
        return None if self.head is None else bytes(self.head) + ending

    def _to_target(self, data: bytes) -> None:
        """A full disk stops the log file, never the pipe: train.py must not block on a pipe nobody drains."""
        if self.target is None:
            return
        try:
            self.target.write(data)
            self.target.flush()
        except OSError:
            self.target = None

    def tail_text(self, lines: int = 50) -> str:
        return "\n".join(self.tail.decode("utf-8", errors="replace").splitlines()[-lines:])


def parse_printed(log_text: str) -> dict[str, str]:
    """The `key: value` lines after the last `---` line train.py prints (informational only)."""
    lines = log_text.splitlines()
    starts = [index for index, line in enumerate(lines) if line.strip() == "---"]
    block = {}
    for line in lines[starts[-1] + 1:] if starts else []:
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            block[key.strip()] = value.strip()
    return block


def build_workspace(job: Job, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix="job-", dir=root))
    (workspace / "train.py").write_text(job.train_py, encoding="utf-8")
    for name, content in job.fixed_files.items():
        (workspace / name).write_bytes(content)
    for relative, content in job.data.items():
        path = workspace / "data" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    (workspace / "out").mkdir()
    return workspace


def collect_outputs(out_dir: Path) -> tuple[dict[str, bytes], list[str]]:
    """The regular files train.py left directly in out/ (plain names, one hard link, within the caps; the
    prediction files first); folders, links, dot files and anything past the caps are counted, never read
    or followed."""
    outputs, skipped, total = {}, {}, 0
    with os.scandir(out_dir) as scan:
        entries = [entry for _, entry in zip(range(20 * MAX_OUTPUT_FILES), scan)]
    entries.sort(key=lambda entry: (entry.name not in EXPECTED_OUTPUTS, entry.name))
    for entry in entries:
        name = entry.name
        info = entry.stat(follow_symlinks=False)
        if not SAFE_NAME.match(name):
            reason = "not a plain file name"
        elif not stat.S_ISREG(info.st_mode):
            reason = "not a regular file"
        elif info.st_nlink != 1:
            reason = "a hard link"
        elif len(outputs) >= MAX_OUTPUT_FILES:
            reason = f"over {MAX_OUTPUT_FILES} files"
        elif info.st_size > MAX_OUTPUT_FILE or total + info.st_size > MAX_OUTPUTS_TOTAL:
            reason = "over the size cap"
        else:
            fd = open_no_follow(Path(entry.path), single_link=True)
            with os.fdopen(fd, "rb") as file:
                outputs[name] = file.read(MAX_OUTPUT_FILE + 1)
            total += len(outputs[name])
            continue
        skipped.setdefault(reason, []).append(name if SAFE_NAME.match(name) else repr(name)[:40])
    notes = [f"{', '.join(names[:3])}{f' and {len(names) - 3} more' if len(names) > 3 else ''} ({reason})"
             for reason, names in sorted(skipped.items())]
    return outputs, notes


def remove_tree(folder: Path) -> None:
    """Delete a job's workspace whatever train.py left in it (deep folders, folders without permissions)."""
    if not folder.exists():
        return
    subprocess.run(["chmod", "-R", "u+rwX", str(folder)], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], capture_output=True, check=False)


def command_for(job: Job, deadline: float | None) -> list[str]:
    command = [sys.executable, "train.py", "--out", "out", "--seed", str(job.seed)]
    if job.fold is not None:
        command += ["--fold", str(job.fold)]
    if deadline is not None:
        command += ["--deadline", f"{deadline:.1f}"]
    return command + list(job.extra_args)


def kill_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the launcher's process group, SIGKILL whatever is left after grace_s (the sandbox's PID
    namespace dies with its launcher)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if process.poll() is not None and not _group_alive(process.pid):
                return
            time.sleep(POLL_S)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_job(job: Job, backend: str, *, jobs_root: Path, repo: Path | None = None, private: list[Path] = (),
            log: BinaryIO | None = None, abort: Callable[[], bool] = lambda: False, grace_s: float = 10.0,
            limits: sandbox.Limits = sandbox.DEFAULT_LIMITS, on_start: Callable[[int], None] = lambda pid: None,
            worker: str = "local") -> JobResult:
    """Run one job to the end (or the kill) and return what came out of it."""
    workspace = build_workspace(job, jobs_root)
    group = JobCgroup(limits.processes, limits.memory())
    try:
        start = time.monotonic()
        deadline = time.time() + job.budget_s if job.budget_s else None
        spec = sandbox.make_spec(workspace, workspace / "out", command_for(job, deadline),
                                 {**os.environ, **job.env}, repo, [jobs_root, *private], limits)
        spec.cgroup_procs = group.procs
        spec.use_systemd_scope = not group.procs and sandbox.systemd_scope_works()
        argv = sandbox.launch_argv(backend, spec)
        sink = LogSink(log)
        process = subprocess.Popen(argv, cwd=workspace, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        on_start(process.pid)
        reader = threading.Thread(target=_pump, args=(process.stdout, sink), daemon=True)
        reader.start()
        kind = _wait(process, start, job.timeout_s, abort, grace_s)
        kill_group(process, 0.0)  # whatever train.py left behind (the none backend has no PID namespace)
        reader.join(timeout=10)
        seconds = time.monotonic() - start
        whole = sink.close()
        tail = sink.tail_text()
        if kind is None:
            if process.returncode == 0:
                kind = "ok"
            elif process.returncode == sandbox.SETUP_FAILED and "sandbox:" in tail:
                kind = "sandbox"
            else:
                kind = "oom" if OOM_PATTERN.search(tail) else "crash"
        try:
            outputs, skipped = collect_outputs(workspace / "out") if kind == "ok" else ({}, [])
        except OSError as exc:
            outputs, skipped = {}, [f"out/ could not be read ({exc.strerror or exc})"]
        return JobResult(kind, process.returncode, seconds, tail, outputs, skipped, whole, worker)
    finally:
        remove_tree(workspace)
        group.remove()


def _pump(stream, sink: LogSink) -> None:
    for chunk in iter(lambda: stream.read1(65536), b""):
        sink.write(chunk)


def _wait(process: subprocess.Popen, start: float, timeout_s: float, abort: Callable[[], bool],
          grace_s: float) -> str | None:
    while process.poll() is None:
        kind = "timeout" if time.monotonic() - start > timeout_s else "aborted" if abort() else None
        if kind:
            kill_group(process, grace_s)
            process.wait()
            return kind
        time.sleep(POLL_S)
    return None
