"""One job through each sandbox backend: what train.py sees and can do, its output through a pipe, its outputs
brought back safely, and everything it starts killed with it. Also as an unprivileged user."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from research_loop.execution import sandbox
from research_loop.execution.jobs import LOG_HEAD_BYTES, Job, parse_printed, run_job

BACKENDS = ["bwrap", "unshare"]
REQUIRED = os.environ.get("NER_AUTORESEARCH_REQUIRE_SANDBOX") == "1"  # CI: a missing backend fails, never skips
SECRET = "sk-ant-api03-TESTSECRET0123456789abcdefghij"


def backend_or_skip(backend):
    why = sandbox.probe(backend)
    if why is not None:
        if REQUIRED:
            pytest.fail(f"{backend} must work here: {why}")
        pytest.skip(why)
    return backend


@pytest.fixture(params=BACKENDS)
def backend(request):
    return backend_or_skip(request.param)


def job(code: str, **fields) -> Job:
    return Job(train_py=textwrap.dedent(code), fixed_files={"prepare.py": b"", "evaluate.py": b""},
               data={"train.jsonl": b'{"id": "t1", "tokens": ["a"], "tags": ["O"]}\n',
                     "val.jsonl": b'{"id": "v1", "tokens": ["a"]}\n'}, seed=42, **fields)


def run(backend, code, tmp_path, monkeypatch=None, **fields):
    return run_job(job(code, **fields), backend, jobs_root=tmp_path / "jobs", repo=Path.cwd(),
                   private=[tmp_path / "private"], grace_s=1)


def test_train_py_sees_an_allowlisted_environment_and_no_secrets(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "secret-value-123")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    result = run(backend, """
        import json, os
        print(json.dumps(dict(os.environ)))
        """, tmp_path)
    assert result.kind == "ok", result.log_tail
    env = json.loads(result.log_tail.splitlines()[-1])
    assert SECRET not in json.dumps(env) and "MY_SERVICE_TOKEN" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["HF_HUB_OFFLINE"] == "1" and env["HOME"] == "/tmp/home"


def test_no_network_no_other_processes_no_capabilities_and_a_read_only_view(backend, tmp_path):
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "gold.jsonl").write_text("the holdout gold")
    result = run(backend, f"""
        import os, socket
        from pathlib import Path
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        caps = [line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff")][0]
        try:
            socket.create_connection(("1.1.1.1", 443), timeout=2)
            net = "open"
        except OSError:
            net = "closed"
        writable = []
        for path in ["train.py", "data/val.jsonl", "{Path.cwd() / 'evaluate.py'}", "/usr/x", "/etc/x"]:
            try:
                open(path, "a").close()
                writable.append(path)
            except OSError:
                pass
        open("out/ok", "w").write("1")
        print("pids", len(pids), "caps", caps, "net", net, "writable", writable,
              "private", Path("{tmp_path / 'private'}").exists() and os.listdir("{tmp_path / 'private'}"),
              "repo", os.listdir("{Path.cwd()}") if Path("{Path.cwd()}").is_dir() else None,
              "home", os.listdir(os.path.expanduser("~")))
        """, tmp_path)
    assert result.kind == "ok", result.log_tail
    line = result.log_tail.splitlines()[-1]
    assert "pids 2 " in line or "pids 1 " in line  # its own PID namespace: itself (and the sandbox's init)
    assert "caps 0000000000000000" in line and "net closed" in line and "writable []" in line
    assert "gold" not in line and "repo []" in line or "repo None" in line
    assert result.outputs == {"ok": b"1"}


def test_output_goes_through_a_pipe_into_a_capped_log(backend, tmp_path):
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        result = run_job(job("""
            import sys
            sys.stdout.write("x" * (9 << 20))
            print("\\n---\\nstrict_f1: 0.5\\ndevice: cpu")
            """), backend, jobs_root=tmp_path / "jobs", repo=Path.cwd(), log=sink)
    assert result.kind == "ok"
    assert LOG_HEAD_BYTES < log.stat().st_size < LOG_HEAD_BYTES + (300 << 10)
    assert "bytes of output left out" in log.read_text()[-300 << 10:]
    assert parse_printed(result.log_tail) == {"strict_f1": "0.5", "device": "cpu"}


def test_only_plain_files_directly_in_out_come_back(backend, tmp_path):
    result = run(backend, """
        import os
        open("out/pred_val.jsonl", "w").write("ok")
        os.symlink("/etc/passwd", "out/link.txt")
        open("out/a", "w").write("a")
        os.link("out/a", "out/b")
        os.makedirs("out/.git/hooks")
        open("out/.git/config", "w").write("[core]\\n\\tfsmonitor = touch /tmp/pwned\\n")
        open("out/.envrc", "w").write("export X=1")
        open("out/evil\\nname", "w").write("x")
        os.mkfifo("out/pipe")
        os.makedirs("out/deep/" * 50)
        for index in range(100):
            open(f"out/many-{index:03d}", "w").write("m")
        """, tmp_path)
    assert result.kind == "ok", result.log_tail
    assert result.outputs["pred_val.jsonl"] == b"ok"
    assert not {".git", ".envrc", "a", "b", "link.txt", "pipe", "deep", "evil\nname"} & set(result.outputs)
    assert len(result.outputs) == 64  # at most 64 files come back
    skipped = " ".join(result.skipped)
    assert "link.txt, pipe (not a regular file)" in skipped and "a, b (a hard link)" in skipped
    assert "'.git'" in skipped and "and 34 more (over 64 files)" in skipped


def test_a_timeout_kills_train_py_and_everything_it_started(backend, tmp_path):
    marker = "sleep-marker-" + str(os.getpid())
    start = time.monotonic()
    result = run(backend, f"""
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)  # {marker}"], start_new_session=True)
        if os.fork() == 0:
            os.setsid()
            time.sleep(300)
        time.sleep(300)
        """, tmp_path, timeout_s=2)
    assert result.kind == "timeout" and time.monotonic() - start < 20
    time.sleep(0.5)
    survivors = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False).stdout.split()
    assert survivors == []


def test_exit_codes_out_of_memory_and_a_failed_sandbox_are_told_apart(backend, tmp_path):
    assert run(backend, "raise SystemExit(3)", tmp_path).kind == "crash"
    oom = run(backend, "import sys; print('torch.OutOfMemoryError: CUDA out of memory.'); sys.exit(1)", tmp_path)
    assert oom.kind == "oom" and oom.error_line().startswith("out of memory")


def test_process_and_file_size_caps(backend, tmp_path):
    limits = sandbox.Limits(processes=64, file_bytes=1 << 20)
    result = run_job(job("""
        import os, time
        started = 0
        for _ in range(500):
            try:
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                started += 1
            except OSError:
                break
        try:
            with open("out/big", "wb") as file:
                file.write(b"x" * (4 << 20))
            size = "unlimited"
        except OSError as exc:
            size = "capped"
        print("forks", started, "size", size)
        """, timeout_s=60), backend, jobs_root=tmp_path / "jobs", repo=Path.cwd(), limits=limits)
    line = result.log_tail.splitlines()[-1]
    forks = int(line.split()[1])
    assert forks < 64 and "size capped" in line


def test_the_unsandboxed_backend_runs_the_same_job(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    result = run("none", "import os; open('out/env', 'w').write(repr(dict(os.environ)))", tmp_path)
    assert result.kind == "ok" and SECRET.encode() not in result.outputs["env"]


def test_choose_refuses_to_run_unsandboxed_unless_allowed(monkeypatch):
    monkeypatch.setattr(sandbox, "probe", lambda backend: f"{backend} does not work here")
    with pytest.raises(sandbox.SandboxError, match="--no-sandbox"):
        sandbox.choose("auto", allow_none=False)
    assert sandbox.choose("auto", allow_none=True)[0] == "none"
    with pytest.raises(sandbox.SandboxError, match="--sandbox bwrap: bwrap does not work"):
        sandbox.choose("bwrap", allow_none=True)


UNPRIVILEGED = "nerauto"


@pytest.mark.skipif(os.geteuid() != 0, reason="already unprivileged: the tests above ran as a normal user")
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_the_sandbox_as_an_unprivileged_user(backend_name, tmp_path):
    """Users are not root: the same job, run by an ordinary account through runuser."""
    if subprocess.run(["id", UNPRIVILEGED], capture_output=True, check=False).returncode != 0:
        if REQUIRED:
            pytest.fail(f"user {UNPRIVILEGED} is missing (.ci/run creates it)")
        pytest.skip(f"no user {UNPRIVILEGED} (useradd {UNPRIVILEGED})")
    work = Path(f"/tmp/{UNPRIVILEGED}-{os.getpid()}-{backend_name}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    shutil.chown(work, UNPRIVILEGED)
    script = work / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path.cwd())!r})
        from research_loop.execution import sandbox
        from research_loop.execution.jobs import Job, run_job
        why = sandbox.probe({backend_name!r})
        if why:
            print(json.dumps({{"why": why}})); sys.exit(0)
        os.environ["ANTHROPIC_API_KEY"] = {SECRET!r}
        code = "import os\\nprint(os.getuid(), os.listdir('/proc').count('1'), open('/proc/1/cmdline').read()[:40], '{SECRET}' in open('/proc/1/environ').read() if os.access('/proc/1/environ', os.R_OK) else 'no-environ')"
        job = Job(code, {{}}, {{}}, 42)
        result = run_job(job, {backend_name!r}, jobs_root=Path({str(work)!r}) / "jobs", repo=None)
        print(json.dumps({{"kind": result.kind, "tail": result.log_tail}}))
        """))
    shutil.chown(script, UNPRIVILEGED)
    env = {"PATH": os.environ["PATH"], "HOME": str(work), "NER_AUTORESEARCH_CACHE": str(work / "cache")}
    # The system interpreter: a user's own Python may sit in a home the test account cannot enter. The job
    # code needs only the standard library (jobs.py and sandbox.py import nothing else).
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    done = subprocess.run(["runuser", "-u", UNPRIVILEGED, "--", python, str(script)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=work, check=False)
    shutil.rmtree(work, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    if "why" in answer:
        if REQUIRED:
            pytest.fail(f"{backend_name} does not work for an unprivileged user: {answer['why']}")
        pytest.skip(answer["why"])
    assert answer["kind"] == "ok", answer["tail"]
    assert SECRET not in answer["tail"] and "True" not in answer["tail"].split()[-1:]


@pytest.mark.parametrize("where", ["home", "system folder"])
def test_the_hub_cache_shows_models_only(backend, where, tmp_path, monkeypatch):
    """Model folders are readable (train.py loads weights offline); the token and cached datasets (an
    --hf night's unsplit gold) are not, also where HF_HOME sits in a folder the sandbox shows (/opt)."""
    from huggingface_hub import constants

    if where == "home":
        home = tmp_path / "hf"
    else:
        if not os.access("/opt", os.W_OK):
            pytest.skip("needs a writable /opt (CI runs as root)")
        home = Path("/opt") / f"ner-autoresearch-test-hf-{os.getpid()}"
        shutil.rmtree(home, ignore_errors=True)
        monkeypatch.setattr(constants, "HF_HOME", str(home))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    hub = home / "hub"
    (hub / "models--acme--tagger" / "snapshots" / "abc").mkdir(parents=True)
    (hub / "models--acme--tagger" / "snapshots" / "abc" / "config.json").write_text("{}")
    (hub / "datasets--acme--ner" / "snapshots" / "abc").mkdir(parents=True)
    (hub / "datasets--acme--ner" / "snapshots" / "abc" / "validation.jsonl").write_text("gold tags")
    (home / "token").write_text("hf_SECRETTOKEN0123456789abcdef")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    result = run(backend, f"""
        import os
        print(sorted(os.listdir({str(hub)!r})), os.path.exists({str(home / 'token')!r}),
              open({str(hub / 'models--acme--tagger' / 'snapshots' / 'abc' / 'config.json')!r}).read())
        """, tmp_path)
    if where != "home":
        shutil.rmtree(home, ignore_errors=True)
    assert result.kind == "ok", result.log_tail
    assert result.log_tail.splitlines()[-1] == "['models--acme--tagger'] False {}"

KEYCTL = {"x86_64": (248, 250), "aarch64": (217, 219)}  # add_key, keyctl system call numbers
JOB_READS_KEY = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
found = libc.syscall(ctypes.c_long(KEYCTL), ctypes.c_long(10), ctypes.c_long(-3), b"user", b"ner-test-key",
                     ctypes.c_long(0))  # KEYCTL_SEARCH the session keyring
buffer = ctypes.create_string_buffer(256)
size = libc.syscall(ctypes.c_long(KEYCTL), ctypes.c_long(11), ctypes.c_long(found), buffer, ctypes.c_long(256))
print("job read:", buffer.raw[:max(size, 0)].decode(), "found", found)
"""


@pytest.mark.skipif(os.uname().machine not in KEYCTL, reason="keyctl numbers known for x86_64 and aarch64 here")
def test_the_loops_session_keyring_is_out_of_reach(backend, tmp_path):
    """A key in the session keyring of the process that runs the job (a credential helper's secret, a
    Kerberos ticket) is readable by the loop and not by train.py."""
    add_key, keyctl = KEYCTL[os.uname().machine]
    script = tmp_path / "keyring.py"
    script.write_text(textwrap.dedent(f"""
        import ctypes, json, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path.cwd())!r})
        from research_loop.execution.jobs import Job, run_job
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.syscall(ctypes.c_long({keyctl}), ctypes.c_long(1), None)  # this test's own session keyring
        secret = {SECRET!r}.encode()
        key = libc.syscall(ctypes.c_long({add_key}), b"user", b"ner-test-key", secret, ctypes.c_size_t(len(secret)),
                           ctypes.c_long(-3))
        buffer = ctypes.create_string_buffer(256)
        size = libc.syscall(ctypes.c_long({keyctl}), ctypes.c_long(11), ctypes.c_long(key), buffer, ctypes.c_long(256))
        mine = buffer.raw[:max(size, 0)].decode()
        code = {JOB_READS_KEY.replace("KEYCTL", str(keyctl))!r}
        result = run_job(Job(code, {{}}, {{}}, 42), {backend!r}, jobs_root=Path({str(tmp_path)!r}) / "jobs")
        print(json.dumps({{"mine": mine, "kind": result.kind, "tail": result.log_tail}}))
        """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["mine"] == SECRET  # the key is there, and readable where the loop runs
    assert answer["kind"] == "ok" and "job read:" in answer["tail"], answer["tail"]
    assert SECRET not in answer["tail"]
