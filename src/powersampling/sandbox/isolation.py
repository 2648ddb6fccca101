"""Run untrusted generated Python (HumanEval/MBPP grading) in an operating-system sandbox.

Isolation
    Every program runs in its own user, PID, network, mount, IPC and UTS namespaces, built by ``bwrap``
    (bubblewrap) when it is installed and works, else by util-linux ``unshare`` plus a small launcher
    (``_LAUNCHER``) that assembles the same view with ``mount(2)`` and ``pivot_root(2)``. Inside:

    * the filesystem is a read-only view of the system directories (``/usr``, ``/bin``, ``/lib*``, a few files of
      ``/etc``) and of the Python installation; everything else (``/home``, ``/root``, ``/run``, ``/var``,
      ``/tmp``, the project) is absent. The only writable place is a private, size-limited tmpfs at ``/tmp``
      (the working directory, ``HOME`` and ``TMPDIR``); ``/proc`` is the sandbox's own, ``/dev`` holds only
      ``null``/``zero``/``full``/``random``/``urandom`` and is read-only;
    * the network namespace is empty (its own loopback only), so the host's listeners, including those on
      127.0.0.1, are unreachable and a socket bound on 0.0.0.0 is invisible outside; unix sockets of the host
      are not in the filesystem view;
    * host processes are invisible and cannot be signalled (PID namespace);
    * the program holds no capabilities (bounding set emptied, ``no_new_privs``);
    * when the program's main process ends, or is killed at the timeout, the namespace's init dies and the
      kernel kills every process left in it; ``run_python`` returns only after that has happened (it waits for
      the sandbox's outer process, which waits for the init, which the kernel lets exit only once the namespace
      is empty). A fork/setsid/fork grandchild therefore never outlives the call;
    * resource limits, set by the wrapper on itself before any candidate code runs (inherited by its
      children): ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE`` (output), no core files; plus the
      wall-clock timeout enforced from outside.

    :func:`isolation_backend` probes once per process (cached) whether a mechanism really works by running a
    trivial program through it. When none does, :func:`run_python` raises :class:`SandboxUnavailableError`
    unless ``unsafe=True``, which permits running without isolation (a plain child process with the rlimits
    only: processes that start their own session can outlive it, and the program can read and write anything the
    user can). ``unsafe=True`` does not switch isolation off where it works;
    ``backend="none"`` does (used for overhead measurements).

Verdict
    A program passes only if its whole text ran to the end without an exception. The wrapper that runs it
    (``_WRAPPER``) receives a fresh random token through a pipe, reads it, and closes the pipe before compiling
    the program, which it reads from stdin (then stdin becomes ``/dev/null``). The token is in no file, argument,
    environment variable or open file descriptor the program can reach. Only after ``exec`` of the program
    returns normally does the wrapper write the token to the verdict descriptor and exit 0; the parent counts a
    pass only if that descriptor's content equals the token exactly and the exit status is 0. So printing
    things, reading its own source, ``sys.exit(0)``, ``os._exit(0)``, writing to every descriptor, or exiting
    from a child process does not pass.

    Remaining limit, stated plainly: the candidate and the test code run in one interpreter, so a candidate that
    deliberately introspects the interpreter (``sys._getframe``, ``gc``, ``ctypes``, ``/proc/self/mem``) can find
    the token in the wrapper's memory, just as it could rewrite the test functions or return objects whose
    ``__eq__`` is always true. The design stops forging by accident or by simple tricks, not a program written
    to attack its own grader; for that the tests would have to run in a separate process.

Not covered (documented in docs/evaluation.md): no seccomp filter, so the kernel's whole system-call surface is
reachable; no cgroup, so the number of processes (a fork bomb, bounded only by the timeout), kernel memory and
CPU share are not capped; read-only files of the visible system directories can be read.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import PowerSamplingError

PASSED, FAILED, TIMEOUT, MEMORY, OUTPUT = "passed", "failed", "timeout", "memory", "output_limit"
BACKENDS = ("bwrap", "unshare")  # in order of preference
NO_ISOLATION = "none"

TMPFS_BYTES = 64 * 2**20  # size of the private writable /tmp
_WRAPPER_MEMORY, _WRAPPER_OUTPUT = 3, 4  # wrapper exit codes: 0 ran to the end, 1 an exception, or these
_INNER_HOME = "/tmp"


class SandboxUnavailableError(PowerSamplingError):
    """No operating-system isolation works here and running without it was not allowed."""


@dataclass(frozen=True)
class ExecResult:
    status: str  # passed | failed | timeout | memory | output_limit
    returncode: int | None  # negative: killed by that signal
    wall_s: float
    stderr_tail: str = ""
    isolation: str = ""  # bwrap | unshare | none

    @property
    def passed(self) -> bool:
        return self.status == PASSED


# Runs the program; argv: token_fd verdict_fd memory_bytes cpu_s fsize_bytes. Kept small: everything it holds
# is reachable by the candidate through interpreter introspection anyway (see the module docstring).
_WRAPPER = r"""
import os, sys
def _main():
    import errno, linecache, resource
    token_fd, verdict_fd, memory, cpu, fsize = map(int, sys.argv[1:6])
    for limit, soft, hard in ((resource.RLIMIT_AS, memory, memory), (resource.RLIMIT_CPU, cpu, cpu + 1),
                              (resource.RLIMIT_FSIZE, fsize, fsize), (resource.RLIMIT_CORE, 0, 0)):
        resource.setrlimit(limit, (soft, hard))
    token = b""
    while True:
        chunk = os.read(token_fd, 256)
        if not chunk:
            break
        token += chunk
    os.close(token_fd)
    source = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    text = source.decode("utf-8", "replace")
    linecache.cache["program.py"] = (len(text), None, text.splitlines(True), "program.py")
    sys.argv = ["program.py"]
    namespace = {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__}
    try:
        exec(compile(source, "program.py", "exec"), namespace)
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException as exc:
        code = 1
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
            code = 3
        elif isinstance(exc, OSError) and exc.errno == errno.EFBIG:
            code = 4
        try:
            if isinstance(exc, SystemExit):
                print(f"program ended early: SystemExit({exc.code!r})", file=sys.stderr)
            else:  # without the wrapper's own frame
                import traceback
                traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code)
    os.write(verdict_fd, token)
    os._exit(0)
