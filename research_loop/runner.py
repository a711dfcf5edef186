"""Runs train.py as a subprocess: own process group, wall-clock kill, scrubbed environment, log to file."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

SECRET_PREFIXES = ("ANTHROPIC_", "OPENAI_")
SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
SECRET_SUFFIXES = ("_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
OOM_PATTERN = re.compile(r"CUDA out of memory|OutOfMemoryError")
TAIL_LINES = 50
TRAIN_OUTPUTS = ("run.log", "pred_val.jsonl", "pred_holdout.jsonl", "pred_test.csv", "summary.json")
POLL_S = 0.05


@dataclass
class RunOutcome:
    """How one train.py process ended."""

    kind: str  # "ok", "crash", "oom", "timeout" or "aborted" (the loop was told to stop at once)
    returncode: int | None
    seconds: float
    log_path: Path
    log_tail: str = ""
    printed: dict[str, str] = field(default_factory=dict)  # the final `---` block; informational only

    def error_line(self) -> str:
        """The most telling line of the log, for the results row."""
        if self.kind == "timeout":
            return f"killed after {self.seconds:.0f} s (wall-clock limit)"
        lines = [line.strip() for line in self.log_tail.splitlines() if line.strip()]
        if self.kind == "oom":
            return next((line for line in reversed(lines) if OOM_PATTERN.search(line)), "CUDA out of memory")
        last = lines[-1] if lines else "(empty log)"
        return f"exit code {self.returncode}: {last}"[:300]


def is_secret(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(SECRET_PREFIXES) or upper in SECRET_NAMES or upper.endswith(SECRET_SUFFIXES)


def training_env(base: dict[str, str], empty_cache: Path, offline: bool) -> dict[str, str]:
    """The environment train.py gets: no keys or tokens, no path to the holdout gold, hub offline once cached."""
    env = {name: value for name, value in base.items() if not is_secret(name)}
    env["NER_AUTORESEARCH_CACHE"] = str(empty_cache)  # holdout_gold_path() then points at nothing
    env["PYTHONUNBUFFERED"] = "1"  # so a crash's log tail is complete
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
    return env


def training_command(out_dir: Path, seed: int, train_args: str) -> list[str]:
    return [sys.executable, "train.py", "--out", str(out_dir), "--seed", str(seed), *shlex.split(train_args)]


def read_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log (reading only its end)."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 64 * 1024))
            text = file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def parse_printed(log_text: str) -> dict[str, str]:
    """The `key: value` lines after the last `---` line that train.py prints."""
    lines = log_text.splitlines()
    starts = [index for index, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    block = {}
    for line in lines[starts[-1] + 1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            block[key.strip()] = value.strip()
    return block


def kill_group(pgid: int, grace_s: float, process: subprocess.Popen) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after grace_s."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            process.poll()
            if not _group_alive(pgid):
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


def kill_stale(pid_file: Path) -> bool:
    """Kill the process group of a train.py that a killed loop left running (its pid file says which)."""
    try:
        pid = int(pid_file.read_text().strip())
        command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        command_line = b""
    pid_file.unlink(missing_ok=True)
    if b"train.py" not in command_line:  # gone, or the pid now belongs to something else
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def run_train_py(cwd: Path, out_dir: Path, seed: int, train_args: str, *, offline: bool, timeout_s: float,
                 log_path: Path | None = None, extra_args: Sequence[str] = (),
                 abort: Callable[[], bool] = lambda: False, grace_s: float = 10.0) -> RunOutcome:
    """train.py once, as the loop runs it: out_dir's stale outputs cleared, a scrubbed environment whose
    cache folder is empty (no path to the holdout gold), its own process group, the log in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    empty_cache = Path(tempfile.mkdtemp(prefix="ner-autoresearch-nocache-"))
    try:
        env = training_env(dict(os.environ), empty_cache, offline=offline)
        out = out_dir.relative_to(cwd) if out_dir.is_relative_to(cwd) else out_dir
        command = [*training_command(out, seed, train_args), *extra_args]
        return run_training(command, cwd, log_path or out_dir / "run.log", env, timeout_s, abort=abort,
                            grace_s=grace_s)
    finally:
        shutil.rmtree(empty_cache, ignore_errors=True)


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Yields a check that turns true on Ctrl-C or SIGTERM, for run_training's abort: train.py sits in its
    own session, so the key never reaches it, and the runner kills its whole group instead."""
    pressed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield pressed.is_set
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: pressed.set())
    try:
        yield pressed.is_set
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_training(command: list[str], cwd: Path, log_path: Path, env: dict[str, str], timeout_s: float,
                 abort: Callable[[], bool] = lambda: False, grace_s: float = 10.0) -> RunOutcome:
    """Run command with stdout+stderr to log_path; kill its whole group at timeout_s or when abort() says so.
    While it runs, train.pid beside the log names it, so a restarted loop can kill it if this one dies."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_file = log_path.with_name("train.pid")
    start = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    pid_file.write_text(f"{process.pid}\n")
    kind = None
    while process.poll() is None:
        if time.monotonic() - start > timeout_s:
            kind = "timeout"
        elif abort():
            kind = "aborted"
        if kind:
            kill_group(process.pid, grace_s, process)
            process.wait()
            break
        time.sleep(POLL_S)
    # Children that outlived train.py (dataloader workers, a stray shell) die with it.
    kill_group(process.pid, 0.0, process)
    pid_file.unlink(missing_ok=True)
    seconds = time.monotonic() - start
    tail = read_tail(log_path)
    if kind is None:
        if process.returncode == 0:
            kind = "ok"
        else:
            kind = "oom" if OOM_PATTERN.search(tail) else "crash"
    printed = parse_printed(tail) if kind == "ok" else {}
    return RunOutcome(kind, process.returncode, seconds, log_path, tail, printed)
