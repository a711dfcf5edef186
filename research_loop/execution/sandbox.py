"""The operating-system boundary around every train.py process.

Backends, best first: bubblewrap (`bwrap`, as Flatpak and agentic coding tools use it), util-linux `unshare`
(user, mount, PID, network, IPC and UTS namespaces, set up by sandbox_init.py), and `none` (only with
--no-sandbox or a non-LLM agent). Both real backends give train.py the same view:

- no network (an empty network namespace), its own PID namespace and a fresh /proc: it cannot see the
  loop or any other process, and everything it starts dies with it;
- an environment built from an allowlist (no keys or tokens), a private HOME and TMPDIR, the HF hub cache
  read-only and offline;
- the whole file system read-only; the user's home, /home, /root, /tmp, /run, the repository and the
  loop's own cache (holdout gold, integrity store) hidden behind empty folders; the job's workspace
  (train.py, prepare.py, evaluate.py and the data view) read-only, and only its out/ folder writable;
- GPU device nodes passed through; no capabilities; caps on processes, file size and (with a systemd user
  session) memory.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

INIT_SCRIPT = Path(__file__).with_name("sandbox_init.py")
BACKENDS = ("bwrap", "unshare", "none")
SETUP_FAILED = 125  # sandbox_init.py's exit code when the view could not be built
GPU_DEVICE_PATTERNS = ("/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/dri/*", "/dev/kfd")
SANDBOX_HOME = "/tmp/home"
# Files of /etc that hold secrets (readable through owner bits when the loop runs as root) or a machine's
# environment: hidden too. train.py needs none of them.
ETC_SECRETS = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers", "/etc/sudoers.d",
               "/etc/ssh", "/etc/ssl/private", "/etc/environment", "/etc/credstore", "/etc/credstore.encrypted",
               "/etc/netrc", "/etc/security/opasswd", "/etc/krb5.keytab", "/etc/docker", "/etc/containers/auth.json")
# Top-level folders train.py sees (read-only); every other top-level entry is hidden.
SYSTEM_FOLDERS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt", "nix", "proc", "dev",
                  "sys", "tmp")
# Variables train.py may see, by name; everything else (keys, tokens, the loop's own settings) stays out.
ENV_ALLOWLIST = (
    "PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "TZ", "USER", "LOGNAME", "LD_LIBRARY_PATH",
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
    "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "PYTORCH_CUDA_ALLOC_CONF",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",
)


class SandboxError(Exception):
    """No sandbox backend works here, or the one asked for does not; the message is one line."""


@dataclass(frozen=True)
class Limits:
    processes: int = 4096  # RLIMIT_NPROC: processes and threads
    file_bytes: int = 8 << 30  # RLIMIT_FSIZE: the largest file train.py may write
    tmp_bytes: int = 4 << 30  # its private /tmp (HOME and TMPDIR), in memory
    shm_bytes: int = 2 << 30  # its private /dev/shm (DataLoader workers)
    memory_bytes: int | None = None  # a cgroup memory cap where the kernel allows one; None: 90% of RAM

    def rlimits(self) -> dict[str, int]:
        return {"nproc": self.processes, "fsize": self.file_bytes, "core": 0}

    def memory(self) -> int:
        if self.memory_bytes:
            return self.memory_bytes
        try:
            with open("/proc/meminfo") as meminfo:
                total_kb = int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal")))
        except (OSError, StopIteration, ValueError):
            return 0
        return int(total_kb * 1024 * 0.9)


DEFAULT_LIMITS = Limits()


@dataclass
class SandboxSpec:
    """What one train.py process may see and do."""

    workspace: Path  # read-only: train.py, prepare.py, evaluate.py, data/
    out_dir: Path  # writable: the only place it can write (besides its private /tmp)
    command: list[str]  # run with cwd = workspace
    env: dict[str, str]
    masks: list[str] = field(default_factory=list)  # folders hidden behind an empty tmpfs
    ro_binds: list[str] = field(default_factory=list)  # shown again read-only under the masks
    devices: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    cgroup_procs: list[str] = field(default_factory=list)  # the job's control groups, joined before anything runs
    use_systemd_scope: bool = False

    def init_json(self) -> str:
        return json.dumps({
            "cwd": str(self.workspace), "command": self.command, "env": self.env, "masks": self.masks,
            "ro_binds": self.ro_binds, "rw_binds": [str(self.out_dir)], "devices": self.devices,
            "tmp_size": self.limits.tmp_bytes, "shm_size": self.limits.shm_bytes, "home": SANDBOX_HOME,
            "rlimits": self.limits.rlimits(),
        })


# ----- What the view hides and shows again -----


def hub_models() -> tuple[Path | None, list[str]]:
    """The Hugging Face hub cache and its model folders: only models--* are shown (read-only). The rest stays
    hidden: HF_HOME may hold a token, and datasets--* folders (prepare.py --hf) hold the unsplit gold."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return None, []
    hub = Path(constants.HF_HUB_CACHE)
    if not hub.is_dir():
        return None, []
    return hub, sorted(str(path) for path in hub.glob("models--*") if path.is_dir() and not path.is_symlink())