_main()
"""

# unshare backend: runs as PID 1 of fresh user (uid 0 mapped to the caller), mount, PID, network, IPC and UTS
# namespaces. It reports its host PID, builds the read-only root on a tmpfs, pivots into it, drops every
# capability, then forks the wrapper and stays as the namespace's init until the wrapper ends (or the deadline
# passes, or the parent's lifeline closes); its exit kills whatever is left in the namespace.
_LAUNCHER = r"""
import ctypes, json, os, re, select, signal, sys, time
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_NOATIME, MS_NODIRATIME = 1, 2, 4, 8, 32, 1024, 2048
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 4096, 8192, 16384, 1 << 18, 1 << 21, 1 << 24

def fail(what):
    err = ctypes.get_errno()
    sys.stderr.write(f"sandbox setup: {what}: {os.strerror(err)}\n")
    os._exit(125)

def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)) != 0:
        fail(f"mount {src} on {dst}")

def readonly_tree(top):
    opts = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
            "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if point == top or point.startswith(top + "/"):
                flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV
                for opt in fields[5].split(","):
                    flags |= opts.get(opt, 0)
                mount(None, point, None, flags)

os.write(cfg["info_fd"], os.readlink("/proc/self").encode())  # the host's procfs is still mounted here
os.close(cfg["info_fd"])
os.set_inheritable(cfg["lifeline_fd"], False)
mount(None, "/", None, MS_REC | MS_PRIVATE)
root = cfg["mountpoint"]
mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=4m")
os.makedirs(root + "/tmp")
mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={cfg['tmpfs_bytes']},nr_inodes=4096")
for path in cfg["paths"]:
    dst = root + path
    if os.path.islink(path) and path in cfg["symlinks"]:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.symlink(os.readlink(path), dst)
        continue
    if os.path.isdir(path):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    mount(path, dst, None, MS_BIND | MS_REC)
    readonly_tree(dst)
