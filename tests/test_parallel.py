"""Several workers on Ray (a local cluster): trials side by side, the agent thinking while runs train, every
run logged once; and a kill -9 with runs in flight loses nothing and runs the interrupted trials again."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loop_helpers import PROJECT, ScriptedAgent, branch_runs, git, loop_config, make_repo, results

pytest.importorskip("ray", reason="the parallel loop needs the ray extra: pip install -e \".[ray]\"")

from research_loop.evaluation.acceptance import make_policy
from research_loop.loop import run_loop

TAG = "t"


@pytest.fixture
def repo(tmp_path, prepared_task7):
    return make_repo(tmp_path, prepared_task7)


def consistent(repo):
    rows = results(repo)
    runs = [int(row["run"]) for row in rows]
    assert sorted(runs) == list(range(len(rows)))  # every run once (completion order may differ)
    kept = [int(row["run"]) for row in rows if row["status"] == "keep"]
    assert branch_runs(repo, TAG) == sorted(kept)
    best = [row for row in rows if row["status"] in ("baseline", "keep")][-1]
    assert git(repo, "rev-parse", f"autoresearch/{TAG}") == best["commit"]
    assert git(repo, "status", "--porcelain") == ""
    return rows


def test_two_workers_run_trials_side_by_side_and_every_run_is_logged_once(repo):
    script = [("QUALITY", 0.7), ("QUALITY", 0.6), ("LEARNING_RATE", 1e-4), ("QUALITY", 0.8), ("QUALITY", 0.9)]
    config = loop_config(repo, TAG, max_runs=6, workers=2, lookahead=1, policy=make_policy("confirm", 3),
                         settings=[("SLEEP_S", 1.0)])
    started = time.monotonic()
    summary = run_loop(config, ScriptedAgent(script))
    rows = consistent(repo)
    assert summary.ok and len(rows) == 6
    workers = {worker for row in rows for worker in row["workers"].split(",") if worker}
    assert len(workers) >= 2  # Ray's worker processes (a slot may be served by a new process)
    # The baseline's three seeds ran two at a time, never three: their sleeps overlap pairwise only.
    logs = sorted((repo / "runs" / TAG / "0000").glob("**/run.log"))
    sleeps = [tuple(map(float, re.search(r"slept from (\S+) to (\S+)", log.read_text()).groups())) for log in logs]
    assert len(sleeps) == 3
    most_at_once = max(sum(start <= moment < end for start, end in sleeps) for moment, _ in sleeps)
    assert most_at_once == 2
    stale = [row for row in rows if row["status"] == "invalid"]
    assert all("stale" in row["note"] for row in stale)
    assert time.monotonic() - started < 240


def test_kill_9_with_runs_in_flight_loses_nothing_and_reruns_them(repo):
    script = [["QUALITY", 0.7], ["QUALITY", 0.9], ["SLEEP_S", 20.0]]
    command = [sys.executable, str(PROJECT / "tests" / "loop_helpers.py"), str(repo), TAG, json.dumps(script), "8",
               json.dumps({"workers": 2, "lookahead": 1, "settings": [["SLEEP_S", 4.0]]})]
    process = subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        live = repo / "runs" / TAG / "live.json"
        rows = results(repo)
        if rows and live.exists() and len(json.loads(live.read_text()).get("jobs", [])) >= 2:
            break
        time.sleep(0.2)
    before = results(repo)
    os.killpg(process.pid, signal.SIGKILL)  # the loop and everything in its session
    process.wait(timeout=30)
    assert before, "the night never got going"
    code = subprocess.run(command[:5] + ["3", json.dumps({"workers": 2, "lookahead": 0,
                                                          "settings": [["SLEEP_S", 4.0]]})],
                          cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert code.returncode == 0, code.stdout + code.stderr
    rows = consistent(repo)
    assert [row["run"] for row in rows[: len(before)]] == [row["run"] for row in before]  # nothing lost
    assert "interrupted: running it again" in code.stdout or len(rows) > len(before)


def test_a_ray_worker_hides_the_repository_and_the_loops_folders_wherever_they_are(tmp_path):
    """A Ray worker on this machine sees the same file system as the loop: the repository (its data/ holds
    val's gold) and the loop's private folders are hidden there too, also outside the home and /tmp."""
    from research_loop.execution import sandbox
    from research_loop.execution.executors import Ticket
    from research_loop.execution.jobs import Job
    from research_loop.execution.ray_executor import RayExecutor

    if not os.access("/opt", os.W_OK):
        pytest.skip("needs a writable /opt (CI runs as root)")
    backend, _ = sandbox.choose("auto", allow_none=False)
    root = Path("/opt") / f"ner-autoresearch-test-{os.getpid()}"
    repo, private = root / "repo", root / "cache"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "val.jsonl").write_text('{"tags": ["B-Gold"]}\n')
    private.mkdir()
    (private / "holdout.jsonl").write_text('{"tags": ["B-Gold"]}\n')
    code = (f"import os\nfor path in ({str(repo / 'data' / 'val.jsonl')!r}, {str(private / 'holdout.jsonl')!r}):\n"
            "    print(path, os.path.exists(path))\n")
    executor = RayExecutor(1, backend, tmp_path / "jobs", repo, [private])
    try:
        ticket = Ticket(0, 0, tmp_path / "run.log", tmp_path / "0.pid")
        executor.submit(Job(code, {}, {}, 42), ticket)
        deadline, done = time.monotonic() + 120, []
        while not done and time.monotonic() < deadline:
            done = executor.poll(1.0)
    finally:
        executor.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    assert done, "the job never came back"
    result = done[0][1]
    assert result.kind == "ok", result.log_tail
    assert f"{repo / 'data' / 'val.jsonl'} False" in result.log_tail
    assert f"{private / 'holdout.jsonl'} False" in result.log_tail
