"""Does a night make the model better? Real nights of the loop on a surrogate learner with known truth.

Each night is `agent_loop.py run` (the real scheduler, sandbox, acceptance, git and report) in a scratch copy
of the project whose train.py is bench/surrogate/train.py. Every row's config is read back from its commit,
and its true expected strict F1 (val, holdout, and both pooled) is computed from many seeds with the same
noise draws for every config (bench/surrogate/train.py's predict; cached). Per night:

- captured@k: (true F1 of the best after k proposals - the baseline's) / (attainable - the baseline's);
- false keeps per 100 proposals: keeps whose true gain over the best they replaced is <= 0;
- no-op keeps: keeps whose config block equals the best's (a comment-only change): must never happen, and
  the script exits 3 if one does;
- runs per proposal: train.py trials per proposal (baseline excluded);
- optimism: the best's val gain minus its true holdout gain, against the report's own shrinkage estimate;
- whether the report's holdout interval holds the true holdout gain, and whether a warning fired in a
  night whose best is no real gain.

    python bench/efficacy.py --source DATA_DIR --nights 3 --proposals 100 [--cells builtin:confirm,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from project_copy import copy_project  # bench/: this script's folder, on the path

PROJECT = Path(__file__).resolve().parents[1]
SURROGATE = PROJECT / "bench" / "surrogate" / "train.py"
POLICIES = {"monotonic": ["--policy", "monotonic"], "confirm": ["--policy", "confirm"],
            "confirm-cv": ["--policy", "confirm", "--eval", "cv"]}
AGENTS = ("builtin", "optuna", "null")
CHECKPOINTS = (25, 50, 100)

sys.path.insert(0, str(PROJECT))


def load_surrogate():
    spec = importlib.util.spec_from_file_location("surrogate_train", SURROGATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ----- truth -----


class Truth:
    """True expected strict F1 of configs: mean over `seeds` seeds with common noise draws, scored against
    val's and the holdout's gold (the benchmark is the judge; the surrogate never sees these tags)."""

    def __init__(self, data: Path, holdout_gold: Path, profile: str, seeds: int, cache_file: Path):
        from evaluate import score

        self.score, self.profile, self.seeds = score, profile, seeds
        self.model = load_surrogate()
        self.train = read_jsonl(data / "train.jsonl")
        self.val = read_jsonl(data / "val.jsonl")
        tags = {row["id"]: row["tags"] for row in read_jsonl(holdout_gold)}
        self.holdout = [dict(row, tags=tags[row["id"]]) for row in read_jsonl(data / "holdout.jsonl")]
        self.cache_file = cache_file
        self.cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}

    def key(self, config: dict) -> str:
        relevant = {name: value for name, value in config.items() if name not in self.model.SURROGATE_CONSTANTS}
        return json.dumps([self.profile, self.seeds, sorted((k, repr(v)) for k, v in relevant.items())])

    def __call__(self, config: dict) -> dict:
        key = self.key(config)
        if key not in self.cache:
            sums = {"val": 0.0, "holdout": 0.0, "pooled": 0.0}
            for seed in range(1000, 1000 + self.seeds):
                val = self.model.predict(config, self.train, self.val, seed, None, self.profile, "truth")
                hold = self.model.predict(config, self.train, self.holdout, seed, None, self.profile, "truth")
                gold_val = [row["tags"] for row in self.val]
                gold_hold = [row["tags"] for row in self.holdout]
                sums["val"] += self.score(gold_val, val)["strict"]["f1"]
                sums["holdout"] += self.score(gold_hold, hold)["strict"]["f1"]
                sums["pooled"] += self.score(gold_val + gold_hold, val + hold)["strict"]["f1"]
            self.cache[key] = {name: total / self.seeds for name, total in sums.items()}
        return self.cache[key]

    def save(self) -> None:
        self.cache_file.write_text(json.dumps(self.cache))

    def attainable(self, base: dict) -> tuple[float, dict]:
        """The best pooled truth over the knobs with effects (the space's optimum, by construction)."""
        best, best_config = -1.0, base
        for scheme in ("BIO", "IO"):
            for warmup in (0.0, 0.05, 0.1, 0.2):
                for rate in (5e-6, 1e-5, 2e-5, 3e-5, 5e-5, 8e-5, 1e-4, 2e-4):
                    for trim in (False, True):
                        config = dict(base, LABEL_SCHEME=scheme, WARMUP_RATIO=warmup, LEARNING_RATE=rate,
                                      BOUNDARY_TRIM=trim)
                        value = self(config)["pooled"]
                        if value > best:
                            best, best_config = value, config
        return best, best_config


# ----- one night -----


def template(work: Path, source: Path, profile: str, cache: Path) -> Path:
    """A committed scratch project with prepared data and the surrogate as train.py."""
    repo = work / "template"
    if repo.is_dir():
        return repo
    copy_project(repo)
    text = SURROGATE.read_text()
    text = re.sub(r'^noise_profile = "\w+"', f'noise_profile = "{profile}"', text, count=1, flags=re.MULTILINE)
    (repo / "train.py").write_text(text)
    env = dict(os.environ, NER_AUTORESEARCH_CACHE=str(cache))
    subprocess.run([sys.executable, "prepare.py", "--source", str(source)], cwd=repo, env=env, check=True,
                   capture_output=True)
    return repo


def copy_night_repo(repo_template: Path, target: Path, cache: Path, salt: int) -> Path:
    shutil.copytree(repo_template, target, symlinks=True)
    text = (target / "train.py").read_text()
    (target / "train.py").write_text(re.sub(r"^noise_salt = \d+", f"noise_salt = {salt}", text, count=1, flags=re.MULTILINE))
    git(target, "init", "-q", "-b", "main")
    git(target, "config", "user.email", "bench@example.com")
    git(target, "config", "user.name", "bench")
    git(target, "add", "-A")
    git(target, "commit", "-q", "-m", "project")
    env_before = os.environ.get("NER_AUTORESEARCH_CACHE")
    os.environ["NER_AUTORESEARCH_CACHE"] = str(cache)
    try:
        from research_loop.preparation.build import write_prepared_stamp

        write_prepared_stamp(target / "data", target / "data" / "manifest.json")
    finally:
        if env_before is None:
            os.environ.pop("NER_AUTORESEARCH_CACHE")
        else:
            os.environ["NER_AUTORESEARCH_CACHE"] = env_before
    return target


def config_at(repo: Path, commit: str, cache: dict) -> dict:
    from research_loop.config_block import read_config

    if commit not in cache:
        cache[commit] = {name: value for name, (_, value) in read_config(git(repo, "show", f"{commit}:train.py")).items()}
    return cache[commit]


def first(pattern: str, text: str, group=1, cast=float):
    match = re.search(pattern, text)
    return cast(match.group(group)) if match else None


def parse_report(md: str) -> dict:
    number = r"([+-]?\d+\.\d+)"
    warnings = md.split("## Warnings", 1)[1].split("\n## ", 1)[0] if "## Warnings" in md else ""
    alerts = [line[2:].strip() for line in warnings.splitlines() if line.startswith("- ")
              and not line[2:].startswith("stopped:")]
    return {
        "val_gain": first(r"gain on (?:val|the folds)[^:]*: " + number, md),
        "val_ci": (first(r"gain on (?:val|the folds).*?CI \[" + number + ", " + number + r"\]", md, 1),
                   first(r"gain on (?:val|the folds).*?CI \[" + number + ", " + number + r"\]", md, 2)),
        "holdout_gain": first(r"gain on the blind holdout[^:]*: " + number, md),
        "holdout_ci": (first(r"gain on the blind holdout.*?CI \[" + number + ", " + number + r"\]", md, 1),
                       first(r"gain on the blind holdout.*?CI \[" + number + ", " + number + r"\]", md, 2)),
        "inflation": first(r"inflates a gain by about " + number, md),
        "paired_sd": first(r"sd of one paired difference " + r"(\d+\.\d+)", md),
        "alerts": alerts,
    }


def run_night(args, repo_template: Path, truth: Truth, agent: str, policy: str, night: int, log: Path) -> dict:
    from research_loop.records.ledger import parse

    repo = copy_night_repo(repo_template, args.work / f"{agent}-{policy}-{night}", args.cache, night + 1)
    env = dict(os.environ, NER_AUTORESEARCH_CACHE=str(args.cache), PYTHONPATH=str(repo))
    command = [sys.executable, "agent_loop.py", "run", "--new", "--tag", f"bench{night}", "--agent", agent,
               "--agent-seed", str(night), *POLICIES[policy], "--max-runs", str(args.proposals + 1),
               "--device", "cpu"]
    started = time.time()
    with open(log, "a") as out:
        out.write(f"\n=== {agent} {policy} night {night}: {' '.join(command[1:])}\n")
        out.flush()
        subprocess.run(command, cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    seconds = time.time() - started
    report = subprocess.run([sys.executable, "agent_loop.py", "report", "--format", "md"], cwd=repo, env=env,
                            capture_output=True, text=True, check=False).stdout
    _, rows = parse((repo / "results.tsv").read_bytes())
    configs: dict = {}
    base_row = next(row for row in rows if row["status"] == "baseline")
    best_config = config_at(repo, base_row["commit"], configs)
    base_truth = truth(best_config)
    best_truth = base_truth
    proposals = [row for row in rows if row["status"] != "baseline"]
    trajectory, keeps, false_keeps, noop_keeps, trials = [], 0, 0, 0, 0
    for row in proposals:
        trials += len([s for s in row["seed_scores"].split(",") if s]) if row["seed_scores"] else 0
        if row["status"] == "keep":
            config = config_at(repo, row["commit"], configs)
            new_truth = truth(config)
            keeps += 1
            if config == best_config:
                noop_keeps += 1
            if new_truth["pooled"] - best_truth["pooled"] <= 0:
                false_keeps += 1
            best_config, best_truth = config, new_truth
        trajectory.append(best_truth["pooled"])
    attainable = args.attainable - base_truth["pooled"]
    captured = {str(k): (trajectory[min(k, len(trajectory)) - 1] - base_truth["pooled"]) / attainable
                if trajectory else 0.0 for k in CHECKPOINTS}
    parsed = parse_report(report)
    true_holdout_gain = best_truth["holdout"] - base_truth["holdout"]
    real_gain = best_truth["pooled"] - base_truth["pooled"]
    result = {
        "agent": agent, "policy": policy, "night": night, "seconds": seconds, "proposals": len(proposals),
        "keeps": keeps, "false_keeps": false_keeps, "noop_keeps": noop_keeps,
        "runs_per_proposal": trials / max(len(proposals), 1), "captured": captured,
        "true_gain": real_gain, "true_holdout_gain": true_holdout_gain, "report": parsed,
    }
    if keeps and parsed["val_gain"] is not None:
        result["optimism"] = parsed["val_gain"] - true_holdout_gain
        result["report_inflation"] = parsed["inflation"]
        low, high = parsed["holdout_ci"]
        result["holdout_ci_holds_truth"] = None if low is None else low <= true_holdout_gain <= high
        result["alert_when_no_real_gain"] = bool(parsed["alerts"]) if real_gain <= 0 else None
    return result


# ----- the table -----


def interval(values: list[float]) -> str:
    values = [value for value in values if value is not None]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(len(values), 2.0)
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]"


def count(results: list[dict], key: str) -> str:
    values = [result.get(key) for result in results if result.get(key) is not None]
    return f"{sum(values)}/{len(values)}" if values else "n/a"


def table(results: list[dict], attainable: float, base: float) -> str:
    lines = [
        (f"True pooled strict F1 (val + holdout, {len(results)} nights): baseline {base:.4f}, attainable "
         f"{attainable:.4f} (+{attainable - base:.4f}). Intervals: 95% t over nights."),
        "",
        ("| agent | policy | nights | proposals | captured@25 | captured@50 | captured@100 | false keeps /100 "
         "| no-op keeps | runs/proposal | true gain of best | optimism (val - true holdout) | report's inflation "
         "| holdout CI holds truth | alert when no real gain |"),
        "|" + "---|" * 15,
    ]
    cells: dict = {}
    for result in results:
        cells.setdefault((result["agent"], result["policy"]), []).append(result)
    for (agent, policy), group in cells.items():
        lines.append("| " + " | ".join([
            agent, policy, str(len(group)), str(min(r["proposals"] for r in group)),
            *(interval([r["captured"][str(k)] for r in group]) for k in CHECKPOINTS),
            interval([100 * r["false_keeps"] / max(r["proposals"], 1) for r in group]),
            str(sum(r["noop_keeps"] for r in group)),
            interval([r["runs_per_proposal"] for r in group]),
            interval([r["true_gain"] for r in group]),
            interval([r.get("optimism") for r in group]),
            interval([r.get("report_inflation") for r in group]),
            count(group, "holdout_ci_holds_truth"), count(group, "alert_when_no_real_gain"),
        ]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the Task 7 files, as for prepare.py --source")
    parser.add_argument("--work", type=Path, default=Path("runs/bench_efficacy"))
    parser.add_argument("--nights", type=int, default=3)
    parser.add_argument("--proposals", type=int, default=100)
    parser.add_argument("--cells", default=",".join(f"{a}:{p}" for a in AGENTS for p in POLICIES),
                        help="agent:policy pairs, comma-separated (policies: monotonic, confirm, confirm-cv)")
    parser.add_argument("--profile", choices=["converged", "short"], default="converged")
    parser.add_argument("--truth-seeds", type=int, default=40)
    parser.add_argument("--first-night", type=int, default=0)
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    args.cache = args.work / "cache"
    repo_template = template(args.work, args.source.resolve(), args.profile, args.cache)
    holdout = next((args.cache / "holdout").glob("*.jsonl"))
    truth = Truth(repo_template / "data", holdout, args.profile, args.truth_seeds, args.work / "truth.json")
    model = load_surrogate()
    base_config = model.config_of(vars(model))
    args.attainable, _ = truth.attainable(base_config)
    base = truth(base_config)["pooled"]
    truth.save()
    results_file = args.work / "results.jsonl"
    done = {(r["agent"], r["policy"], r["night"]): r for r in
            (json.loads(line) for line in results_file.read_text().splitlines())} if results_file.is_file() else {}
    log = args.work / "nights.log"
    for cell in args.cells.split(","):
        agent, policy = cell.split(":")
        for night in range(args.first_night, args.first_night + args.nights):
            if (agent, policy, night) in done:
                continue
            result = run_night(args, repo_template, truth, agent, policy, night, log)
            truth.save()
            done[(agent, policy, night)] = result
            with open(results_file, "a") as file:
                file.write(json.dumps(result) + "\n")
            print(f"{agent} {policy} night {night}: {result['proposals']} proposals, {result['keeps']} keeps "
                  f"({result['false_keeps']} false, {result['noop_keeps']} no-op), captured@100 "
                  f"{result['captured']['100']:.2f}, {result['seconds']:.0f} s", flush=True)
    wanted = {tuple(cell.split(":")) for cell in args.cells.split(",")}
    results = [r for r in done.values() if (r["agent"], r["policy"]) in wanted]
    print(table(results, args.attainable, base))
    noop = sum(r["noop_keeps"] for r in results)
    if noop:
        print(f"FAIL: {noop} no-op proposal(s) kept (a comment-only change ties the best and must never be kept)")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