def hugging_face_private() -> list[Path]:
    """The Hugging Face folders hidden wherever they are (a home is hidden anyway, /opt or /srv are not):
    HF_HOME (its token, datasets--* with the unsplit gold), the hub cache and the token file. The model
    folders are shown again on top (hub_models)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return []
    paths = [constants.HF_HOME, constants.HF_HUB_CACHE, getattr(constants, "HF_TOKEN_PATH", None),
             getattr(constants, "HF_STORED_TOKENS_PATH", None), os.environ.get("HF_DATASETS_CACHE")]
    return [Path(path) for path in paths if path]


def python_paths() -> list[str]:
    """What the interpreter needs, and only that: its binary (as started, so a venv stays a venv), the lib
    folders of its prefixes (stdlib, site-packages, libpython) and the user site. Not the script's folder,
    PYTHONPATH or other sys.path entries (a project folder may hold gold data), not a prefix's bin/ (an
    activate script may export a key) or conda-meta/."""
    files = [sys.executable, os.path.realpath(sys.executable), os.path.join(sys.prefix, "pyvenv.cfg")]
    folders = []
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        folders += [os.path.join(prefix, name) for name in ("lib", "lib64")]
    folders += [sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib", "purelib", "platlib")]
    folders += [site.getusersitepackages()]
    folders += [path for path in sys.path if path and {"site-packages", "dist-packages"} & set(path.split(os.sep))]
    return ([os.path.abspath(path) for path in files if path and os.path.isfile(path)]
            + [os.path.realpath(path) for path in folders if path and os.path.isdir(path)])


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _in_venv(path: str) -> bool:
    return "site-packages" in path.split("/") or any(
        (folder / "pyvenv.cfg").is_file() for folder in (Path(path), *Path(path).parents))


def shown_paths(candidates: list[str], private: list[str], strict: list[str]) -> list[str]:
    """The folders (and files) shown again under the masks: none that is, or holds, a private path (the
    repository, the loop's cache, the data's sources, the user's home), and none inside a strict one (the
    repository, the cache, the sources) but a venv or site-packages, whatever sys.path says."""
    kept = [path for path in candidates
            if not any(_within(hidden, path) for hidden in private)
            and not any(_within(path, hidden) and not _in_venv(path) for hidden in strict)]
    return _outermost(kept)


def _outermost(paths: list[str]) -> list[str]:
    kept: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(path == outer or path.startswith(outer.rstrip("/") + "/") for outer in kept):
            kept.append(path)
    return kept


def hidden_paths(repo: Path | None, private: list[Path]) -> list[str]:
    """What an empty tmpfs (or /dev/null, for a file) covers: every top-level entry but the system folders
    (so homes, /work, /data, /srv, /var, ... and any data in them are gone), plus the repository and the
    loop's private folders (holdout gold, integrity store, job workspaces, the data's source folders)
    wherever they are."""
    paths = []
    for entry in os.scandir("/"):
        if entry.name not in SYSTEM_FOLDERS and not entry.is_symlink():
            paths.append(entry.path)
    paths += [str(path) for path in private] + ([str(repo)] if repo is not None else [])
    paths += ["/tmp", os.path.expanduser("~"), *ETC_SECRETS]
    real = {os.path.realpath(path) for path in paths if os.path.lexists(path)}
    return _outermost(sorted(real - {"/", *(f"/{name}" for name in SYSTEM_FOLDERS if name != "tmp")}))


def gpu_devices() -> list[str]:
    return sorted(path for pattern in GPU_DEVICE_PATTERNS for path in glob.glob(pattern))


def sandbox_env(base: dict[str, str], hub: Path | None) -> dict[str, str]:
    """train.py's whole environment: allowlisted names, a private home, the hub offline."""
    env = {name: base[name] for name in ENV_ALLOWLIST if name in base}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({
        "HOME": SANDBOX_HOME, "TMPDIR": "/tmp", "XDG_CACHE_HOME": f"{SANDBOX_HOME}/.cache",
        "HF_HOME": f"{SANDBOX_HOME}/.cache/huggingface", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "MPLCONFIGDIR": f"{SANDBOX_HOME}/.config",
        "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1",
        "NER_AUTORESEARCH_CACHE": f"{SANDBOX_HOME}/.cache/ner-autoresearch",
    })
    if hub is not None:
        env["HF_HUB_CACHE"] = str(hub)
    return env