os.makedirs(root + "/proc")
mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
for sub in cfg["proc_readonly"]:  # global kernel knobs, writable by the host's uid 0 even without capabilities
    if os.path.exists(f"{root}/proc/{sub}"):
        mount(f"{root}/proc/{sub}", f"{root}/proc/{sub}", None, MS_BIND | MS_REC)
        readonly_tree(f"{root}/proc/{sub}")
os.makedirs(root + "/dev")
mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
for node in ("null", "zero", "full", "random", "urandom"):
    open(f"{root}/dev/{node}", "w").close()
    mount(f"/dev/{node}", f"{root}/dev/{node}", None, MS_BIND)
for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                     ("stderr", "/proc/self/fd/2")):
    os.symlink(target, f"{root}/dev/{name}")
os.makedirs(root + "/dev/shm")
mount(None, root + "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)
mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
os.chdir(root)
number = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine)
if number is not None:  # pivot_root(".", "."), then detach the old root stacked on top of the new one
    if libc.syscall(number, b".", b".") != 0:
        fail("pivot_root")
    if libc.umount2(b".", 2) != 0:
        fail("umount old root")
else:
    mount(root, "/", None, MS_MOVE)
    os.chroot(".")
os.chdir("/tmp")
last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
for cap in range(last_cap + 1):
    if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        fail("drop capability")
libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    fail("no_new_privs")
header = (ctypes.c_uint32 * 2)(0x20080522, 0)
if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:
    fail("capset")
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *_: None)
signal.signal(signal.SIGINT, signal.SIG_DFL)  # as the namespace's init it then ignores SIGINT from inside
child = os.fork()
if child == 0:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
deadline = time.monotonic() + cfg["deadline_s"]
while True:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = 0
        if pid == 0:
            break
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    left = deadline - time.monotonic()
    if left <= 0:
        os._exit(137)
    ready, _, _ = select.select([cfg["lifeline_fd"], wake_r], [], [], left)
    if cfg["lifeline_fd"] in ready:  # the parent is gone
        os._exit(137)
    if wake_r in ready:
        os.read(wake_r, 4096)
"""


def _inner_env(home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


# made read-only inside the sandbox's /proc: when the caller is the host's root, the sandboxed process is uid 0
# of the host (without capabilities), and plain file permissions would let it write sysctls (kernel.core_pattern
# runs a program as root on the host) or /proc/sysrq-trigger
_PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs", "driver", "acpi", "tty", "scsi", "asound", "pressure")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "passwd",
    "group",
    "nsswitch.conf",
    "alternatives",
    "os-release",
    "mime.types",
)


@functools.lru_cache(maxsize=1)
def _visible_paths() -> tuple[tuple[str, ...], frozenset[str]]:
    """(paths bound read-only into the sandbox, the subset recreated as symlinks), parents before children."""
    paths, symlinks = [], set()
    for d in _SYSTEM_DIRS:
        if os.path.islink(d) and not os.path.isabs(os.readlink(d)):
            paths.append(d)
            symlinks.add(d)
        elif os.path.isdir(d):
            paths.append(d)
    paths += [f"/etc/{name}" for name in _ETC_FILES if os.path.exists(f"/etc/{name}")]
    exe = os.path.realpath(sys.executable)
    for p in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.dirname(exe)), os.path.dirname(exe)):
        for q in {os.path.abspath(p), os.path.realpath(p)}:
            if os.path.isdir(q):
                paths.append(q)
    kept: list[str] = []
    for p in sorted(set(paths), key=lambda s: (s.count("/"), s)):
        covered = any(p == k or p.startswith(k.rstrip("/") + "/") for k in kept if k not in symlinks)
        if not covered:
            kept.append(p)
    return tuple(kept), frozenset(symlinks)


@functools.cache
def _bwrap_options(exe: str) -> frozenset[str]:
    """The options this bwrap knows (--disable-userns and --size are recent: 0.8 and 0.7)."""
    try:
        text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    return frozenset(word for word in text.split() if word.startswith("--"))


def _bwrap_argv(exe: str, info_fd: int, inner: list[str]) -> list[str]:
    paths, symlinks = _visible_paths()
    known = _bwrap_options(exe)
    argv = [exe, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if "--disable-userns" in known:  # no nested user namespaces (they would regain capabilities inside)
        argv += ["--disable-userns"]
    if "--size" in known:  # else the private /tmp is only bounded by RLIMIT_FSIZE per file
        argv += ["--size", str(TMPFS_BYTES)]
    argv += ["--tmpfs", _INNER_HOME]
    for p in paths:
        if p in symlinks:
            argv += ["--symlink", os.readlink(p), p]
        else:
            argv += ["--ro-bind", p, p]
    argv += ["--proc", "/proc"]
    for sub in _PROC_READONLY:
        argv += ["--ro-bind-try", f"/proc/{sub}", f"/proc/{sub}"]
    argv += ["--dev", "/dev", "--remount-ro", "/dev", "--chdir", _INNER_HOME, "--remount-ro", "/", "--clearenv"]
    for k, v in _inner_env(_INNER_HOME).items():
        argv += ["--setenv", k, v]
    return argv + ["--info-fd", str(info_fd), "--", *inner]


def _unshare_argv(exe: str, info_fd: int, lifeline_fd: int, inner: list[str], deadline_s: float) -> list[str]:
    paths, symlinks = _visible_paths()
    mountpoint = next(
        (
            m
            for m in ("/mnt", "/media", "/srv", "/opt", "/var/tmp", "/tmp")
            if os.path.isdir(m) and not os.path.islink(m) and not any(p == m or p.startswith(m + "/") for p in paths)
        ),
        "/tmp",
    )
    cfg = {
        "info_fd": info_fd,
        "lifeline_fd": lifeline_fd,
        "mountpoint": mountpoint,
        "paths": list(paths),
        "symlinks": sorted(symlinks),
        "tmpfs_bytes": TMPFS_BYTES,
        "argv": inner,
        "env": _inner_env(_INNER_HOME),
        "deadline_s": deadline_s,
        "proc_readonly": list(_PROC_READONLY),
    }
    return [
        exe,
        "--user",
        "--map-root-user",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--net",
        "--ipc",
        "--uts",
        "--cgroup",
        "--",
        sys.executable,
        "-I",
        "-B",
        "-S",
        "-c",
        _LAUNCHER,
        json.dumps(cfg),
    ]


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _readable(fd: int, timeout_s: float) -> bool:
    """poll(), not select(): descriptor numbers in a big process (torch) can exceed select's limit of 1024."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout_s * 1000) + 1)))


