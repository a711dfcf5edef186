"""The README's commands as a newcomer types them: the offline demo (cut short), report, status."""

import re
import shutil
import subprocess
import sys
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
    assert demo[:2] == ["python", "agent_loop.py"] and "--model minilm" in demo[demo.index("--train-args") + 1]
    repo = make_repo(tmp_path, data_without_test_rows(prepared_task7, tmp_path / "data"), train_py=None)
    readme_train_args = demo[demo.index("--train-args") + 1]
    # Later options win: fewer runs, two seeds, and a tiny training set keep this under two minutes.
    short = [*demo[2:], "--max-runs", "2", "--seeds", "2", "--tag", "demo",
             "--train-args", f"{readme_train_args} --epochs 1 --limit 24"]
    run = agent_loop(repo, *short)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "--max-runs reached (2 runs)" in run.stdout
    rows = results(repo)
    assert [row["status"] for row in rows][:1] == ["baseline"] and len(rows) == 2
    assert rows[0]["seeds"] == "42,43" and rows[0]["strict_f1_sd"] != ""
    assert rows[1]["status"] in ("keep", "discard", "crash", "invalid")
    state = (repo / "CURRENT_STATE.md").read_text()
    assert "## Best run" in state and "LEARNING_RATE" in state

    report = agent_loop(repo, "report", "--format", "md")
    assert report.returncode == 0, report.stderr
    assert re.search(r"\b2 runs\b", report.stdout) and (repo / "progress.png").read_bytes()[:4] == b"\x89PNG"
    status = agent_loop(repo, "status", "--tag", "demo")
    assert "no loop is running" in status.stdout and "2 runs" in status.stdout


def test_report_reads_a_recorded_night(tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7)
    shutil.copy2(FIXTURE, repo / "results.tsv")
    run = agent_loop(repo, "report", "--format", "md", "--plot", str(tmp_path / "night.png"))
    assert run.returncode == 0, run.stderr
    best = max((row for row in results(repo) if row["status"] == "keep"), key=lambda row: int(row["run"]))
    assert f"{float(best['strict_f1']):.4f}" in run.stdout
    assert "| direction |" in run.stdout.lower() or "direction" in run.stdout.lower()
    assert (tmp_path / "night.png").read_bytes()[:4] == b"\x89PNG"


def test_report_with_no_runs_says_so_in_one_line(tmp_path, prepared_task7):
    repo = make_repo(tmp_path, prepared_task7)
    run = agent_loop(repo, "report")
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "no runs yet" in run.stderr
