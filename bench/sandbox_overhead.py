"""What the sandbox costs per run: a trivial train.py run as a job, many times, under each backend; the
overhead is the median time over `none` (which has the same workspace, pipe and limits, but no namespaces).

    python bench/sandbox_overhead.py --repeats 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from research_loop.execution import sandbox
from research_loop.execution.jobs import Job, run_job


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    data = {"train.jsonl": b'{"id": "t", "tokens": ["a"], "tags": ["O"]}\n', "val.jsonl": b'{"id": "v", "tokens": ["a"]}\n'}
    job = Job("open('out/pred_val.jsonl', 'w').write('{}')\n", {"prepare.py": b"", "evaluate.py": b""}, data, 42)
    times = {}
    with tempfile.TemporaryDirectory() as folder:
        for backend in ("none", "bwrap", "unshare"):
            why = sandbox.probe(backend)
            if why:
                print(f"{backend}: skipped ({why})")
                continue
            samples = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                result = run_job(job, backend, jobs_root=Path(folder) / "jobs", repo=ROOT, grace_s=1)
                samples.append(time.perf_counter() - started)
                assert result.kind == "ok", result.log_tail
            times[backend] = median(samples)
    print(f"median seconds per run of a trivial train.py ({args.repeats} runs each):\n")
    print("| backend | median s/run | overhead over none |\n|---|---|---|")
    for backend, seconds in times.items():
        print(f"| {backend} | {seconds:.3f} | {seconds - times.get('none', seconds):+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