def _read_pid(fd: int, wait_s: float) -> int | None:
    """The host PID that bwrap (--info-fd) or the launcher writes once the namespaces exist; None if it never
    comes (the sandbox failed to start)."""
    data, deadline = b"", time.monotonic() + wait_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not _readable(fd, left):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    text = data.decode("utf-8", "replace").strip()
    try:
        return int(json.loads(text)["child-pid"]) if text.startswith("{") else int(text)
    except (ValueError, KeyError, TypeError):
        return None


def _execute(program: str, *, timeout_s: float, memory_mb: int, output_kb: int, backend: str) -> ExecResult:
    exe = None
    if backend != NO_ISOLATION:
        exe = shutil.which(backend)
        if exe is None:
            raise SandboxUnavailableError(f"{backend} is not on PATH")
    token = secrets.token_hex(16).encode()
    with tempfile.TemporaryDirectory(prefix="ps-sandbox-") as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "program.py").write_text(program, encoding="utf-8")
        limits = (memory_mb * 2**20, max(1, int(timeout_s) + 1), output_kb * 1024)
        start = time.monotonic()
        proc, info_r, life_w = _launch(exe, backend, tmpdir, token, limits, timeout_s)
        timed_out = _supervise(proc, info_r, life_w, timeout_s, start)
        wall = time.monotonic() - start
        stderr_tail = _tail(tmpdir / "stderr")
        verdict = (tmpdir / "verdict").read_bytes()[:4096]
    code = proc.returncode
    if exe is not None and code is not None and 128 < code < 160:
        code = -(code - 128)  # bwrap and the launcher report a signal death as 128 + signal
    return ExecResult(_status(code, timed_out, verdict == token, stderr_tail), code, wall, stderr_tail[-1000:], backend)


