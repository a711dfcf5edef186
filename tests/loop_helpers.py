"""Helpers for the loop tests: a temporary project repository, a fast fake train.py, scripted agents.

Run as a script, it drives run_loop with a scripted agent in a separate process (so tests can kill it):
    python loop_helpers.py REPO TAG SCRIPT_JSON [MAX_RUNS]
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
from research_loop.preparation import build
from research_loop.records.integrity import FIXED_FILES

PROJECT_FILES = (
    *FIXED_FILES,
    "train.py",
    "program.md",
    "agent_loop.py",
    "pyproject.toml",
    ".gitignore",
    "research_loop",
    "data/README.md",
)

# A stand-in for train.py that runs in well under a second. It never sees val tags (the sandbox's data view
# has none): it tags the first QUALITY share of val rows with a lexicon learned from train (words seen mostly
# inside spans, with their type), and O elsewhere, so strict F1 rises with QUALITY. ACTION makes it misbehave
# on purpose. With PREDICT_TEST = True it also writes pred_test.csv (with prepare.py's writer, as train.py
# does) when DATA/test.jsonl exists: the first token of the first QUALITY share of test rows is tagged.


def lexicon_tags(train_rows: list, tokens: list, _built: dict = {}) -> list:  # noqa: B006 (a cache)
    """Words that were inside a span at least half of the times they occur in train, tagged with their most
    frequent type (B- at a span's start, I- after a word of the same type); O elsewhere."""
    if id(train_rows) not in _built:
        inside, total = {}, {}
        for row in train_rows:
            for token, tag in zip(row["tokens"], row["tags"]):
                word = token.lower()
                total[word] = total.get(word, 0) + 1
                if tag != "O":
                    inside.setdefault(word, {})
                    inside[word][tag[2:]] = inside[word].get(tag[2:], 0) + 1
        _built.clear()
        _built[id(train_rows)] = (inside, total, train_rows)
    inside, total, _ = _built[id(train_rows)]
    tags, previous = [], "O"
    for token in tokens:
        types = inside.get(token.lower(), {})
        kind = (
            max(sorted(types), key=types.get)
            if types and 2 * sum(types.values()) >= total[token.lower()]
            else None
        )
        tag = "O" if kind is None else ("I-" if previous[2:] == kind else "B-") + kind
        tags.append(tag)
        previous = tag
    return tags


FAKE_TRAIN_PY = '''"""Fake train.py for the loop tests."""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

QUALITY = 0.5  # share of val rows tagged with the train lexicon
LEARNING_RATE = 3e-05  # only moves the fake score a little (for the builtin agent)
WEIGHT_DECAY = 0.01  # only moves the fake score a little
SCHEDULE = "cosine"  # only moves the fake score a little
ACTION = ""  # crash | oom | grandchild | hang_until:<unix time> | tamper | nopred | badpred
SLEEP_S = 0.0  # seconds to sleep before predicting
PREDICT_TEST = False  # also write pred_test.csv when data/test.jsonl exists
TAMPER_TARGET = "evaluate.py"  # what ACTION tamper appends to (the repository's file, given as a full path)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("runs/manual"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=SLEEP_S)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--check-space", type=json.loads)
    args, _ = parser.parse_known_args()
    if args.check:  # train.py's config check, as the loop runs it before a night with --set
        bad = [name for name in ("QUALITY", "LEARNING_RATE", "WEIGHT_DECAY")
               if not isinstance(globals()[name], (int, float)) or globals()[name] < 0]
        if bad:
            print("error: " + "; ".join(f"{name} must be a number of at least 0" for name in bad), file=sys.stderr)
            sys.exit(2)
        if args.check_space is not None:  # a search agent's space: the fake refuses nothing the space holds
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "refused.json").write_text("[]")
        print("config: ok")
        return
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
    if ACTION.startswith("hang_until:"):
        time.sleep(max(0.0, float(ACTION.split(":")[1]) - time.time()))
    if ACTION == "tamper":
        with open(TAMPER_TARGET, "a") as file:
            file.write("\\n# tampered\\n")
    slept_from = time.time()
    time.sleep(args.sleep)
    print(f"slept from {slept_from:.3f} to {time.time():.3f}", flush=True)
    if ACTION == "nopred":
        return
    rows = [json.loads(line) for line in open(args.data / "val.jsonl", encoding="utf-8")]
    train_rows = [json.loads(line) for line in open(args.data / "train.jsonl", encoding="utf-8")]
    config = repr((LEARNING_RATE, WEIGHT_DECAY, SCHEDULE)).encode()
    quality = QUALITY + (int(hashlib.md5(config).hexdigest(), 16) % 11 - 5) / 100
    keep = int(quality * len(rows))
    with open(args.out / "pred_val.jsonl", "w", encoding="utf-8") as file:
        for index, row in enumerate(rows):
            tags = lexicon_tags(train_rows, row["tokens"]) if index < keep else ["O"] * len(row["tokens"])
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
    with open(args.out / "view.json", "w") as file:  # what train.py saw of val (tags must never be there)
        json.dump({"val_rows": len(rows), "val_has_tags": any("tags" in row for row in rows)}, file)
    print("---")
    print("strict_f1: 0.999999")
    print("peak_vram_mb: 1024.0")
    print("device: cpu")
    print("epochs: 1.00")


LEXICON


if __name__ == "__main__":
    main()
'''.replace("LEXICON", inspect.getsource(lexicon_tags).rstrip())

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
    """A committed git repository with the project's files, prepared data (stamped as prepare.py would), and
    (by default) the fake train.py."""

    repo = root / "repo"
    repo.mkdir()
    for name in PROJECT_FILES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    shutil.copytree(data_dir, repo / "data", dirs_exist_ok=True)
    build.write_prepared_stamp(repo / "data", repo / "data" / "manifest.json")
    if train_py is not None:
        (repo / "train.py").write_text(train_py)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "Test")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "project")
    return repo


