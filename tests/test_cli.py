"""The README's commands as a newcomer types them: the offline demo (cut short), help, status while a night
trains, report, and the same command the next day."""

import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from loop_helpers import PROJECT, data_without_test_rows, make_repo, results

FIXTURE = Path(__file__).parent / "fixtures" / "results_sample.tsv"


def readme_command(prefix: str) -> list[str]:
    """The first README line that starts with `prefix`, split like a shell would (comments dropped)."""
    import shlex

    for line in (PROJECT / "README.md").read_text().splitlines():
        if line.startswith(prefix):
            return shlex.split(line, comments=True)
    raise AssertionError(f"README.md has no line starting with {prefix!r}")


def agent_loop(repo: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "agent_loop.py", *args], cwd=repo, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_the_readme_demo_runs_end_to_end_when_cut_short(tmp_path, prepared_task7):
    demo = readme_command("python agent_loop.py --agent builtin")
    assert demo[:2] == ["python", "agent_loop.py"] and "MODEL_NAME=minilm" in demo
    repo = make_repo(tmp_path, data_without_test_rows(prepared_task7, tmp_path / "data"), train_py=None)
    # Later options win: fewer runs, two seeds, and a tiny training set keep this under two minutes.
    short = [*demo[2:], "--max-runs", "2", "--seeds", "2", "--tag", "demo", "--set", "EPOCHS=1", "--limit", "24"]
    run = agent_loop(repo, *short)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "--max-runs reached (2 runs)" in run.stdout and "starting night demo" in run.stdout
    rows = results(repo)
    assert [row["status"] for row in rows][:1] == ["baseline"] and len(rows) == 2
    assert rows[0]["seeds"] == "42,43" and rows[0]["strict_f1_sd"] != "" and rows[0]["device"] == "cpu"
    assert rows[1]["status"] in ("keep", "discard", "crash", "invalid")
    state = (repo / "CURRENT_STATE.md").read_text()
    assert "## Best run" in state and 'MODEL_NAME = "minilm"' in state and "EPOCHS = 1" in state

    report = agent_loop(repo, "report", "--format", "md")
    assert report.returncode == 0, report.stderr
    assert re.search(r"\b2\b", report.stdout) and "cpu" in report.stdout
    assert (repo / "progress.png").read_bytes()[:4] == b"\x89PNG"
    status = agent_loop(repo, "status", "--tag", "demo")
    assert "no loop is running" in status.stdout and "2 runs" in status.stdout


def test_help_works_both_ways_and_shows_the_default_commands_options(tmp_path):
    for flag in ("-h", "--help"):
        shown = agent_loop(PROJECT, flag)
        assert shown.returncode == 0, shown.stderr
        assert "Commands: run (the default)" in shown.stdout and "--max-runs" in shown.stdout
        assert "--agent" in shown.stdout and "report" in shown.stdout
    report_help = agent_loop(PROJECT, "report", "-h")
    assert report_help.returncode == 0 and "--format" in report_help.stdout


