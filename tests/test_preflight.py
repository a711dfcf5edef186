"""Before a night creates anything: another loop, bad --set values, an agent that does not answer and missing
data are each one line and exit 1, with no branch, commit or runs/ folder left behind; a new night never
starts from another night's tip; missing data is prepared by the night's own command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from fake_anthropic import FakeAnthropic
from fake_anthropic import error as anthropic_error
from fake_openai import FakeOpenAI
from loop_helpers import git, make_repo

from research_loop.night.lock import LoopLock

KEYS = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "CLAUDE_CODE_OAUTH_TOKEN",
        "CLAUDE_CONFIG_DIR")


def agent_loop(repo, *args, env=None):
    base = {name: value for name, value in os.environ.items() if name not in KEYS}
    return subprocess.run([sys.executable, "agent_loop.py", *args], cwd=repo, capture_output=True, text=True,
                          timeout=600, check=False, env={**base, **(env or {})})


def footprint(repo):
    """What a refused command must not change: branches, commits, runs/."""
    return (git(repo, "branch", "--list").split(), git(repo, "rev-list", "--all", "--count").strip(),
            (repo / "runs").exists())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def fake_repo(tmp_path, prepared_task7):
    return make_repo(tmp_path, prepared_task7)


@pytest.fixture
def real_repo(tmp_path, prepared_task7):
    return make_repo(tmp_path, prepared_task7, train_py=None)


def assert_refused(repo, before, done, *expected):
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr and "starting night" not in done.stdout
    for text in expected:
        assert text in lines[0], lines[0]
    assert footprint(repo) == before


@pytest.mark.parametrize("kind", ["builtin", "anthropic", "openai", "claude-code"])
def test_every_bad_set_value_is_named_at_once_before_anything_is_created(real_repo, kind):
    before = footprint(real_repo)
    with FakeAnthropic([]) as anthropic_fake, FakeOpenAI([], models=("local-model",)) as openai_fake:
        env, args = {}, []
        if kind == "anthropic":
            env = {"ANTHROPIC_BASE_URL": anthropic_fake.url, "ANTHROPIC_API_KEY": "sk-test"}
        elif kind == "openai":
            args = ["--llm", "local-model", "--base-url", openai_fake.url]
        elif kind == "claude-code":
            env = {"ANTHROPIC_API_KEY": "sk-test"}
        done = agent_loop(real_repo, "--agent", kind, *args, "--set", "LEARNING_RATE=abc", "--set", "BATCH_SIZE=0",
                          "--set", "EPOCHS=2.5", "--set", "WARMUP_RATIO=-1", env=env)
        assert anthropic_fake.requests == [] and openai_fake.requests == []  # the agent was never asked
    assert_refused(real_repo, before, done, "LEARNING_RATE must be a number above 0, not 'abc'",
                   "BATCH_SIZE must be a whole number of at least 1, not 0", "EPOCHS must be a whole number",
                   "WARMUP_RATIO must be a number in [0, 1), not -1")


def test_unknown_knobs_are_all_named_and_leave_no_branch(fake_repo):
    before = footprint(fake_repo)
    done = agent_loop(fake_repo, "--agent", "builtin", "--set", "NOPE=1", "--set", "ALSO_NOPE=2")
    assert_refused(fake_repo, before, done, "NOPE", "ALSO_NOPE", "has no")


def test_an_unreachable_openai_server_is_refused_before_the_baseline(fake_repo):
    before = footprint(fake_repo)
    done = agent_loop(fake_repo, "--agent", "openai", "--llm", "local-model", "--base-url",
                      f"http://127.0.0.1:{closed_port()}/v1")
    assert_refused(fake_repo, before, done, "cannot reach the server at http://127.0.0.1:")


def test_a_model_the_server_does_not_serve_is_refused(fake_repo):
    before = footprint(fake_repo)
    with FakeOpenAI([], models=("qwen3-coder:30b", "llama-4")) as fake:
        done = agent_loop(fake_repo, "--agent", "openai", "--llm", "local-model", "--base-url", fake.url)
        assert fake.requests == []
    assert_refused(fake_repo, before, done, "--llm local-model", "does not serve it (it serves qwen3-coder:30b, llama-4)")


def test_a_refused_anthropic_key_is_refused_before_the_baseline(fake_repo):
    before = footprint(fake_repo)
    with FakeAnthropic([]) as fake:
        fake.models_reply = anthropic_error(401, "authentication_error", "invalid x-api-key")
        done = agent_loop(fake_repo, "--agent", "anthropic",
                          env={"ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "sk-wrong"})
        assert fake.requests == []
    assert_refused(fake_repo, before, done, "401", "invalid x-api-key")


def test_claude_code_without_a_login_is_refused(fake_repo, tmp_path):
    pytest.importorskip("claude_agent_sdk")
    before = footprint(fake_repo)
    home = tmp_path / "home"
    home.mkdir()
    done = agent_loop(fake_repo, "--agent", "claude-code", env={"HOME": str(home)})
    assert_refused(fake_repo, before, done, "no Claude Code login", "--agent anthropic")


def test_a_second_loop_is_refused_before_any_other_line(fake_repo):
    holder = LoopLock(fake_repo, "other", "export")
    holder.acquire()
    try:
        before = footprint(fake_repo)
        done = agent_loop(fake_repo, "--agent", "builtin", "--tag", "second")
        status = agent_loop(fake_repo, "status")
    finally:
        holder.release()
    assert done.stdout == ""
    assert_refused(fake_repo, before, done, "`agent_loop.py export` is running on this repository",
                   f"pid {os.getpid()}", "night other")
    assert status.stdout.splitlines()[0].startswith("export is retraining a run (no loop)")


def night_json(repo, tag):
    return json.loads((repo / "runs" / tag / "night.json").read_text())


def test_a_night_started_from_a_night_branch_starts_from_that_nights_base(fake_repo):
    main = git(fake_repo, "rev-parse", "main").strip()
    first = agent_loop(fake_repo, "--agent", "builtin", "--tag", "a", "--set", "QUALITY=0.6", "--max-runs", "1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "on branch autoresearch/a; `git checkout main` goes back" in first.stdout
    assert git(fake_repo, "branch", "--show-current").strip() == "autoresearch/a"
    assert night_json(fake_repo, "a")["base"] == main
    second = agent_loop(fake_repo, "--agent", "builtin", "--tag", "b", "--new", "--set", "QUALITY=0.7",
                        "--max-runs", "1")
    assert second.returncode == 0, second.stdout + second.stderr
    baseline_b = night_json(fake_repo, "b")["baseline_commit"]
    assert git(fake_repo, "rev-parse", f"{baseline_b}^").strip() == main  # not night a's --set commit
    assert night_json(fake_repo, "b")["base"] == main
    assert "QUALITY = 0.6" not in git(fake_repo, "show", f"{baseline_b}:train.py")
    assert "`git checkout main` goes back" in second.stdout  # where the user started, not night a's branch

    git(fake_repo, "checkout", "-q", "main")
    git(fake_repo, "commit", "-q", "--allow-empty", "-m", "later work on main")
    third = agent_loop(fake_repo, "--agent", "builtin", "--tag", "c", "--new", "--from", "autoresearch/a",
                       "--max-runs", "1")
    assert third.returncode == 0, third.stdout + third.stderr
    assert night_json(fake_repo, "c")["base"] == git(fake_repo, "rev-parse", "autoresearch/a").strip()
    bad = agent_loop(fake_repo, "--agent", "builtin", "--tag", "d", "--new", "--from", "no-such-branch")
    assert bad.returncode == 1 and "--from no-such-branch: not a commit" in bad.stderr


def test_the_night_prepares_missing_data_itself(fake_repo, task7_dir):
    shutil.rmtree(fake_repo / "data")
    git(fake_repo, "checkout", "-q", "--", "data")  # data/README.md is tracked; the prepared files are not
    assert not (fake_repo / "data" / "manifest.json").exists()
    done = agent_loop(fake_repo, "--agent", "builtin", "--tag", "p", "--source", str(task7_dir), "--max-runs", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"data/ is not prepared: running prepare.py --source {task7_dir}" in done.stdout
    assert (fake_repo / "data" / "manifest.json").is_file()
    assert "--max-runs reached" in done.stdout


def test_a_failed_download_is_prepare_pys_one_line_naming_source(fake_repo):
    shutil.rmtree(fake_repo / "data")
    git(fake_repo, "checkout", "-q", "--", "data")
    before = footprint(fake_repo)
    done = agent_loop(fake_repo, "--agent", "builtin", env={"HTTPS_PROXY": f"http://127.0.0.1:{closed_port()}",
                                                            "HTTP_PROXY": f"http://127.0.0.1:{closed_port()}"})
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: prepare.py: ") and "--source" in lines[0], done.stderr
    assert footprint(fake_repo) == before


def test_a_night_whose_baseline_fails_leaves_no_branch_and_no_commit(fake_repo):
    branches, _, _ = footprint(fake_repo)
    done = agent_loop(fake_repo, "--agent", "builtin", "--tag", "x", "--set", "ACTION=crash")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "the baseline run failed" in done.stdout and "no branch or commit was left behind" in done.stdout
    assert footprint(fake_repo)[0] == branches and git(fake_repo, "branch", "--show-current").strip() == "main"
    assert git(fake_repo, "for-each-ref", "refs/autoresearch/").strip() == ""
    assert git(fake_repo, "status", "--porcelain") == ""
    failed = list((fake_repo / "runs").glob("x.failed-*"))
    assert len(failed) == 1 and "boom: the fake train.py crashed" in (failed[0] / "0000" / "run.log").read_text()
    assert "\tcrash\t" in (failed[0] / "results.tsv").read_text() and not (fake_repo / "results.tsv").exists()
    again = agent_loop(fake_repo, "--agent", "builtin", "--tag", "x", "--max-runs", "1")  # the same tag, afresh
    assert again.returncode == 0, again.stdout + again.stderr
    assert "starting night x" in again.stdout


def test_a_search_agents_space_goes_through_train_pys_own_check_in_the_sandbox(real_repo):
    """train.py's check is the one judge of a valid config: a train.py that refuses long training gets a
    builtin search that never proposes it, and the pairs it refuses (B- weights under IO) come back too.
    A train.py that answers the check with nonsense is refused in one line."""
    from types import SimpleNamespace

    from research_loop.cli.commands import RunOptions, make_agent, refused_changes
    from research_loop.execution import sandbox
    from research_loop.night.preflight import PreflightError

    text = (real_repo / "train.py").read_text()
    strict = text.replace("    if problems:\n        raise ConfigError(",
                          '    if EPOCHS > 10:\n        problems.append(f"EPOCHS: at most 10 here, not {EPOCHS}")\n'
                          "    if problems:\n        raise ConfigError(", 1)
    assert strict != text
    (real_repo / "train.py").write_text(strict)
    git(real_repo, "commit", "-qam", "train.py refuses long training")
    backend, _ = sandbox.choose("auto", allow_none=False)
    config, options = SimpleNamespace(base=None, tag="t", settings=[]), RunOptions(agent="builtin")
    refused = refused_changes(real_repo, options, config, {}, backend)
    changes = [entry["change"] for entry in refused]
    assert {"EPOCHS": 15} in changes and {"EPOCHS": 20} in changes
    assert all("EPOCHS: at most 10" in entry["why"] for entry in refused if "EPOCHS" in entry["change"])
    assert any(change.get("LABEL_SCHEME") == "IO" and "CLASS_WEIGHTS" in change for change in changes)
    agent = make_agent(real_repo, options, "t", refused)
    assert max(agent.options["EPOCHS"]) == 10 and "CLASS_WEIGHTS" in agent.options

    nonsense = ('def main(argv=None):\n    import pathlib\n\n    pathlib.Path("out").mkdir(exist_ok=True)\n'
                '    pathlib.Path("out/refused.json").write_text(\'{"no": 1}\')\n    return 0\n\n\n')
    main_block = 'if __name__ == "__main__":'
    (real_repo / "train.py").write_text(strict.replace(main_block, nonsense + main_block))
    git(real_repo, "commit", "-qam", "a train.py that answers the check with nonsense")
    with pytest.raises(PreflightError, match="refused.json is not a list of changes"):
        refused_changes(real_repo, options, config, {}, backend)
