"""Runs before train.py, with the standard library only (started as `python -I -S sandbox_init.py ...`).

    sandbox_init.py limits SPEC -- COMMAND...   set rlimits and a parent-death signal, then exec COMMAND
    sandbox_init.py enter SPEC                  inside `unshare`'s new namespaces: build the file system
                                                view, drop every capability, then run SPEC's command

SPEC is JSON (see research_loop/sandbox.py, `SandboxSpec.init_json`). `enter` does what bubblewrap does:
every mount read-only, tmpfs over the masked folders, the workspace bound back read-only and its out/ folder
writable, a fresh /proc and a minimal /dev, no capabilities left (so no mount can be undone; mounts inherited
into any later user namespace are locked by the kernel). Any failure exits 125 with a `sandbox:` line.
"""

import ctypes
import json
import os
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_NOATIME, MS_NODIRATIME = 32, 4096, 1024, 2048
MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 16384, 1 << 18, 1 << 21, 1 << 24
FLAG_OPTIONS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 24, 28, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SECURE_BITS_ALL_LOCKED = 0x2F  # NOROOT, NO_SETUID_FIXUP, KEEP_CAPS_LOCKED... and their locks
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SETUP_FAILED = 125
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
RLIMITS = {"nproc": "RLIMIT_NPROC", "fsize": "RLIMIT_FSIZE", "core": "RLIMIT_CORE", "nofile": "RLIMIT_NOFILE"}

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]


class SetupError(Exception):
    pass


def fail(message: str) -> None:
    os.write(2, f"sandbox: {message}\n".encode())
    os._exit(SETUP_FAILED)


def _errno_text() -> str:
    number = ctypes.get_errno()
    return f"{os.strerror(number)} (errno {number})"


def mount(source, target, fstype, flags, data=None) -> None:
    encode = (lambda value: value.encode() if isinstance(value, str) else value)
    if libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        raise SetupError(f"mount {fstype or 'bind'} {source or ''} on {target}: {_errno_text()}")


def prctl(option: int, arg: int = 0) -> None:
    if libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) != 0:
        raise SetupError(f"prctl {option}: {_errno_text()}")


# ----- limits (every backend) -----


# keyctl(2)'s system call number per architecture (asm-generic for the newer ones).
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "loongarch64": 219, "i386": 288, "i686": 288,
              "armv7l": 311, "ppc64le": 311, "s390x": 280}
KEYCTL_JOIN_SESSION_KEYRING = 1


def leave_session_keyring() -> None:
    """A new, empty session keyring: the keys the loop's session holds (a Kerberos ticket, a credential
    helper's secrets) are no longer possessed, so nothing started from here can read them. Namespaces do not
    do this, and neither does bwrap's --new-session. Where keyctl is not allowed at all (a container's
    seccomp profile), nobody here can read a key anyway."""
    number = SYS_KEYCTL.get(os.uname().machine)
    if number is not None:
        libc.syscall(ctypes.c_long(number), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), None)


def set_limits(spec: dict) -> None:
    import resource

    leave_session_keyring()
    for procs in spec.get("cgroup_procs") or []:
        with open(procs, "w") as file:  # the job's control group: pids.max, memory.max
            file.write(f"{os.getpid()}\n")
    for key, value in (spec.get("rlimits") or {}).items():
        which = getattr(resource, RLIMITS[key])
        hard = resource.getrlimit(which)[1]
        limit = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (limit, limit))
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the sandbox dies with whoever started it


# ----- enter (the unshare backend) -----


