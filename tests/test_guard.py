"""Protected files and the train.py runner: tampering found and undone; processes killed; secrets dropped."""

import os
import sys
import time

from loop_helpers import alive

from research_loop.guard import Guard, sha256_of
from research_loop.runner import parse_printed, run_training, training_env


def make_project(root):
    (root / "data").mkdir()
    (root / "data" / "val.jsonl").write_text('{"id": "a"}\n')
    (root / "evaluate.py").write_text("SCORE = 1\n")
    (root / "program.md").write_text("rules\n")
    (root / "research_loop" / "__pycache__").mkdir(parents=True)
    (root / "research_loop" / "loop.py").write_text("pass\n")
    return Guard(root, root / "runs" / "t" / ".protected")


def test_tampering_is_found_saved_and_undone(tmp_path):
    guard = make_project(tmp_path)
    assert guard.violations() == []
    (tmp_path / "research_loop" / "__pycache__" / "loop.cpython-311.pyc").write_bytes(b"\0")  # not tampering
    (tmp_path / "train.py").write_text("anything\n")  # not protected
    assert guard.violations() == []

    (tmp_path / "evaluate.py").write_text("SCORE = 100\n")
    (tmp_path / "data" / "val.jsonl").unlink()
    (tmp_path / "data" / "extra.jsonl").write_text("{}\n")
    found = {str(violation) for violation in guard.violations()}
    assert found == {"evaluate.py (modified)", "data/val.jsonl (deleted)", "data/extra.jsonl (added)"}

    guard.restore(guard.violations(), tmp_path / "saved")
    assert guard.violations() == []
    assert (tmp_path / "evaluate.py").read_text() == "SCORE = 1\n"
    assert (tmp_path / "data" / "val.jsonl").read_text() == '{"id": "a"}\n'
    assert not (tmp_path / "data" / "extra.jsonl").exists()
    assert (tmp_path / "saved" / "evaluate.py").read_text() == "SCORE = 100\n"  # nothing anyone wrote is lost
    assert (tmp_path / "saved" / "data" / "extra.jsonl").exists()


def test_program_md_edits_are_accepted_between_runs(tmp_path):
    guard = make_project(tmp_path)
    (tmp_path / "program.md").write_text("rules, edited by the human\n")
    guard.accept("program.md")
    assert guard.violations() == []
    (tmp_path / "program.md").write_text("edited during a run\n")
    guard.restore(guard.violations(), tmp_path / "saved")
    assert (tmp_path / "program.md").read_text() == "rules, edited by the human\n"
    assert sha256_of(tmp_path / "saved" / "program.md") != sha256_of(tmp_path / "program.md")


def test_environment_has_no_secrets(tmp_path):
    base = {"PATH": "/bin", "ANTHROPIC_API_KEY": "k", "ANTHROPIC_BASE_URL": "u", "OPENAI_ORG": "o",
            "HF_TOKEN": "t", "HUGGING_FACE_HUB_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s", "GH_TOKEN": "t",
            "X_SECRET": "s", "DB_PASSWORD": "p", "KEYBOARD": "fine", "NER_AUTORESEARCH_CACHE": "/real"}
    env = training_env(base, tmp_path / "empty", offline=True)
    assert set(env) == {"PATH", "KEYBOARD", "NER_AUTORESEARCH_CACHE", "PYTHONUNBUFFERED", "HF_HUB_OFFLINE",
                        "TRANSFORMERS_OFFLINE"}
    assert env["NER_AUTORESEARCH_CACHE"] == str(tmp_path / "empty")
    assert "HF_HUB_OFFLINE" not in training_env(base, tmp_path, offline=False)


def test_printed_block_is_read_after_the_last_separator():
    log = "epoch 1\n---\nstrict_f1: 0.1\n---\nstrict_f1: 0.5\npeak_vram_mb: 12.0\nnot a key line\n"
    assert parse_printed(log) == {"strict_f1": "0.5", "peak_vram_mb": "12.0"}


def test_timeout_kills_child_and_grandchild(tmp_path):
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(600)\n")
    start = time.monotonic()
    outcome = run_training([sys.executable, "-c", script], tmp_path, tmp_path / "run.log", dict(os.environ),
                           timeout_s=1.0, grace_s=1.0)
    assert outcome.kind == "timeout" and time.monotonic() - start < 10
    grandchild = int((tmp_path / "run.log").read_text().split()[0])
    assert not alive(grandchild)
    assert not (tmp_path / "train.pid").exists()


def test_exit_codes_and_oom_are_classified(tmp_path):
    ok = run_training([sys.executable, "-c", "print('---'); print('strict_f1: 0.3')"], tmp_path,
                      tmp_path / "a.log", dict(os.environ), timeout_s=30)
    assert ok.kind == "ok" and ok.printed == {"strict_f1": "0.3"}
    crash = run_training([sys.executable, "-c", "raise SystemExit('bad config')"], tmp_path,
                         tmp_path / "b.log", dict(os.environ), timeout_s=30)
    assert crash.kind == "crash" and crash.error_line() == "exit code 1: bad config"
    oom = run_training([sys.executable, "-c", "raise MemoryError('CUDA out of memory. Tried')"], tmp_path,
                       tmp_path / "c.log", dict(os.environ), timeout_s=30)
    assert oom.kind == "oom" and "CUDA out of memory" in oom.error_line()