def make_spec(workspace: Path, out_dir: Path, command: list[str], base_env: dict[str, str], repo: Path | None,
              private: list[Path], limits: Limits = DEFAULT_LIMITS) -> SandboxSpec:
    hub, models = hub_models()
    libraries = [os.path.realpath(path) for path in base_env.get("LD_LIBRARY_PATH", "").split(":")
                 if path and os.path.isdir(path)]
    strict = [os.path.realpath(path) for path in [*map(str, private)] + ([str(repo)] if repo is not None else [])]
    secret = strict + [os.path.realpath(os.path.expanduser("~"))] + ([str(hub.parent)] if hub is not None else [])
    shown = shown_paths(python_paths() + libraries, secret, strict) + models + [str(workspace)]
    return SandboxSpec(workspace=workspace, out_dir=out_dir, command=command, env=sandbox_env(base_env, hub),
                       masks=hidden_paths(repo, [*private, *hugging_face_private()]), ro_binds=shown,
                       devices=gpu_devices(), limits=limits)


# ----- Backends: each turns a spec into the argv that starts it -----


def _limits_prefix(spec: SandboxSpec) -> list[str]:
    """rlimits, the job's control groups and a parent-death signal, set by a tiny stdlib script that then
    execs the real command."""
    settings = {"rlimits": spec.limits.rlimits(), "cgroup_procs": spec.cgroup_procs}
    return [sys.executable, "-I", "-S", str(INIT_SCRIPT), "limits", json.dumps(settings), "--"]


def _memory_prefix(spec: SandboxSpec) -> list[str]:
    """Without a control group of its own, a systemd user session can cap memory and tasks (a scope)."""
    if spec.cgroup_procs or not spec.use_systemd_scope:
        return []
    return ["systemd-run", "--user", "--scope", "--quiet", "--collect", "-p", f"MemoryMax={spec.limits.memory()}",
            "-p", f"TasksMax={spec.limits.processes}", "--"]


def bwrap_argv(spec: SandboxSpec) -> list[str]:
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-user", "--unshare-all", "--disable-userns",
            "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv", "--ro-bind", "/", "/",
            "--dev", "/dev", "--proc", "/proc"]
    for path in spec.masks:
        if os.path.isfile(path):
            argv += ["--ro-bind", "/dev/null", path]
            continue
        size = spec.limits.tmp_bytes if path == "/tmp" else 16 << 20
        argv += ["--size", str(size), "--tmpfs", path]
    argv += ["--dir", SANDBOX_HOME, "--size", str(spec.limits.shm_bytes), "--tmpfs", "/dev/shm"]
    for device in spec.devices:
        argv += ["--dev-bind", device, device]
    for path in spec.ro_binds:
        argv += ["--ro-bind", path, path]
    argv += ["--bind", str(spec.out_dir), str(spec.out_dir)]
    argv += [item for path in spec.masks if path != "/tmp" and os.path.isdir(path) for item in ("--remount-ro", path)]
    for name, value in spec.env.items():
        argv += ["--setenv", name, value]
    argv += ["--chdir", str(spec.workspace), "--", *spec.command]
    return _memory_prefix(spec) + _limits_prefix(spec) + argv


