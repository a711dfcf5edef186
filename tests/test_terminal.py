"""The night in a real terminal: Ctrl-C from a pseudo-terminal reaches the whole foreground process group,
as a user's terminal (or tmux C-c) sends it. Once: the runs in flight finish and the night stops cleanly;
twice: they are killed. During training, during the agent's call, during a git step; and 20 times in a row."""

import json
import os
import sys
import time

import pexpect
import pytest
from fake_openai import FakeOpenAI, completion, slow, tool_call
from loop_helpers import git, make_repo, results, train_pid_file

from research_loop.cli.status import describe_status

TAG = "t"


@pytest.fixture
def repo(tmp_path, prepared_task7):
    return make_repo(tmp_path, prepared_task7)


def spawn(repo, *args, env=None):
    """agent_loop.py in a pseudo-terminal of its own (pexpect makes it the session's foreground group)."""
    environment = {**os.environ, **(env or {})}
    return pexpect.spawn(sys.executable, ["agent_loop.py", *args], cwd=str(repo), env=environment, timeout=180,
                         encoding="utf-8", codec_errors="replace", dimensions=(50, 200))


def builtin_night(repo, *extra, env=None):
    return spawn(repo, "--agent", "builtin", "--tag", TAG, "--policy", "monotonic", "--max-runs", "30",
                 "--set", "SLEEP_S=1.5", *extra, env=env)


def wait_for(check, seconds=120):
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def finish(child) -> str:
    child.expect(pexpect.EOF)
    child.close()
    return child.before


def check_night(repo, output, exit_status=0):
    """What every stop must leave: a stopped line, every run logged once in order, the branch on the best
    run's commit, a clean tree, and current state files."""
    rows = results(repo)
    assert exit_status == 0, output
    assert "stopped:" in output or "aborted" in output, output
    runs = [int(row["run"]) for row in rows]
    assert runs == sorted(set(runs)), runs  # no row lost or duplicated
    best = [row for row in rows if row["status"] in ("baseline", "keep")][-1]
    assert git(repo, "rev-parse", f"autoresearch/{TAG}") == best["commit"]
    assert git(repo, "status", "--porcelain") == ""
    stop = json.loads((repo / "runs" / TAG / "last_stop.json").read_text())
    assert stop["stop_reason"] and not stop["finished"]
    state = (repo / "CURRENT_STATE.md").read_text()
    assert f"| {rows[-1]['run']} | {rows[-1]['status']} |" in state
    return rows


def test_ctrl_c_once_during_training_finishes_the_run_then_stops(repo):
    child = builtin_night(repo)
    wait_for(lambda: train_pid_file(repo, TAG, 1).exists())
    child.sendcontrol("c")
    output = finish(child)
    rows = check_night(repo, output, child.exitstatus)
    assert "stopped: stopped by Ctrl-C" in output and "to resume this night" in output
    assert [row["run"] for row in rows][:2] == ["0", "1"]  # the run in flight was finished and logged


def test_ctrl_c_twice_during_training_kills_the_run_and_logs_nothing_half_done(repo):
    child = builtin_night(repo)
    wait_for(lambda: train_pid_file(repo, TAG, 1).exists())
    child.sendcontrol("c")
    time.sleep(0.3)
    child.sendcontrol("c")
    output = finish(child)
    rows = check_night(repo, output, child.exitstatus)
    assert "aborted" in output and [row["run"] for row in rows] == ["0"]
    assert not train_pid_file(repo, TAG, 1).exists()
    # The interrupted run was committed: the next plain command resumes the night and runs it first.
    child = spawn(repo, "--agent", "builtin", "--max-runs", "1", "--set", "SLEEP_S=0.0")
    output = finish(child)
    assert "--set applies to a new night" in output  # a resumed night keeps its settings
    child = spawn(repo, "--agent", "builtin", "--max-runs", "1", "--set", "SLEEP_S=1.5")  # the night's own --set
    output = finish(child)
    assert "resuming night t" in output and child.exitstatus == 0
    assert [row["run"] for row in results(repo)] == ["0", "1"]


def test_ctrl_c_during_the_agents_call_stops_without_waiting_for_it(repo):
    submit = completion(tool_call("submit", {"hypothesis": "h", "direction": "d"}))
    with FakeOpenAI([slow(30, submit)] * 3) as fake:
        child = spawn(repo, "--agent", "openai", "--llm", "local-model", "--base-url", fake.url, "--tag", TAG,
                      "--policy", "monotonic", env={"OPENAI_API_KEY": "sk-test-not-a-real-key-123456"})
        wait_for(lambda: len(fake.requests) >= 1)
        started = time.monotonic()
        child.sendcontrol("c")
        output = finish(child)
    assert time.monotonic() - started < 20  # it did not wait 30 s for the model
    rows = check_night(repo, output, child.exitstatus)
    assert [row["status"] for row in rows] == ["baseline"]


def test_ctrl_c_during_a_git_step_lets_the_step_finish(repo):
    child = builtin_night(repo, env={"NER_AUTORESEARCH_TEST_PAUSE_AT": "after_row@1"})
    child.expect("paused at after_row", timeout=120)
    child.sendcontrol("c")
    output = finish(child)
    rows = check_night(repo, output, child.exitstatus)
    assert [row["run"] for row in rows] == ["0", "1"]


@pytest.mark.parametrize("times", [4, pytest.param(20, marks=pytest.mark.slow)])
def test_ctrl_c_again_and_again(repo, times):
    """Ctrl-C at a different moment each time (start-up included), the same night resumed each time: every
    stop is clean. The slow variant is the 20-in-a-row target."""
    for attempt in range(times):
        args = ["--agent", "builtin", "--policy", "monotonic", "--max-runs", "50"]
        if attempt == 0:
            args += ["--tag", TAG, "--set", "SLEEP_S=0.3"]
        child = spawn(repo, *args)
        child.expect(["run \\d+:", "resuming"], timeout=120)
        time.sleep((attempt * 7 % times) * 0.25 / max(1, times / 7))
        child.sendcontrol("c")
        output = finish(child)
        check_night(repo, output, child.exitstatus)


@pytest.mark.parametrize("how", ["STOP", "Ctrl-C"])
def test_stop_and_ctrl_c_are_acknowledged_at_once_on_screen_and_in_status(repo, how):
    child = spawn(repo, "--agent", "builtin", "--tag", TAG, "--policy", "monotonic", "--max-runs", "30",
                  "--set", "SLEEP_S=15")
    wait_for(lambda: train_pid_file(repo, TAG, 1).exists())
    seen = time.monotonic()
    if how == "STOP":
        (repo / "STOP").touch()
        child.expect(r"stopping after run 1 \(STOP seen \d\d:\d\d:\d\d\); Ctrl-C again kills it", timeout=30)
    else:
        child.sendcontrol("c")
        child.expect(r"Ctrl-C seen \d\d:\d\d:\d\d: finishing the runs in flight", timeout=30)
    latency = time.monotonic() - seen
    assert train_pid_file(repo, TAG, 1).exists(), "acknowledged only after the run in flight ended"
    wait_for(lambda: "stopping after run 1" in " ".join(describe_status(repo)), seconds=30)
    status = describe_status(repo)
    assert any(line.startswith(f"stopping after run 1 ({how} seen") for line in status), status
    output = finish(child)
    assert child.exitstatus == 0, output
    print(f"{how} acknowledged on screen after {latency:.2f} s")
