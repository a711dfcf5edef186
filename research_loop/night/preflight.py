"""What a command checks before it creates anything: no other loop holds the repository, data/ is prepared
(prepare.py runs itself when it is missing), every --set value passes train.py's own config check in the
sandbox, a search agent's space goes through that check too, and the agent answers. Each failure is one line; the repository is left as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from research_loop import config_block
from research_loop.execution import sandbox
from research_loop.night.lock import running_loop


class PreflightError(Exception):
    """A one-line reason the command did not start; nothing was created."""


def refuse_if_held(repo: Path) -> None:
    """Another loop, calibrate or export on this repository: refused before any other line is printed."""
    holder = running_loop(repo)
    if holder:
        tag, pid, command = holder
        raise PreflightError(f"`agent_loop.py {command}` is running on this repository (pid {pid}, night {tag}); "
                             "wait for it, or see `python agent_loop.py status`")


def ensure_data(repo: Path, source: str | None, echo) -> None:
    """data/ prepared: when it is missing, `python prepare.py` (with --source DIR when given) runs first,
    exactly as a user would run it, and its one-line error is the command's."""
    if (repo / "data" / "manifest.json").is_file():
        if source:
            echo(f"data/ is already prepared; --source {source} is not used (run prepare.py to prepare it again)")
        return
    echo("data/ is not prepared: running prepare.py" + (f" --source {source}" if source else " (download)"))
    command = [sys.executable, "prepare.py", *(["--source", str(Path(source).resolve())] if source else [])]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if line.startswith("error:")), lines[-1] if lines else "")
        raise PreflightError(f"prepare.py: {error.removeprefix('error: ') or f'exit code {done.returncode}'}")
    for line in done.stdout.splitlines():
        echo(f"  {line}")


def choose_backend(sandbox_kind: str, allow_unsandboxed: bool) -> str:
    """The sandbox backend that works here (or none, when the night may run unsandboxed)."""
    try:
        return sandbox.choose(sandbox_kind, allow_unsandboxed)[0]
    except sandbox.SandboxError as exc:
        raise PreflightError(str(exc)) from None


def check_job(repo: Path, train_py: str, fixed_files: dict[str, bytes], backend: str, jobs_root: Path,
              private: list[Path], label: str, extra_args: tuple[str, ...] = ()):
    """`train.py --check` (plus extra_args) in the sandbox, on the val data view: (the job's result, its
    error line or None). The train.py is a night's, so it may be an agent's."""
    from research_loop.evaluation.dataviews import DataViews
    from research_loop.execution.jobs import Job, run_job

    view = DataViews(repo / "data", "val", 2, 0).view()
    job = Job(train_py, fixed_files, view.files, seed=42, timeout_s=300.0, extra_args=("--check", *extra_args),
              label=label)
    result = run_job(job, backend, jobs_root=jobs_root, repo=repo, private=private, grace_s=2.0)
    lines = [line.strip() for line in result.log_tail.splitlines() if line.strip()]
    error = next((line for line in reversed(lines) if line.startswith("error:")), None)
    return result, error.removeprefix("error: ") if error else None


def check_settings(repo: Path, train_py: str, fixed_files: dict[str, bytes], settings: list[tuple[str, object]],
                   backend: str, jobs_root: Path, private: list[Path]) -> None:
    """The --set values written into train.py's config block, checked by `train.py --check` in the sandbox:
    every bad knob is named at once."""
    try:
        candidate = config_block.apply_settings(train_py, settings)
    except config_block.ConfigBlockError as exc:
        raise PreflightError(str(exc)) from None
    result, error = check_job(repo, candidate, fixed_files, backend, jobs_root, private, "config check")
    if result.kind == "ok":
        return
    listed = " ".join(f"{name}={config_block.literal(value)}" for name, value in settings)
    if error:
        raise PreflightError(f"--set {listed}: {error}")
    raise PreflightError(f"--set {listed}: train.py --check failed ({result.error_line()})")


def check_search_space(repo: Path, train_py: str, fixed_files: dict[str, bytes], space: dict[str, list],
                       backend: str, jobs_root: Path, private: list[Path]) -> list[dict]:
    """A search agent's space through `train.py --check --check-space`: the changes train.py refuses, alone
    or two together ({"change", "why"} each), so the search never proposes them."""
    result, error = check_job(repo, train_py, fixed_files, backend, jobs_root, private, "search space check",
                              ("--check-space", json.dumps(space)))
    if result.kind != "ok":
        raise PreflightError(f"train.py --check could not check the search space: {error or result.error_line()}")
    try:
        refused = json.loads(result.outputs["refused.json"])
    except (KeyError, ValueError):
        raise PreflightError("train.py --check --check-space wrote no readable refused.json") from None
    if not isinstance(refused, list) or not all(isinstance(entry, dict) and isinstance(entry.get("change"), dict)
                                                for entry in refused):
        raise PreflightError("train.py --check --check-space: refused.json is not a list of changes")
    return refused


def check_agent(agent) -> None:
    """The agent's own start-up check (a key accepted, a server and model that answer, a login), if it has one."""
    check = getattr(agent, "check", None)
    if check is None:
        return
    from research_loop.agents.base import AgentError

    try:
        check()
    except AgentError as exc:
        raise PreflightError(str(exc)) from None
