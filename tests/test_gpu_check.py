"""bench/gpu_check.py and bench/gpu_bundle.sh on CPU: the check's --tiny mode runs every section and writes
the report a GPU run would, a SIGTERM keeps what was done, and the bundle stays within the device's limit."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(os.environ.get("TASK7_SOURCE", "/work/shared/data/smm4h2026-task7"))
needs_data = pytest.mark.skipif(not (SOURCE / "new_train_data.csv").is_file(),
                                reason=f"the Task 7 CSVs are not at {SOURCE} (set TASK7_SOURCE)")
SECTIONS = ["1 environment", "setup: scratch repository, prepared data, random-init model",
            "2 step speed and memory", "3 train.py end to end", "4 the loop (--agent builtin)"]


def check_argv(tmp: Path) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--tiny", "--device", "cpu",
            "--out", str(tmp / "out"), "--work", str(tmp / "work"), "--source", str(SOURCE),
            "--budget-s", "1200"]  # a loaded CI machine is slow; on a GPU the default 450 s is the budget


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run(check_argv(tmp), capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    report = json.loads((tmp / "out" / "gpu_check.json").read_text())
    return done, report, (tmp / "out" / "gpu_check.md").read_text()


@needs_data
def test_tiny_check_runs_every_section_and_reports_them(tiny_check):
    done, report, md = tiny_check
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sections = {section["name"]: section for section in report["sections"]}
    assert list(sections) == SECTIONS
    assert {name: section["status"] for name, section in sections.items()} == dict.fromkeys(SECTIONS, "ok")
    assert report["meta"]["mode"] == "tiny" and report["meta"]["total_s"] <= 1200
    for name in SECTIONS:
        assert f"## {name}: ok" in md

    env = sections["1 environment"]["result"]
    assert env["torch"] and env["transformers"] and env["cuda_available"] in (True, False)

    speed = sections["2 step speed and memory"]["result"]
    assert set(speed["recipes"]) == {"vanilla eager fp32", "train.py default"}
    assert speed["recipes"]["vanilla eager fp32"]["overrides"]["PRECISION"] == "fp32"
    for row in speed["recipes"].values():
        assert row["ms_per_step"] > 0 and row["est_full_run_s"] > 0
    assert speed["batch_size"] == 8 and speed["speedup"] > 0
    assert "| train.py default |" in md and "| vanilla eager fp32 |" in md

    e2e = sections["3 train.py end to end"]["result"]
    assert e2e["exit_code"] == 0 and e2e["epochs_done"] == 10 and e2e["losses_finite"]
    assert {"pred_val.jsonl", "pred_holdout.jsonl", "pred_test.csv"} <= set(e2e["predicted"])
    assert e2e["train_s"] > 0 and e2e["predict_s"] is not None and "random-init" in e2e["model"]

    loop = sections["4 the loop (--agent builtin)"]["result"]
    assert loop["rows"] >= 2 and loop["train_py_runs"] >= 3  # the baseline's seeds and one proposal
    assert loop["runs_per_hour"] > 0 and 0 < loop["loop_overhead_share"] < 1
    assert loop["sandbox"].startswith(("sandboxed", "UNSANDBOXED"))
    assert loop["workers_2"].startswith("skipped") == (
        importlib.util.find_spec("ray") is None)


@pytest.mark.slow  # a second partial run of the check (about a minute here)
@needs_data
def test_sigterm_marks_the_running_section_killed_and_keeps_the_rest(tmp_path):
    process = subprocess.Popen(check_argv(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    path = tmp_path / "out" / "gpu_check.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # wait for train.py (section 3) to be running
            if path.is_file():
                try:
                    sections = json.loads(path.read_text())["sections"]
                except json.JSONDecodeError:
                    sections = []
                if sections and sections[-1]["name"] == SECTIONS[3] and sections[-1]["status"] == "running":
                    break
            time.sleep(0.5)
        else:
            pytest.fail("section 3 never started")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
    report = json.loads(path.read_text())
    assert [s["status"] for s in report["sections"]] == ["ok", "ok", "ok", "killed"]
    assert "signal 15" in report["sections"][-1]["note"]
    assert f"## {SECTIONS[3]}: killed" in (tmp_path / "out" / "gpu_check.md").read_text()
    assert not list((tmp_path / "work").glob("train_run/pred_*"))  # train.py was stopped with it


def test_full_check_refuses_a_cpu():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--out", "/nonexistent/x",
                           "--device", "cpu"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "use --tiny" in done.stderr


def build_bundle(tmp: Path, limit_mib: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    if limit_mib is not None:
        env["GPU_BUNDLE_LIMIT_MIB"] = str(limit_mib)
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_bundle.sh"), "--source", str(SOURCE),
                           "--out", str(tmp / "bundle")], capture_output=True, text=True, timeout=600,
                          check=False, env=env)
    if done.returncode != 0 and ("NewConnectionError" in done.stderr or "Network is unreachable" in done.stderr):
        pytest.skip("no package index reachable for pip download")
    return done


@needs_data
def test_bundle_fits_the_device_limit_and_holds_what_the_check_needs(tmp_path):
    done = build_bundle(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    bundle = tmp_path / "bundle"
    total = sum(path.stat().st_size for path in bundle.rglob("*") if path.is_file())
    assert total <= 60 * 2**20
    assert f"total {total} bytes" in done.stdout and 'carry: ["' in done.stdout
    assert "bash bench/gpu_device.sh" in done.stdout
    wheels = {path.name.split("-")[0].lower() for path in (bundle / "wheels").glob("*.whl")}
    assert {"gitpython", "gitdb", "smmap", "seqeval", "anthropic", "openai", "pydantic", "pydantic_core"} <= wheels
    assert len(wheels) == len(list((bundle / "wheels").glob("*.whl")))  # one version of each
    for wheel in (bundle / "wheels").glob("*.whl"):  # what installs on the device's Python 3.12
        tag = wheel.name.removesuffix(".whl").split("-")[-3:]
        assert tag[0] in ("py3", "cp312", "py2.py3") and (tag[2] == "any" or "manylinux" in tag[2]), wheel.name
        assert zipfile.is_zipfile(wheel)
    assert {p.name for p in (bundle / "source").iterdir()} == {
        "new_train_data.csv", "new_dev_data.csv", "new_test_data_unlabeled.csv"}
    assert (bundle / "tokenizer" / "tokenizer.json").is_file()
    if (bundle / "minilm").is_dir():  # fp16: half the package's 87 MiB
        assert (bundle / "minilm" / "model.safetensors").stat().st_size < 50 * 2**20


@needs_data
def test_bundle_over_the_limit_fails(tmp_path):
    done = build_bundle(tmp_path, limit_mib=5)
    assert done.returncode == 1
    assert "over the 5 MiB limit" in done.stderr
    assert "left out" in done.stderr  # MiniLM is dropped first, and the rest is still too big


def test_the_loop_section_is_skipped_not_failed_without_git(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    result = {}
    (tmp_path / "repo").mkdir()  # a scratch repository that git could not be run in
    assert gpu_check.section_loop(result, tmp_path, tmp_path / "repo", "cpu", True, 30) == "skipped"
    assert "no git executable" in result["why"]
