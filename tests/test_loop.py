"""The loop end to end on a temporary git repository, with a fast fake train.py and scripted agents."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from loop_helpers import (
    FAKE_TRAIN_PY,
    PROJECT,
    ScriptedAgent,
    alive,
    branch_runs,
    data_without_test_rows,
    expected_strict_f1,
    fake_quality,
    git,
    loop_config,
    make_repo,
    results,
    set_constant,
    train_pid_file,
)

from research_loop.agents.base import AgentError, Proposal, Usage
from research_loop.cli.status import describe_status
from research_loop.config_block import read_config
from research_loop.evaluation.acceptance import Confirm
from research_loop.loop import LoopError, run_loop
from research_loop.night.lock import LoopLock
from research_loop.records.integrity import sha256_of

TAG = "t"


@pytest.fixture
def repo(tmp_path, prepared_task7):
    return make_repo(tmp_path, prepared_task7)


def config(repo, **overrides):
    settings = {"timeout_s": 30, "agent_max_failures": 1}
    return loop_config(repo, TAG, **{**settings, **overrides})


def statuses(repo):
    return [row["status"] for row in results(repo)]


def test_keep_discard_crash_rows_and_branch(repo):
    agent = ScriptedAgent([("QUALITY", 0.7), ("QUALITY", 0.6), ("ACTION", "crash"), ("QUALITY", 0.8)])
    summary = run_loop(config(repo, max_runs=5), agent)

    rows = results(repo)
    assert statuses(repo) == ["baseline", "keep", "discard", "crash", "keep"]
    assert "--max-runs" in summary.stop_reason and summary.ok
    # Scores come from the prediction files, never from the 0.999999 the fake prints.
    for row, quality in zip(rows, [0.5, 0.7, 0.6, None, 0.8]):
        if quality is not None:
            assert float(row["strict_f1"]) == pytest.approx(expected_strict_f1(repo, fake_quality(quality)), abs=1e-6)
    assert rows[3]["strict_f1"] == "" and "boom" in rows[3]["note"]
    assert {"strict_f1_ClinicalImpacts", "strict_f1_SocialImpacts", "seed_scores", "strict_f1_sd", "seeds",
            "cost_usd", "peak_vram_gb", "seconds", "direction", "description", "timestamp", "device", "sandbox",
            "epochs", "workers", "parent"} <= set(rows[0])
    assert rows[1]["peak_vram_gb"] == "1.00" and rows[1]["seeds"] == "42"
    assert rows[1]["parent"] == rows[0]["commit"] and rows[4]["parent"] == rows[1]["commit"]

    # The branch holds the baseline and the kept runs; every candidate stays reachable under a ref.
    assert branch_runs(repo, TAG) == [1, 4]
    assert git(repo, "rev-parse", f"autoresearch/{TAG}") == rows[4]["commit"]
    assert "QUALITY = 0.6" in git(repo, "show", f"refs/autoresearch/{TAG}/run-2:train.py")
    assert read_config((repo / "train.py").read_text())["QUALITY"][1] == 0.8
    assert git(repo, "status", "--porcelain") == ""

    # The crash's log tail reaches the next proposal, and CURRENT_STATE.md shows the best config.
    assert "RuntimeError: boom" in agent.contexts[3].last_log_tail
    assert agent.contexts[2].last_log_tail is None
    state = (repo / "CURRENT_STATE.md").read_text()
    assert "Run 4 (keep" in state and "QUALITY = 0.8  # share of val rows" in state
    assert "| quality | 3 |" in state


def test_failed_runs_are_crashes_with_the_reason(repo):
    agent = ScriptedAgent([("ACTION", "oom"), ("ACTION", "nopred"), ("ACTION", "badpred")])
    run_loop(config(repo, max_runs=4), agent)
    rows = results(repo)
    assert statuses(repo) == ["baseline", "crash", "crash", "crash"]
    assert rows[1]["note"].startswith("out of memory") and "CUDA out of memory" in rows[1]["note"]
    assert "pred_val.jsonl: no such file" in rows[2]["note"]
    assert "tags, but the gold row has" in rows[3]["note"]
    assert branch_runs(repo, TAG) == []


def test_timeout_kills_everything_train_py_started(repo):
    run_loop(config(repo, max_runs=2, timeout_s=3), ScriptedAgent([("ACTION", "grandchild")]))
    row = results(repo)[1]
    assert row["status"] == "timeout" and "killed after" in row["note"]
    assert 2.5 < float(row["seconds"]) < 15
    # The sandbox's own PID namespace died with it: no python sleeping 600 s is left anywhere.
    leftovers = subprocess.run(["pgrep", "-f", "time.sleep(600)"], capture_output=True, text=True, check=False).stdout.split()
    assert leftovers == []


def test_non_compiling_proposal_is_invalid_without_training(repo):
    agent = ScriptedAgent(["def broken(:\n", ("QUALITY", 0.7)])
    run_loop(config(repo, max_runs=3), agent)
    assert statuses(repo) == ["baseline", "invalid", "keep"]
    assert "does not compile" in results(repo)[1]["note"] and results(repo)[1]["commit"] == ""
    assert not (repo / "runs" / TAG / "0001" / "run.log").exists()
    assert (repo / "runs" / TAG / "0001" / "proposal_train.py").read_text() == "def broken(:\n"
    assert "does not compile" in agent.contexts[1].feedback


def test_a_proposal_past_the_size_cap_is_invalid_before_any_commit(repo):
    giant = FAKE_TRAIN_PY + "".join(f"# padding {index:07d} {'x' * 80}\n" for index in range(7000))  # ~650 KB
    agent = ScriptedAgent([giant, ("QUALITY", 0.7)])
    run_loop(config(repo, max_runs=3), agent)
    assert statuses(repo) == ["baseline", "invalid", "keep"]
    note = results(repo)[1]["note"]
    assert f"train.py is {len(giant.encode()):,} bytes, over the cap of 512 KB" in note and "\n" not in note
    assert results(repo)[1]["commit"] == ""
    assert "over the cap of 512 KB" in agent.contexts[1].feedback
    saved = repo / "runs" / TAG / "0001" / "proposal_train.py"
    assert saved.stat().st_size < 512 * 1024 + 100  # the refused text is not kept whole either
    tried = subprocess.run(["git", "-C", str(repo), "log", "--all", "--format=%H"], capture_output=True, text=True,
                           check=True).stdout.split()
    for commit in tried:  # no commit anywhere holds the giant
        size = subprocess.run(["git", "-C", str(repo), "cat-file", "-s", f"{commit}:train.py"], capture_output=True,
                              text=True, check=False).stdout.strip()
        assert not size or int(size) < 512 * 1024


def test_unsandboxed_train_py_writing_a_protected_file_is_invalid_and_restored(repo):
    original = sha256_of(repo / "evaluate.py")
    tamper = set_constant(set_constant(FAKE_TRAIN_PY, "TAMPER_TARGET", str(repo / "evaluate.py")), "ACTION", "tamper")
    agent = ScriptedAgent([tamper, ("QUALITY", 0.7)])
    run_loop(config(repo, max_runs=3, sandbox="none"), agent)  # without a sandbox the loop can only undo it
    rows = results(repo)
    assert statuses(repo) == ["baseline", "invalid", "keep"]
    assert "evaluate.py (modified)" in rows[1]["note"] and "evaluate.py (modified)" in agent.contexts[1].feedback
    assert {row["sandbox"] for row in rows} == {"none"}
    assert sha256_of(repo / "evaluate.py") == original
    assert (repo / "runs" / TAG / "0001" / "tampered" / "evaluate.py").read_text().endswith("# tampered\n")
    assert branch_runs(repo, TAG) == [2]
    assert git(repo, "status", "--porcelain") == ""


def test_protected_files_intact_after_a_normal_night(repo):
    protected = ["prepare.py", "evaluate.py", "agent_loop.py", "program.md", "pyproject.toml",
                 "research_loop/loop.py", "data/val.jsonl", "data/manifest.json", "data/holdout.jsonl"]
    before = {name: sha256_of(repo / name) for name in protected}
    run_loop(config(repo, max_runs=3), ScriptedAgent([("QUALITY", 0.7), ("QUALITY", 0.6)]))
    assert {name: sha256_of(repo / name) for name in protected} == before


def test_duplicates_go_back_to_the_agent_before_training(repo):
    comment_only = None

    class Agent(ScriptedAgent):
        def propose(self, context):
            nonlocal comment_only
            if len(self.contexts) == 2:  # third call: the kept train.py plus a comment and blank lines
                self.contexts.append(context)
                comment_only = context.train_py + "\n\n# same program, new comment\n"
                return Proposal(train_py=comment_only, hypothesis="a comment", direction="rewrite")
            return super().propose(context)

    agent = Agent([("QUALITY", 0.7), ("QUALITY", 0.7), ("QUALITY", 0.6)])
    run_loop(config(repo, max_runs=3), agent)
    assert statuses(repo) == ["baseline", "keep", "discard"]
    assert "run 1" in agent.contexts[2].feedback and "run 1" in agent.contexts[3].feedback
    assert sorted(path.parent.name for path in (repo / "runs" / TAG).glob("*/run.log")) == ["0000", "0001", "0002"]


def test_too_many_duplicates_make_an_invalid_row(repo):
    run_loop(config(repo, max_runs=2, max_bounces=2), ScriptedAgent([("QUALITY", 0.5)] * 3))
    assert statuses(repo) == ["baseline", "invalid"]
    assert "duplicate of run 0" in results(repo)[1]["note"]


def test_train_py_gets_no_keys_no_network_and_no_holdout_gold(repo, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789abcdef")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "secret")
    monkeypatch.setenv("DB_PASSWORD", "secret")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    run_loop(config(repo, max_runs=2), ScriptedAgent([("QUALITY", 0.7)]))
    for run in ("0000", "0001"):
        env = json.loads((repo / "runs" / TAG / run / "env.json").read_text())
        for name in ("ANTHROPIC_API_KEY", "MY_SERVICE_TOKEN", "DB_PASSWORD", "HF_TOKEN"):
            assert name not in env
        assert env["NER_AUTORESEARCH_CACHE"] != os.environ["NER_AUTORESEARCH_CACHE"]
        assert env["HF_HUB_OFFLINE"] == "1" and env["HOME"] == "/tmp/home" and "PATH" in env
    assert results(repo)[0]["sandbox"] in ("bwrap", "unshare")


def test_stop_file_stops_after_the_current_run(repo):
    class Stopper(ScriptedAgent):
        def propose(self, context):
            if len(self.contexts) == 1:
                (repo / "STOP").write_text("")
            return super().propose(context)

    summary = run_loop(config(repo, max_runs=10), Stopper([("QUALITY", 0.6), ("QUALITY", 0.9)]))
    assert len(results(repo)) == 2 and "STOP" in summary.stop_reason and summary.finished
    assert not (repo / "STOP").exists()
    assert git(repo, "status", "--porcelain") == ""


def test_dirty_tree_is_refused_and_left_alone(repo):
    (repo / "program.md").write_text("my unsaved notes\n")
    result = subprocess.run([sys.executable, "agent_loop.py", "--agent", "builtin", "--tag", TAG], cwd=repo,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: the working tree has uncommitted changes (program.md)")
    assert len(result.stderr.strip().splitlines()) == 1
    assert (repo / "program.md").read_text() == "my unsaved notes\n"
    assert not (repo / "results.tsv").exists() and git(repo, "branch", "--show-current") == "main"


def test_agent_errors_are_retried_then_stop_the_loop(repo):
    class Flaky(ScriptedAgent):
        failures = 2

        def propose(self, context):
            if self.failures:
                self.failures -= 1
                raise AgentError("API overloaded")
            return super().propose(context)

    summary = run_loop(config(repo, max_runs=2, agent_max_failures=3), Flaky([("QUALITY", 0.7)]))
    assert statuses(repo) == ["baseline", "keep"] and summary.ok
    summary = run_loop(config(repo, max_runs=2, agent_max_failures=2), Flaky([]))
    assert not summary.ok and "the agent failed 2 times in a row" in summary.stop_reason


def test_cost_budget_stops_the_loop(repo):
    class Paid(ScriptedAgent):
        def propose(self, context):
            proposal = super().propose(context)
            proposal.usage = Usage(cost_usd=0.6, calls=1)
            return proposal

    summary = run_loop(config(repo, max_cost_usd=1.0), Paid([("QUALITY", 0.7), ("QUALITY", 0.6), ("QUALITY", 0.9)]))
    assert "--max-cost-usd" in summary.stop_reason and summary.cost_usd == pytest.approx(1.2)
    assert [row["cost_usd"] for row in results(repo)] == ["0.0000", "0.6000", "0.6000"]


def test_a_second_loop_is_refused_and_status_sees_the_first(repo):
    lock = LoopLock(repo, "other")
    lock.acquire()
    try:
        with pytest.raises(LoopError, match=f"`agent_loop.py run` is running .*pid {os.getpid()}"):
            run_loop(config(repo, max_runs=1), ScriptedAgent([]))
        assert describe_status(repo)[0] == f"a loop is running (pid {os.getpid()}, night other)"
    finally:
        lock.release()
    run_loop(config(repo, max_runs=2), ScriptedAgent([("QUALITY", 0.7)]))
    lines = describe_status(repo, TAG)
    assert lines[0] == "no loop is running"
    assert "2 runs; 1 baseline, 1 keep" in lines[1] and lines[2].startswith("best: run 1")


def test_resume_continues_numbering_and_keeps_the_best(repo):
    run_loop(config(repo, max_runs=2), ScriptedAgent([("QUALITY", 0.7)]))
    time.sleep(1.1)  # session starts are recorded to the second: on a fast machine both could share one
    agent = ScriptedAgent([("QUALITY", 0.6)])
    run_loop(config(repo, max_runs=1), agent)
    rows = results(repo)
    assert [row["run"] for row in rows] == ["0", "1", "2"] and statuses(repo) == ["baseline", "keep", "discard"]
    assert "QUALITY = 0.7" in agent.contexts[0].train_py
    assert "Run 1 (keep" in agent.contexts[0].current_state_md
    night = json.loads((repo / "runs" / TAG / "night.json").read_text())
    sessions = night["sessions"]  # the report's wall time leaves out the time between them
    assert len(sessions) == 2 and sessions[0] < sessions[1] == night["resumed"] and night["started"] <= sessions[0]


def test_null_agent_runs_comment_only_proposals_and_ties_are_discarded(repo):
    from research_loop.agents.builtin_agent import NullAgent

    run_loop(config(repo, max_runs=3, check_duplicates=False), NullAgent())
    rows = results(repo)
    assert statuses(repo) == ["baseline", "discard", "discard"]
    assert rows[1]["strict_f1"] == rows[0]["strict_f1"] and rows[1]["direction"] == "null"
    assert git(repo, "show", f"refs/autoresearch/{TAG}/run-2:train.py").endswith("# null proposal 2")


def test_builtin_agent_stops_the_loop_when_its_search_is_exhausted(repo):
    from research_loop.agents.builtin_agent import BuiltinAgent

    agent = BuiltinAgent(["O", "B-ClinicalImpacts", "I-ClinicalImpacts"], ["ClinicalImpacts"], seed=0)
    summary = run_loop(config(repo, max_runs=100, agent_max_failures=5), agent)
    assert not summary.ok and "the agent cannot go on" in summary.stop_reason
    rows = results(repo)
    # The fake train.py has three knobs the builtin agent knows: 7 + 3 + 2 one-constant changes of the best.
    assert 12 <= len(rows) < 40 and {row["status"] for row in rows[1:]} <= {"keep", "discard"}
    assert len({row["description"] for row in rows}) == len(rows)


# ----- kill -9 at several points, then restart: nothing lost, nothing duplicated -----


def drive(repo, script, max_runs, crash_at=None, wait_for=None, overrides=None):
    """Run the loop with a scripted agent in a subprocess; kill -9 it when wait_for() turns true."""
    env = dict(os.environ)
    env.pop("NER_AUTORESEARCH_TEST_CRASH_AT", None)
    if crash_at:
        env["NER_AUTORESEARCH_TEST_CRASH_AT"] = crash_at
    command = [sys.executable, str(PROJECT / "tests" / "loop_helpers.py"), str(repo), TAG, json.dumps(script),
               str(max_runs), json.dumps(overrides or {})]
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if wait_for is not None:
        deadline = time.monotonic() + 60
        while not wait_for() and time.monotonic() < deadline:
            time.sleep(0.05)
        process.kill()
    output = process.communicate(timeout=120)[0].decode()
    return process.returncode, output


def check_consistent(repo):
    """Every run logged once, numbered in order; the branch is the baseline plus the kept runs; clean tree."""
    rows = results(repo)
    assert [int(row["run"]) for row in rows] == list(range(len(rows)))
    kept = [int(row["run"]) for row in rows if row["status"] == "keep"]
    assert branch_runs(repo, TAG) == kept
    best = [row for row in rows if row["status"] in ("baseline", "keep")][-1]
    assert git(repo, "rev-parse", f"autoresearch/{TAG}") == best["commit"]
    assert git(repo, "status", "--porcelain") == ""
    return rows


def test_kill_between_row_and_keep_then_restart(repo):
    code, _ = drive(repo, [["QUALITY", 0.7], ["QUALITY", 0.8]], 5, crash_at="after_row@2")
    assert code == 137
    assert statuses(repo) == ["baseline", "keep", "keep"]
    assert branch_runs(repo, TAG) == [1]  # the kill came before run 2's git step

    code, output = drive(repo, [["QUALITY", 0.9]], 1)
    assert code == 0, output
    rows = check_consistent(repo)
    assert [row["status"] for row in rows] == ["baseline", "keep", "keep", "keep"]


def test_a_keep_cut_short_in_its_git_step_is_finished_and_the_user_is_told(repo):
    code, output = drive(repo, [["QUALITY", 0.7]], 2)
    assert code == 0 and statuses(repo) == ["baseline", "keep"], output
    kept = results(repo)[1]["commit"]
    git(repo, "reset", "-q", "--soft", results(repo)[0]["commit"])  # HEAD moved back, train.py still run 1's
    git(repo, "reset", "-q")
    assert git(repo, "status", "--porcelain").strip() == "M train.py"
    code, output = drive(repo, [], 1)
    assert code == 0, output
    assert "finished the interrupted git step of run 1 (train.py back to its commit)" in output
    assert git(repo, "rev-parse", f"autoresearch/{TAG}") == kept and git(repo, "status", "--porcelain") == ""


def test_a_run_queued_at_a_planned_stop_runs_next_session_and_is_not_called_interrupted(repo):
    # Lookahead 1: run 2 is proposed on the baseline while run 1 trains; run 1's keep makes it stale, it is
    # rebased as run 3, and --max-runs (3 rows) ends the session before run 3 starts. Each run sleeps a
    # second, so run 2 is always proposed while run 1 trains, however busy the machine is.
    (repo / "train.py").write_text(set_constant((repo / "train.py").read_text(), "SLEEP_S", 1.0))
    git(repo, "commit", "-qam", "runs take a second")
    code, output = drive(repo, [["QUALITY", 0.7], ["QUALITY", 0.8]], 3, overrides={"lookahead": 1})
    assert code == 0, output
    assert statuses(repo) == ["baseline", "keep", "invalid"] and "rebased onto run 1 as run 3" in output
    code, output = drive(repo, [], 1)
    assert code == 0, output
    assert "run 3 was queued when the last session stopped: running it now" in output
    assert "interrupted" not in output
    rows = check_consistent(repo)
    assert [row["status"] for row in rows] == ["baseline", "keep", "invalid", "keep"]
    assert "QUALITY = 0.8" in rows[3]["description"]


def test_run_interrupted_twice_is_logged_as_a_crash(repo):
    code, _ = drive(repo, [["QUALITY", 0.7], ["QUALITY", 0.9]], 5, crash_at="after_attempt@2")
    assert code == 137 and statuses(repo) == ["baseline", "keep"]
    code, _ = drive(repo, [], 5, crash_at="after_attempt@2")  # the restart runs run 2 again: killed again
    assert code == 137 and statuses(repo) == ["baseline", "keep"]
    code, output = drive(repo, [["QUALITY", 0.8]], 2)
    assert code == 0, output
    rows = check_consistent(repo)
    assert [row["status"] for row in rows] == ["baseline", "keep", "crash", "keep"]
    assert rows[2]["description"].startswith("interrupted twice") and "QUALITY = 0.9" in rows[2]["description"]
    assert "QUALITY = 0.9" in git(repo, "show", f"refs/autoresearch/{TAG}/run-2:train.py")


def test_kill_during_training_then_restart_reruns_the_run(repo):
    hang = f"hang_until:{time.time() + 20:.0f}"
    code, _ = drive(repo, [["QUALITY", 0.7], ["ACTION", hang]], 5,
                    wait_for=lambda: train_pid_file(repo, TAG, 2).exists())
    assert code == -9 and statuses(repo) == ["baseline", "keep"]
    orphan = int(train_pid_file(repo, TAG, 2).read_text())
    time.sleep(0.5)
    assert not alive(orphan)  # the sandbox died with the loop that started it
    code, output = drive(repo, [["QUALITY", 0.6]], 2)
    assert code == 0, output
    rows = check_consistent(repo)
    assert [row["status"] for row in rows] == ["baseline", "keep", "discard", "discard"]
    assert rows[2]["description"] == f"ACTION = {hang!r}"
    assert (repo / "runs" / TAG / "0002" / "attempts").read_text() == "2\n"


@pytest.mark.slow
def test_builtin_agent_with_the_real_train_py(tmp_path, prepared_task7):
    """Three runs through the CLI with the real train.py and the bundled small encoder."""
    repo = make_repo(tmp_path, data_without_test_rows(prepared_task7, tmp_path / "data"), train_py=None)
    protected = {name: sha256_of(repo / name) for name in ("prepare.py", "evaluate.py", "data/val.jsonl")}
    command = [sys.executable, "agent_loop.py", "run", "--agent", "builtin", "--max-runs", "3", "--tag", TAG,
               "--set", "MODEL_NAME=minilm", "--set", "EPOCHS=1", "--set", "LEARNING_RATE=1e-4", "--limit", "64",
               "--policy", "monotonic"]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--max-runs reached (3 runs)" in result.stdout
    rows = results(repo)
    assert len(rows) == 3 and rows[0]["status"] == "baseline" and float(rows[0]["strict_f1"]) >= 0
    assert all(row["status"] in ("keep", "discard", "crash") for row in rows[1:])
    assert {name: sha256_of(repo / name) for name in protected} == protected
    assert FAKE_TRAIN_PY not in (repo / "train.py").read_text()
    assert rows[0]["device"] == "cpu"


def test_ctrl_c_finishes_the_run_and_twice_kills_it(repo):
    def start():
        command = [sys.executable, str(PROJECT / "tests" / "loop_helpers.py"), str(repo), TAG,
                   json.dumps([["QUALITY", 0.7], ["SLEEP_S", 2.0], ["SLEEP_S", 3.0]]), "10"]
        return subprocess.Popen(command, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_for(path):
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    process = start()
    wait_for(train_pid_file(repo, TAG, 2))
    process.send_signal(signal.SIGINT)  # once: run 2 finishes and is logged, then the loop stops
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0 and "stopped by Ctrl-C" in output
    assert statuses(repo) == ["baseline", "keep", "discard"]

    process = start()  # the scripted agent starts over: QUALITY 0.7 is a duplicate, SLEEP_S 2.0 too
    wait_for(train_pid_file(repo, TAG, 3))
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # twice: run 3 is killed, nothing is logged for it
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0 and "aborted" in output, output
    assert statuses(repo) == ["baseline", "keep", "discard"]
    assert not train_pid_file(repo, TAG, 3).exists()
    assert git(repo, "status", "--porcelain") == ""


def test_a_model_missing_from_the_cache_is_one_crash_row_or_the_baselines_own_error(tmp_path, prepared_task7,
                                                                                     monkeypatch):
    """The hub is unreachable and the model is not cached: the user reads the cache's reason, once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    absent = 'MODEL_NAME = "nobody/no-such-model"  # not cached, and the hub is offline\n'
    (tmp_path / "baseline").mkdir()
    repo = make_repo(tmp_path / "baseline", prepared_task7, absent + FAKE_TRAIN_PY)
    summary = run_loop(config(repo, max_runs=2), ScriptedAgent([]))
    assert not summary.ok and "is not in the local Hugging Face cache" in summary.stop_reason, summary.stop_reason
    assert results(repo) == []

    (tmp_path / "later").mkdir()
    repo = make_repo(tmp_path / "later", prepared_task7, 'MODEL_NAME = "minilm"\n' + FAKE_TRAIN_PY)
    summary = run_loop(config(repo, max_runs=3, policy=Confirm(trials=3)),
                       ScriptedAgent([("MODEL_NAME", "nobody/no-such-model"), ("QUALITY", 0.7)]))
    rows = results(repo)
    assert [row["status"] for row in rows] == ["baseline", "crash", "keep"], summary.stop_reason
    assert "is not in the local Hugging Face cache" in rows[1]["note"]