def mounts() -> list[tuple[str, int]]:
    """(mount point, flags to keep) of every mount, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as file:
        for line in file:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")
            flags = 0
            for option in fields[5].split(","):
                flags |= FLAG_OPTIONS.get(option, 0)
            found.append((point, flags))
    return found


def under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def make_everything_read_only() -> None:
    for point, flags in mounts():
        if under(point, "/proc") or under(point, "/dev"):
            continue  # replaced below by a fresh /proc and a minimal /dev
        try:
            mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
        except SetupError:
            if os.path.exists(point):
                raise
            # a mount point hidden by a later mount: covered by its parent's read-only copy


def bind(fd_path: str, target: str, writable: bool, is_dir: bool = True) -> None:
    if is_dir:
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(fd_path, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_REMOUNT | MS_BIND | (0 if writable else MS_RDONLY) | MS_NOSUID)


def minimal_dev(device_fds: dict[str, int], shm_size: int) -> None:
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
    for name, fd in device_fds.items():
        target = "/dev/" + name
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
        mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
    os.makedirs("/dev/shm")
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"size={shm_size},mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, "/dev/" + name)


def no_more_user_namespaces() -> None:
    """As bubblewrap's --disable-userns: train.py cannot make a namespace of its own (where it would hold
    every capability again); the limit is per user namespace."""
    try:
        with open("/proc/sys/user/max_user_namespaces", "w") as file:
            file.write("0\n")
    except OSError:
        pass  # an older kernel: the mounts stay locked in any namespace train.py makes


def drop_capabilities() -> None:
    prctl(PR_SET_SECUREBITS, SECURE_BITS_ALL_LOCKED)  # uid 0 gains nothing at exec
    with open("/proc/sys/kernel/cap_last_cap") as file:
        last = int(file.read())
    for cap in range(last + 1):
        prctl(PR_CAPBSET_DROP, cap)
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) != 0:
        raise SetupError(f"capset: {_errno_text()}")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def build_view(spec: dict) -> None:
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Open everything the view re-exposes now: the masks below hide the paths themselves.
    opened = {}
    for item in spec["ro_binds"] + spec["rw_binds"]:
        opened[item] = os.open(item, os.O_PATH | os.O_CLOEXEC)
    device_fds = {}
    for name in [*DEVICES, *spec.get("devices", [])]:
        path = name if name.startswith("/dev/") else "/dev/" + name
        if os.path.exists(path):
            device_fds[path.removeprefix("/dev/")] = os.open(path, os.O_PATH | os.O_CLOEXEC)
    make_everything_read_only()
    masked = []
    for folder in sorted(spec["masks"], key=len):
        if os.path.isdir(folder) and not os.path.islink(folder):
            size = spec["tmp_size"] if folder == "/tmp" else 16 << 20
            mount("tmpfs", folder, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode=0755")
            masked.append(folder)
        elif os.path.isfile(folder) and not os.path.islink(folder):
            mount(f"/proc/self/fd/{device_fds['null']}", folder, None, MS_BIND)
    os.makedirs(spec["home"], exist_ok=True)
    os.chmod("/tmp", 0o1777)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    minimal_dev(device_fds, spec["shm_size"])
    for item in spec["ro_binds"]:
        bind(f"/proc/self/fd/{opened[item]}", item, writable=False, is_dir=os.path.isdir(f"/proc/self/fd/{opened[item]}"))
    for item in spec["rw_binds"]:
        bind(f"/proc/self/fd/{opened[item]}", item, writable=True)
    for fd in opened.values():
        os.close(fd)
    for folder in masked:
        if folder != "/tmp":
            mount(None, folder, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def enter(spec: dict) -> None:
    try:
        build_view(spec)
        os.chdir(spec["cwd"])
        no_more_user_namespaces()
        drop_capabilities()
    except (SetupError, OSError) as exc:
        fail(str(exc))
    child = os.fork()
    if child == 0:
        try:
            os.execve(spec["command"][0], spec["command"], spec["env"])
        except OSError as exc:
            fail(f"cannot run {spec['command'][0]}: {exc}")
    # PID 1 of the namespace: pass termination on, reap orphans, exit with train.py's status; the kernel
    # then kills everything train.py left behind.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: os.kill(child, signum))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(SETUP_FAILED)
        except InterruptedError:
            continue
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) % 256 if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] not in ("limits", "enter"):
        fail("usage: sandbox_init.py limits SPEC -- COMMAND... | enter SPEC")
    try:
        spec = json.loads(argv[2])
    except json.JSONDecodeError as exc:
        fail(f"bad spec: {exc}")
    if argv[1] == "limits":
        if "--" not in argv:
            fail("limits: no command after --")
        command = argv[argv.index("--") + 1:]
        try:
            set_limits(spec)
        except (SetupError, OSError, ValueError) as exc:
            fail(f"limits: {exc}")
        try:
            os.execv(command[0], command)
        except OSError as exc:
            fail(f"cannot run {command[0]}: {exc}")
    enter(spec)


if __name__ == "__main__":
    main(sys.argv)