def _launch(
    exe: str | None, backend: str, tmpdir: Path, token: bytes, limits: tuple[int, int, int], timeout_s: float
) -> tuple[subprocess.Popen, int, int]:
    """Start ``tmpdir/program.py`` under the wrapper, in the sandbox unless ``exe`` is None. Returns the process,
    the read end of the sandbox's info pipe and the write end of the launcher's lifeline (-1 where unused). The
    wrapper gets the pass token on a pipe and the verdict file as a descriptor; the sandbox's ends are closed here
    once it has started."""
    child_fds: list[int] = []
    info_r = life_w = -1
    try:
        token_r, token_w = os.pipe()
        child_fds.append(token_r)
        os.write(token_w, token)
        os.close(token_w)
        verdict_fd = os.open(tmpdir / "verdict", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        child_fds.append(verdict_fd)
        inner = [sys.executable, "-I", "-B", "-c", _WRAPPER, str(token_r), str(verdict_fd), *map(str, limits)]
        if exe is None:
            workdir = tmpdir / "work"
            workdir.mkdir()
            argv, env, cwd = inner, _inner_env(str(workdir)), str(workdir)
        else:
            info_r, info_w = os.pipe()
            child_fds.append(info_w)
            if backend == "bwrap":
                argv = _bwrap_argv(exe, info_w, inner)
            else:
                life_r, life_w = os.pipe()
                child_fds.append(life_r)
                argv = _unshare_argv(exe, info_w, life_r, inner, timeout_s + 5)
            env, cwd = _inner_env(_INNER_HOME), "/"
        with (
            open(tmpdir / "program.py", "rb") as stdin,
            open(tmpdir / "stdout", "wb") as out,
            open(tmpdir / "stderr", "wb") as err,
        ):
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=out,
                stderr=err,
                pass_fds=child_fds,
                start_new_session=True,
            )
    except BaseException:
        for fd in (info_r, life_w):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
    return proc, info_r, life_w


def _supervise(proc: subprocess.Popen, info_r: int, life_w: int, timeout_s: float, start: float) -> bool:
    """Wait for the program until the timeout, then make sure nothing of it is left; True if it timed out."""
    timed_out, init_fd, init_pid = False, None, None
    try:
        if info_r >= 0:
            init_pid = _read_pid(info_r, max(1.0, timeout_s))
            if init_pid is not None:
                try:  # a pidfd cannot hit a recycled PID
                    init_fd = os.pidfd_open(init_pid)
                except ProcessLookupError:
                    init_pid = None
                except (OSError, AttributeError):  # no pidfd support: signal by PID while the sandbox runs
                    pass
        timed_out = not _wait(proc, max(0.0, timeout_s - (time.monotonic() - start)))
    finally:
        _terminate(proc, init_fd, init_pid, life_w)
        for fd in (info_r, -1 if init_fd is None else init_fd):
            if fd >= 0:
                os.close(fd)
    return timed_out