def unshare_argv(spec: SandboxSpec) -> list[str]:
    argv = [shutil.which("unshare") or "unshare", "--user", "--map-root-user", "--mount", "--pid", "--net",
            "--ipc", "--uts", "--fork", "--kill-child", "--", sys.executable, "-I", "-S", str(INIT_SCRIPT), "enter",
            spec.init_json()]
    return _memory_prefix(spec) + _limits_prefix(spec) + argv


def none_argv(spec: SandboxSpec) -> list[str]:
    return _limits_prefix(spec) + ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in spec.env.items()), *spec.command]


@dataclass(frozen=True)
class SandboxBackend:
    """One `--sandbox NAME`: the command line that runs a job in it, and what it needs installed."""

    argv: Callable[[SandboxSpec], list[str]]
    program: str | None  # the executable it needs (None: nothing to isolate with)
    install_hint: str = ""
    isolates: bool = True  # False: train.py runs with the user's powers (only with --no-sandbox)


# --sandbox NAME -> its backend, best first (auto takes the first that works); a new one is a function
# building its argv and one line here.
SANDBOXES: dict[str, SandboxBackend] = {
    "bwrap": SandboxBackend(bwrap_argv, "bwrap", "apt install bubblewrap"),
    "unshare": SandboxBackend(unshare_argv, "unshare", "util-linux"),
    "none": SandboxBackend(none_argv, None, isolates=False),
}


def launch_argv(backend: str, spec: SandboxSpec) -> list[str]:
    return SANDBOXES[backend].argv(spec)


# ----- Which backend works here -----


@functools.cache
def systemd_scope_works() -> bool:
    if not shutil.which("systemd-run"):
        return False
    probe = subprocess.run(["systemd-run", "--user", "--scope", "--quiet", "--collect", "true"],
                           capture_output=True, timeout=20, check=False)
    return probe.returncode == 0


@functools.cache
def probe(backend: str) -> str | None:
    """None when the backend can run a sandboxed command here, else why not (one line)."""
    entry = SANDBOXES[backend]
    if not entry.isolates:
        return None
    if entry.program and not shutil.which(entry.program):
        return f"{entry.program} is not installed ({entry.install_hint})"
    with tempfile.TemporaryDirectory(prefix="ner-autoresearch-probe-") as folder:
        workspace = Path(folder)
        (workspace / "out").mkdir()
        spec = make_spec(workspace, workspace / "out", [sys.executable, "-c", "open('out/ok', 'w').write('1')"],
                         dict(os.environ), repo=None, private=[])
        try:
            result = subprocess.run(launch_argv(backend, spec), capture_output=True, timeout=60, check=False,
                                    start_new_session=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{backend} failed to start ({exc})"
        if result.returncode != 0 or not (workspace / "out" / "ok").is_file():
            lines = result.stderr.decode(errors="replace").strip().splitlines()
            return f"{backend} does not work here ({lines[-1] if lines else f'exit code {result.returncode}'})"
    return None


def choose(requested: str, allow_none: bool) -> tuple[str, list[str]]:
    """The backend to use and why the better ones were passed over. requested: auto, bwrap, unshare or none."""
    if requested in SANDBOXES and not SANDBOXES[requested].isolates:
        if not allow_none:
            raise SandboxError(f"--sandbox {requested} is only allowed with --no-sandbox")
        return requested, []
    if requested in SANDBOXES and SANDBOXES[requested].isolates:
        why = probe(requested)
        if why:
            raise SandboxError(f"--sandbox {requested}: {why}")
        return requested, []
    reasons = []
    for backend in (name for name, entry in SANDBOXES.items() if entry.isolates):
        why = probe(backend)
        if why is None:
            return backend, reasons
        reasons.append(why)
    if allow_none:
        return "none", reasons
    raise SandboxError("no sandbox works on this machine (" + "; ".join(reasons) + "); install bubblewrap "
                       "(apt install bubblewrap), or run with --no-sandbox to run train.py UNSANDBOXED")