def data_without_test_rows(prepared: Path, target: Path) -> Path:
    """A copy of the prepared data minus test.jsonl (its manifest entry too): predicting its 578 long rows
    takes minutes on a CPU."""
    import json

    shutil.copytree(prepared, target)
    (target / "test.jsonl").unlink(missing_ok=True)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["files"].pop("test.jsonl", None)
    manifest.get("splits", {}).pop("test", None)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def set_constant(train_py: str, name: str, value) -> str:
    sys.path.insert(0, str(PROJECT))
    from research_loop.config_block import set_constant as rewrite

    return rewrite(train_py, name, value)


class ScriptedAgent:
    """Proposes the scripted changes in order: each a (NAME, value) to set, or a whole train.py text."""

    name = "scripted"

    def __init__(self, script: list):
        self.script = list(script)
        self.contexts = []

    def propose(self, context):
        from research_loop.agents import AgentError, Proposal

        time.sleep(float(os.environ.get("NER_AUTORESEARCH_TEST_AGENT_DELAY", "0")))  # a slow LLM
        self.contexts.append(context)
        if not self.script:
            raise AgentError("the script is over")
        step = self.script.pop(0)
        if isinstance(step, str):
            return Proposal(train_py=step, hypothesis="a whole new train.py", direction="rewrite")
        name, value = step
        return Proposal(
            train_py=set_constant(context.train_py, name, value),
            hypothesis=f"{name} = {value!r}",
            direction=name.lower(),
        )


def results(repo: Path) -> list[dict]:
    """results.tsv's rows as cell dicts (what a user opening the file sees)."""
    from research_loop.records.ledger import parse

    path = repo / "results.tsv"
    return parse(path.read_bytes())[1] if path.is_file() else []


def branch_runs(repo: Path, tag: str) -> list[int]:
    """The loop's run numbers of the commits on the tag's branch (the baseline commit has none)."""
    log = git(repo, "log", "--format=%(trailers:key=Autoresearch-Run,valueonly)", f"autoresearch/{tag}")
    return sorted(int(line) for line in log.split() if line.strip())


def loop_config(repo: Path, tag: str, **overrides):
    """The loop settings the tests share: fast kills, no live panel, one proposal at a time."""
    sys.path.insert(0, str(PROJECT))
    from research_loop.night.config import NightConfig

    settings = {
        "repo": repo,
        "tag": tag,
        "timeout_s": 60,
        "kill_grace_s": 1,
        "progress": False,
        "lookahead": 0,
        "agent_retry_s": 0.01,
        "sandbox": "auto",
    }
    settings = {**settings, **overrides}
    settings.setdefault("allow_unsandboxed", settings["sandbox"] == "none")
    return NightConfig(**settings)


def train_pid_file(repo: Path, tag: str, run: int, trial: int = 0) -> Path:
    """Where the loop keeps the pid of run `run`'s trial `trial` while it trains (its own store, out of
    train.py's reach); the file exists exactly while that train.py runs."""
    from research_loop.night.folders import Workspace

    return Workspace(repo, tag).store / "pids" / f"{run:04d}-{trial}.pid"


def drive(repo: Path, tag: str, script: list, max_runs: int, overrides: dict | None = None) -> None:
    """Run the loop with a ScriptedAgent in this process (the script entry point)."""
    from research_loop.loop import run_loop

    overrides = dict(overrides or {})
    if "settings" in overrides:
        overrides["settings"] = [tuple(item) for item in overrides["settings"]]
    summary = run_loop(loop_config(repo, tag, max_runs=max_runs, progress=True, **overrides), ScriptedAgent(script))
    print(json.dumps({"stop_reason": summary.stop_reason, "runs": summary.runs}))


if __name__ == "__main__":
    drive(
        Path(sys.argv[1]),
        sys.argv[2],
        json.loads(sys.argv[3]),
        int(sys.argv[4]),
        json.loads(sys.argv[5]) if len(sys.argv) > 5 else None,
    )


def expected_strict_f1(repo: Path, quality: float) -> float:
    """The strict F1 the fake train.py gets at this effective quality, computed here from the same lexicon
    and the real val gold with the fixed scorer."""
    sys.path.insert(0, str(PROJECT))
    from evaluate import score

    read = lambda name: [json.loads(line) for line in (repo / "data" / name).read_text().splitlines() if line]
    train_rows, val_rows = read("train.jsonl"), read("val.jsonl")
    keep = int(quality * len(val_rows))
    predicted = [
        lexicon_tags(train_rows, row["tokens"]) if index < keep else ["O"] * len(row["tokens"])
        for index, row in enumerate(val_rows)
    ]
    return score([row["tags"] for row in val_rows], predicted)["strict"]["f1"]


def fake_quality(quality: float, learning_rate=3e-05, weight_decay=0.01, schedule="cosine") -> float:
    """The fake's effective quality: QUALITY moved a little by its three other constants."""
    import hashlib

    config_bytes = repr((learning_rate, weight_decay, schedule)).encode()
    return quality + (int(hashlib.md5(config_bytes).hexdigest(), 16) % 11 - 5) / 100


def refused_by_train_py(data_dir: Path, labels, entity_types, aux_names=()) -> list[dict]:
    """What the real train.py's check refuses of the search space, computed in this process: the same
    `runtime.check_space` that `train.py --check --check-space` runs in the sandbox before a search night."""
    import argparse

    import runtime
    import train
    from research_loop.agents import search_space

    space = search_space.options(list(labels), list(entity_types), list(aux_names))
    return runtime.check_space(train.check, argparse.Namespace(data=Path(data_dir)), space)