def test_status_says_which_run_and_seed_train_and_for_how_long(tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7)
    loop = subprocess.Popen([sys.executable, "agent_loop.py", "--agent", "builtin", "--tag", "t", "--max-runs", "2",
                             "--set", "SLEEP_S=6.0", "--policy", "monotonic"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (repo / "runs" / "t" / "live.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)
        status = agent_loop(repo, "status")
        assert re.search(r"a loop is running \(pid \d+, night t\)", status.stdout), status.stdout
        assert re.search(r"training: run 0 seed 42 on local-0, for \d+ min \d\d s", status.stdout), status.stdout
    finally:
        loop.wait(timeout=120)


def test_report_reads_a_recorded_night(tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7)
    shutil.copy2(FIXTURE, repo / "results.tsv")
    run = agent_loop(repo, "report", "--format", "md", "--plot", str(tmp_path / "night.png"))
    assert run.returncode == 0, run.stderr
    best = max((row for row in results(repo) if row["status"] == "keep"), key=lambda row: int(row["run"]))
    assert f"{float(best['strict_f1']):.4f}" in run.stdout
    assert "## Directions" in run.stdout and "| learning rate |" in run.stdout
    assert (tmp_path / "night.png").read_bytes()[:4] == b"\x89PNG"


def test_report_with_no_runs_says_so_in_one_line(tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7)
    run = agent_loop(repo, "report")
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "no" in run.stderr


def test_a_night_spans_midnight_and_only_a_finished_one_starts_another(tmp_path, prepared_task7, monkeypatch):
    """The same plain command after midnight resumes the night; once a night ended as planned (a budget), the
    next plain command starts a new one; Ctrl-C (an unfinished night) is resumed whatever the date."""
    from research_loop.cli.commands import RunOptions, run_night
    from research_loop.night import folders as workspace
    from research_loop.night.stopping import PRESSED_EARLY

    repo = make_repo(tmp_path, prepared_task7)
    today = {"value": datetime(2026, 11, 25, 23, 59)}

    class Clock(datetime):
        @classmethod
        def now(cls, tz=None):
            return today["value"]

    monkeypatch.setattr(workspace, "datetime", Clock)
    lines = []
    echo = lambda line="", err=False: lines.append(line)
    options = lambda **more: RunOptions(agent="builtin", policy="monotonic", **more)

    PRESSED_EARLY.set()  # Ctrl-C right at the start: the night is unfinished
    try:
        assert run_night(repo, options(max_runs=3), echo) == 0
    finally:
        PRESSED_EARLY.clear()
    assert lines[0] == "starting night nov25" and any("to resume this night" in line for line in lines)
    today["value"] = datetime(2026, 11, 26, 0, 30)  # after midnight: the same command
    lines.clear()
    assert run_night(repo, options(max_runs=2), echo) == 0
    assert lines[0].startswith("resuming night nov25") and "--max-runs reached" in " ".join(lines)
    lines.clear()
    assert run_night(repo, options(max_runs=1), echo) == 0  # that night ended as planned: a new one
    assert lines[0] == "starting night nov26"
    lines.clear()
    assert run_night(repo, options(max_runs=1, new=True), echo) == 0
    assert lines[0] == "starting night nov26-2"


def test_the_readme_commands_take_a_fresh_clone_to_a_night(tmp_path, task7_dir):
    """The README's two commands in a git clone of the project: the install line is what CI runs; the night
    line, with --source (no internet here), the small model and a fake Anthropic API, prepares data/ and runs
    the baseline; the report reads it."""
    from fake_anthropic import FakeAnthropic

    lines = (PROJECT / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    install, night = (line.split("#")[0].split() for line in lines[:2])
    assert install == ["pip", "install", "-e", '".[dev]"'] and night == ["python", "agent_loop.py"]
    assert 'pip install -q torch==2.13.0 -e ".[dev]"' in (PROJECT / ".ci" / "run").read_text()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(PROJECT), str(clone)], check=True)
    for name in ("user.email", "user.name"):
        subprocess.run(["git", "config", name, "test"], cwd=clone, check=True)
    assert not (clone / "data" / "manifest.json").exists()
    with FakeAnthropic([]) as fake:
        env = {**__import__("os").environ, "ANTHROPIC_BASE_URL": fake.url, "ANTHROPIC_API_KEY": "sk-test",
               "NER_AUTORESEARCH_CACHE": str(tmp_path / "cache")}
        done = subprocess.run([sys.executable, *night[1:], "--source", str(task7_dir), "--max-runs", "1",
                               "--seeds", "2", "--limit", "24", "--set", "MODEL_NAME=minilm", "--set", "EPOCHS=1",
                               "--tag", "fresh"], cwd=clone, capture_output=True, text=True, timeout=900, env=env,
                              check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "data/ is not prepared: running prepare.py --source" in done.stdout
    assert "--max-runs reached" in done.stdout and "git checkout main" in done.stdout
    assert [row["status"] for row in results(clone)] == ["baseline"]
    report = agent_loop(clone, "report", "--format", "md")
    assert report.returncode == 0 and "fresh" in report.stdout, report.stdout + report.stderr