def _wait(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the child to exit; False at the timeout. A pidfd wakes up at the exit itself, where
    ``Popen.wait(timeout)`` polls with sleeps of up to 50 ms (a third of a trivial program's run time)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (OSError, AttributeError):
        pidfd = None
    if pidfd is not None:
        try:
            if not _readable(pidfd, timeout_s):
                return False
        finally:
            os.close(pidfd)
    try:
        proc.wait(timeout=None if pidfd is not None else timeout_s)
    except subprocess.TimeoutExpired:
        return False
    return True


def _terminate(proc: subprocess.Popen, init_fd: int | None, init_pid: int | None, lifeline: int) -> None:
    """Kill the sandbox: its namespace init first (the kernel then kills everything in the namespace, and the
    outer process exits only once that is done), then the outer process group; reap. With the unshare backend
    the init is the launcher, which exits by itself when its lifeline closes (killing it makes unshare print an
    error); a signal from inside the sandbox cannot reach it (it has no handlers, and it is the namespace's init).
    """
    if lifeline >= 0:
        os.close(lifeline)
        if proc.poll() is None and init_pid is not None:
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
    if proc.poll() is None and init_pid is not None:
        try:
            if init_fd is not None:
                signal.pidfd_send_signal(init_fd, signal.SIGKILL)
            else:
                os.kill(init_pid, signal.SIGKILL)
        except OSError:  # already gone
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - the init was sent SIGKILL
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
    if init_fd is not None:
        _await_namespace_end(init_fd)


def _await_namespace_end(init_fd: int) -> None:
    """Return only once the namespace's init is gone. bwrap's outer process exits as soon as its init reports the
    program's exit status, which is before the kernel has killed the rest of the PID namespace: a grandchild that
    left the session could outlive the run by a few milliseconds (or much longer on a loaded machine). The init's
    pidfd becomes readable only after the kernel has killed and reaped every process in its namespace."""
    if _readable(init_fd, 2.0):
        return
    try:
        signal.pidfd_send_signal(init_fd, signal.SIGKILL)
    except OSError:  # already gone
        return
    _readable(init_fd, 5.0)


def _status(code: int | None, timed_out: bool, token_seen: bool, stderr_tail: str) -> str:
    if timed_out or code == -signal.SIGXCPU:
        return TIMEOUT
    if code == 0 and token_seen:
        return PASSED
    if code in (_WRAPPER_OUTPUT, -signal.SIGXFSZ) or "File too large" in stderr_tail[-300:]:
        return OUTPUT
    if code == _WRAPPER_MEMORY or code in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT, -signal.SIGKILL):
        # allocation failures under RLIMIT_AS: MemoryError / ENOMEM in the wrapper, or a crash in a C extension
        return MEMORY
    last = stderr_tail.strip().splitlines()[-1:] or [""]
    if "MemoryError" in last[0] or "Cannot allocate memory" in last[0]:  # e.g. in a child process
        return MEMORY
    return FAILED


_probe_failures: dict[str, str] = {}


@functools.cache
def backend_works(backend: str) -> bool:
    """Whether ``backend`` ("bwrap" or "unshare") is installed and really isolates here: a trivial program is run
    through it once per process and must pass. Why it did not work is kept for the refusal message."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sandbox backend {backend!r}; expected one of {BACKENDS}")
    if shutil.which(backend) is None:
        _probe_failures[backend] = "not installed"
        return False
    try:
        result = _execute("pass\n", timeout_s=20.0, memory_mb=512, output_kb=64, backend=backend)
    except (OSError, SandboxUnavailableError) as exc:
        _probe_failures[backend] = str(exc)
        return False
    if not result.passed:
        why = result.stderr_tail.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        _probe_failures[backend] = f"{result.status}: {why[0][:200]}"
        return False
    return True


def isolation_backend() -> str | None:
    """The sandbox used for generated code: "bwrap" if bubblewrap works here, else "unshare" if util-linux
    unshare with unprivileged user namespaces works, else None. Probed once per process."""
    return next((b for b in BACKENDS if backend_works(b)), None)


def _unavailable_message() -> str:
    why = "; ".join(f"{b}: {_probe_failures.get(b, 'not tried')}" for b in BACKENDS)
    return (
        f"no OS isolation for generated code ({why}). Install bubblewrap or allow unprivileged user "
        "namespaces, or pass --unsafe-exec to run generated code without isolation (rlimits only)."
    )


def require_isolation(unsafe: bool = False) -> str:
    """Check up front that generated code can be run: the backend that will be used ("bwrap", "unshare", or
    "none" when nothing isolates and ``unsafe`` allows that). Raises SandboxUnavailableError otherwise."""
    backend = isolation_backend()
    if backend is not None:
        return backend
    if unsafe:
        return NO_ISOLATION
    raise SandboxUnavailableError(_unavailable_message())


def run_python(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    output_kb: int = 1024,
    unsafe: bool = False,
    backend: str | None = None,
) -> ExecResult:
    """Execute ``program`` as ``__main__`` in the sandbox; passed means its whole text ran without an exception
    within the limits (see the module docstring for how that is established).

    ``backend``: None picks the best working isolation (refusing with SandboxUnavailableError when there is
    none, unless ``unsafe``); "bwrap" or "unshare" insists on that one; "none" runs without isolation.
    """
    if backend is None:
        backend = require_isolation(unsafe)
    elif backend != NO_ISOLATION and not backend_works(backend):
        raise SandboxUnavailableError(
            f"sandbox backend {backend} does not work here: {_probe_failures.get(backend, 'unknown reason')}"
        )
    return _execute(program, timeout_s=timeout_s, memory_mb=memory_mb, output_kb=output_kb, backend=backend)
