"""Runs per hour of the loop itself: a fake train.py that sleeps T seconds, a fake agent that thinks A seconds,
for the serial loop (today's: propose, then train), the pipelined loop (the agent thinks while the worker
trains) and N Ray workers. It reports runs per hour, each worker's busy share, the loop's own seconds per run,
and Ray's start-up. The fake runs need no CPU to speak of, so the numbers measure the scheduling.

    python bench/parallel_throughput.py --train-s 10 --agent-s 10 --runs 12          # A = T
    python bench/parallel_throughput.py --train-s 10 --agent-s 1 --runs 16 --workers 1 2 4

Uses the prepared data/ of this checkout and the tests' fake train.py (tests/loop_helpers.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from loop_helpers import FAKE_TRAIN_PY, ScriptedAgent, loop_config, make_repo
from markdown_table import table

from research_loop.evaluation.acceptance import Monotonic
from research_loop.loop import run_loop
from research_loop.records.ledger import read_records


class SlowAgent(ScriptedAgent):
    """A new QUALITY each time, after `seconds` of thinking."""

    def __init__(self, seconds: float, runs: int):
        super().__init__([("QUALITY", round(0.30 + 0.001 * index, 3)) for index in range(runs * 3)])
        self.seconds = seconds

    def propose(self, context):
        time.sleep(self.seconds)
        proposal = super().propose(context)
        # A direction of its own each time: five failures in a row would close a shared one, and the
        # bounced proposals would cost agent time but no training.
        return dataclasses.replace(proposal, direction=f"quality {len(self.contexts)}")


def measure(label: str, runs: int, train_s: float, agent_s: float, **config) -> dict:
    root = Path(tempfile.mkdtemp(prefix="ner-autoresearch-bench-"))
    try:
        repo = make_repo(root, ROOT / "data", FAKE_TRAIN_PY.replace("SLEEP_S = 0.0", f"SLEEP_S = {train_s}"))
        started = time.monotonic()
        summary = run_loop(loop_config(repo, "bench", max_runs=runs + 1, policy=Monotonic(), timeout_s=600,
                                       **config), SlowAgent(agent_s, runs))
        wall = time.monotonic() - started
        records = read_records(repo / "results.tsv")
        busy: dict[str, float] = {}
        for record in records:
            for worker in record.workers:
                busy[worker] = busy.get(worker, 0.0) + record.seconds / max(1, len(record.workers))
        candidates = [record for record in records if record.status.value != "baseline"]
        first = min(record.timestamp for record in candidates) if candidates else None
        loop_s = [json.loads((repo / "runs" / "bench" / f"{record.run:04d}" / "timing.json").read_text())["loop_s"]
                  for record in records if (repo / "runs" / "bench" / f"{record.run:04d}" / "timing.json").is_file()]
        return {"label": label, "runs": len(records), "wall_s": wall, "runs_per_hour": 3600 * len(records) / wall,
                "busy_share": {worker: seconds / wall for worker, seconds in busy.items()},
                "loop_s_per_run": median(loop_s) if loop_s else None, "stop": summary.stop_reason,
                "first_candidate": first}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-s", type=float, default=10.0)
    parser.add_argument("--agent-s", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="*", default=[], help="Ray worker counts to measure")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    rows = [measure("serial (today's loop)", args.runs, args.train_s, args.agent_s, lookahead=0),
            measure("pipelined, 1 worker", args.runs, args.train_s, args.agent_s, lookahead=1)]
    for workers in args.workers:
        import ray

        started = time.monotonic()
        # The fake runs only sleep: give Ray a slot per worker even where the machine has fewer cores.
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False,
                 num_cpus=max(workers, os.cpu_count() or 1))
        startup = time.monotonic() - started
        row = measure(f"Ray, {workers} workers", args.runs, args.train_s, args.agent_s, workers=workers,
                      lookahead=1)
        row["ray_startup_s"] = startup
        rows.append(row)
        ray.shutdown()
    serial = rows[0]["runs_per_hour"]
    print(f"T = {args.train_s:g} s per run, A = {args.agent_s:g} s per proposal, {args.runs} proposals\n")
    print(table(["loop", "runs/hour", "x serial", "worker busy share", "loop s/run", "Ray start-up"],
                [[row["label"], f"{row['runs_per_hour']:.0f}", f"{row['runs_per_hour'] / serial:.2f}",
                  ", ".join(f"{share:.0%}" for share in row["busy_share"].values()),
                  f"{row['loop_s_per_run']:.2f}" if row["loop_s_per_run"] is not None else "",
                  f"{row['ray_startup_s']:.1f} s" if "ray_startup_s" in row else ""] for row in rows]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
