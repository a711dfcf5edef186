"""Helpers for the loop tests: a temporary project repository, a fast fake train.py, scripted agents.

Run as a script, it drives run_loop with a scripted agent in a separate process (so tests can kill it):
    python loop_helpers.py REPO TAG SCRIPT_JSON [MAX_RUNS]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("prepare.py", "evaluate.py", "train.py", "program.md", "agent_loop.py", "pyproject.toml",
                 ".gitignore", "research_loop", "data/README.md")

# A stand-in for train.py that runs in well under a second: it predicts the gold tags of the first QUALITY
# share of val rows (O elsewhere), so strict F1 rises with QUALITY. ACTION makes it misbehave on purpose.
# With PREDICT_TEST = True it also writes pred_test.csv (with prepare.py's writer, as train.py does) when
# DATA/test.jsonl exists: the first token of the first QUALITY share of test rows is tagged, the rest O.
FAKE_TRAIN_PY = '''"""Fake train.py for the loop tests."""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

QUALITY = 0.5  # share of val rows predicted with their gold tags
LEARNING_RATE = 3e-05  # only moves the fake score a little (for the builtin agent)
WEIGHT_DECAY = 0.01  # only moves the fake score a little
SCHEDULE = "cosine"  # only moves the fake score a little
ACTION = ""  # crash | oom | grandchild | hang_first_attempt | tamper | stop | nopred | badpred
SLEEP_S = 0.0  # seconds to sleep before predicting
PREDICT_TEST = False  # also write pred_test.csv when data/test.jsonl exists


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/manual"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=SLEEP_S)
    parser.add_argument("--data", type=Path, default=Path("data"))
    args, _ = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "env.json").write_text(json.dumps(dict(os.environ)))
    print("fake training with arguments:", *sys.argv[1:], flush=True)
    if ACTION == "crash":
        raise RuntimeError("boom: the fake train.py crashed")
    if ACTION == "oom":
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr)
        sys.exit(1)
    if ACTION == "grandchild":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        (args.out / "grandchild.pid").write_text(str(child.pid))
        time.sleep(600)
    if ACTION == "hang_first_attempt" and (args.out / "attempts").read_text().strip() == "1":
        time.sleep(600)
    if ACTION == "tamper":
        with open("evaluate.py", "a") as file:
            file.write("\\n# tampered\\n")
    if ACTION == "stop":
        Path("STOP").write_text("")
    time.sleep(args.sleep)
    if ACTION == "nopred":
        return
    rows = [json.loads(line) for line in open(args.data / "val.jsonl", encoding="utf-8")]
    config = repr((LEARNING_RATE, WEIGHT_DECAY, SCHEDULE)).encode()
    quality = QUALITY + (int(hashlib.md5(config).hexdigest(), 16) % 11 - 5) / 100
    keep = int(quality * len(rows))
    with open(args.out / "pred_val.jsonl", "w", encoding="utf-8") as file:
        for index, row in enumerate(rows):
            tags = row["tags"] if index < keep else ["O"] * len(row["tags"])
            if ACTION == "badpred":
                tags = tags[:-1]
            file.write(json.dumps({"id": row["id"], "tags": tags}) + "\\n")
    if PREDICT_TEST and (args.data / "test.jsonl").is_file():
        from prepare import load_labels, load_split, write_submission_csv

        tagged = load_split("test", args.data)
        for index, row in enumerate(tagged):
            row["tags"] = ["O"] * len(row["tokens"])
            if index < int(quality * len(tagged)) and row["tags"]:
                row["tags"][0] = load_labels(args.data)[1]
        write_submission_csv(args.out / "pred_test.csv", tagged)
    print("---")
    print("strict_f1: 0.999999")
    print("peak_vram_mb: 1024.0")


if __name__ == "__main__":
    main()
'''

# The fake made seed-dependent (for calibrate): --seed s moves QUALITY by (s % 5 - 2) / 50, so the loop's
# seeds 42, 43, 44 predict the gold tags of 0, 2 and 4 more percent of the val rows.
SEED_SHIFT_LINE = "    quality += (args.seed % 5 - 2) / 50  # seed noise\n"
KEEP_LINE = "    keep = int(quality * len(rows))\n"
assert FAKE_TRAIN_PY.count(KEEP_LINE) == 1
SEEDED_FAKE_TRAIN_PY = FAKE_TRAIN_PY.replace(KEEP_LINE, SEED_SHIFT_LINE + KEEP_LINE)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting to be reaped does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def make_repo(root: Path, data_dir: Path, train_py: str | None = FAKE_TRAIN_PY) -> Path:
    """A committed git repository with the project's files, prepared data, and (by default) the fake train.py."""
    repo = root / "repo"
    repo.mkdir()
    for name in PROJECT_FILES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    for path in data_dir.iterdir():
        shutil.copy2(path, repo / "data" / path.name)
    if train_py is not None:
        (repo / "train.py").write_text(train_py)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "Test")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "project")
    return repo


def data_without_test_rows(prepared: Path, target: Path) -> Path:
    """A copy of the prepared data minus test.jsonl: predicting its 578 long rows takes minutes on a CPU."""
    target.mkdir()
    for path in prepared.iterdir():
        if path.name != "test.jsonl":
            shutil.copy2(path, target / path.name)
    return target


def set_constant(train_py: str, name: str, value) -> str:
    sys.path.insert(0, str(PROJECT))
    from research_loop.builtin_agent import set_constant as rewrite

    return rewrite(train_py, name, value)


class ScriptedAgent:
    """Proposes the scripted changes in order: each a (NAME, value) to set, or a whole train.py text."""

    name = "scripted"

    def __init__(self, script: list):
        self.script = list(script)
        self.contexts = []

    def propose(self, context):
        from research_loop.agents import AgentError, Proposal

        self.contexts.append(context)
        if not self.script:
            raise AgentError("the script is over")
        step = self.script.pop(0)
        if isinstance(step, str):
            return Proposal(train_py=step, hypothesis="a whole new train.py", direction="rewrite")
        name, value = step
        return Proposal(train_py=set_constant(context.train_py, name, value),
                        hypothesis=f"{name} = {value!r}", direction=name.lower())


def results(repo: Path) -> list[dict]:
    from research_loop.ledger import read_rows

    return read_rows(repo / "results.tsv")


def branch_runs(repo: Path, tag: str) -> list[int]:
    """The loop's run numbers of the commits on the tag's branch (the baseline commit has none)."""
    log = git(repo, "log", "--format=%(trailers:key=Autoresearch-Run,valueonly)", f"autoresearch/{tag}")
    return sorted(int(line) for line in log.split() if line.strip())


def drive(repo: Path, tag: str, script: list, max_runs: int) -> None:
    """Run the loop with a ScriptedAgent in this process (the script entry point)."""
    sys.path.insert(0, str(PROJECT))
    from research_loop.loop import LoopConfig, run_loop

    config = LoopConfig(repo=repo, tag=tag, max_runs=max_runs, timeout_s=60, kill_grace_s=1, progress=False)
    summary = run_loop(config, ScriptedAgent(script))
    print(json.dumps({"stop_reason": summary.stop_reason, "runs": summary.runs}))


if __name__ == "__main__":
    drive(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]))
