"""Hostile programs that try to escape the code sandbox, each judged by an observation made outside it.

``run_escape_probes()`` runs them all through :func:`powersampling.sandbox.run_python` and returns one
``ProbeResult(name, blocked, detail)`` per probe, so a benchmark or a user can report "N of M escapes blocked" on
their own machine. The test suite runs every probe for every backend that works here.

A probe is: a name, what it tries, ``program(ctx) -> str`` (the hostile program; ``ctx`` carries the scratch
directory and the fixtures the probe asked for: a TCP listener on the host's 127.0.0.1, a unix-socket listener,
a free port, a victim process), and ``check(result, ctx) -> str | None``, which looks at the host after the run and
says how the program escaped, or None when it did not. Checks also undo what an escape did (remove a file, kill
a leftover process, restore a sysctl), so a probe run without isolation (``backend="none"``) leaves no trace.
Nothing here harms the host if it does escape: files go to the scratch directory or are removed again, the only
process killed is the probe's own victim, and the one kernel setting touched is put back.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .isolation import ExecResult, run_python

_SYSCTL = "/proc/sys/kernel/printk_ratelimit"  # global, harmless to change for a moment, restored by the check


@dataclass
class ProbeContext:
    scratch: Path  # a host directory the sandbox must not see
    marker: str  # a random string unique to this run
    port: int | None = None  # a TCP port: a listener on the host (tcp) or a free one (free_port)
    unix_path: Path | None = None
    victim: subprocess.Popen | None = None
    connections: list[bytes] = field(default_factory=list)  # what the host listeners received
    state: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    name: str
    tries: str
    program: Callable[[ProbeContext], str]
    check: Callable[[ExecResult, ProbeContext], str | None]
    needs: tuple[str, ...] = ()  # fixtures: "tcp", "unix", "free_port", "victim"
    timeout_s: float = 5.0


@dataclass(frozen=True)
class ProbeResult:
    name: str
    blocked: bool
    detail: str


def _stdlib_dir() -> str:
    return os.path.dirname(os.__file__)  # visible read-only inside the sandbox, at the same path


# the programs


def _write_host_path(ctx: ProbeContext) -> str:
    return f"open({str(ctx.scratch / 'escaped.txt')!r}, 'w').write('escaped')\n"


def _check_host_path(result: ExecResult, ctx: ProbeContext) -> str | None:
    return "created a file in a host directory" if (ctx.scratch / "escaped.txt").exists() else None


def _write_system_dir(ctx: ProbeContext) -> str:
    target = os.path.join(_stdlib_dir(), f"{ctx.marker}.txt")
    return (
        "import os\n"
        f"target = {target!r}\n"
        "for attempt in (lambda: open(target, 'w').write('x'), lambda: os.mkdir(target + '.d'),\n"
        "                lambda: os.symlink('/etc/passwd', target + '.l')):\n"
        "    try:\n"
        "        attempt()\n"
        "    except OSError:\n"
        "        pass\n"
    )


def _remount_writable(ctx: ProbeContext) -> str:
    target = _stdlib_dir()
    path = os.path.join(target, f"{ctx.marker}.txt")
    return (
        "import ctypes, os, subprocess\n"
        f"target, path = {target!r}, {path!r}\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for point in (target, '/', '/usr'):\n"
        "    libc.mount(None, point.encode(), None, 32 | 4096, None)  # MS_REMOUNT | MS_BIND, without MS_RDONLY\n"
        "    subprocess.run(['mount', '-o', 'remount,rw', point], capture_output=True)\n"
        "shell = f'mount -o remount,bind,rw {target} {target} || mount --bind {target} {target}; echo x > {path}'\n"
        "subprocess.run(['unshare', '-Urm', 'sh', '-c', shell], capture_output=True)  # a nested user namespace\n"
        "try:\n"
        "    open(path, 'w').write('x')\n"
        "except OSError:\n"
        "    pass\n"
    )


def _check_system_dir(result: ExecResult, ctx: ProbeContext) -> str | None:
    base = os.path.join(_stdlib_dir(), ctx.marker)
    found = [p for p in (base + ".txt", base + ".txt.d", base + ".txt.l") if os.path.lexists(p)]
    for p in found:
        if os.path.isdir(p) and not os.path.islink(p):
            os.rmdir(p)
        else:
            os.unlink(p)
    return f"wrote into the system's Python directory: {found}" if found else None


def _read_host_file(ctx: ProbeContext) -> str:
    secret = ctx.scratch / "secret.txt"
    secret.write_text(ctx.marker)
    return f"import sys\nprint(open({str(secret)!r}).read(), file=sys.stderr)\n"


def _check_read_host_file(result: ExecResult, ctx: ProbeContext) -> str | None:
    return "read a file in a host directory" if ctx.marker in result.stderr_tail else None


def _unlink_victim(ctx: ProbeContext) -> str:
    victim = ctx.scratch / "victim.txt"
    victim.write_text("keep me")
    return (
        "import os, posix, shutil\n"
        f"victim = {str(victim)!r}\n"
        "for attempt in (posix.unlink, os.remove, lambda p: os.rename(p, p + '.moved'),\n"
        "                lambda p: shutil.rmtree(os.path.dirname(p))):\n"
        "    try:\n"
        "        attempt(victim)\n"
        "    except OSError:\n"
        "        pass\n"
    )


def _check_unlink_victim(result: ExecResult, ctx: ProbeContext) -> str | None:
    victim = ctx.scratch / "victim.txt"
    return None if victim.exists() and victim.read_text() == "keep me" else "deleted or moved a host file"


def _tcp_connect(ctx: ProbeContext) -> str:
    return (
        "import socket\n"
        "for host in ('127.0.0.1', 'localhost', '::1'):\n"
        "    try:\n"
        f"        with socket.create_connection((host, {ctx.port}), timeout=1) as s:\n"
        f"            s.sendall({ctx.marker.encode()!r})\n"
        "    except OSError:\n"
        "        pass\n"
    )


def _check_connections(result: ExecResult, ctx: ProbeContext) -> str | None:
    return f"reached a host listener ({len(ctx.connections)} connection(s))" if ctx.connections else None


def _bind_any(ctx: ProbeContext) -> str:
    return (
        "import socket, time\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {ctx.port}))\n"
        "s.listen(8)\n"
        "s.settimeout(0.1)\n"
        "deadline = time.monotonic() + 1.0\n"
        "while time.monotonic() < deadline:\n"
        "    try:\n"
        "        s.accept()[0].close()\n"
        "    except OSError:\n"
        "        pass\n"
    )


def _check_bind_any(result: ExecResult, ctx: ProbeContext) -> str | None:
    reached = ctx.state.get("reached", 0)
    return f"a port bound inside was reachable from the host ({reached} connection(s))" if reached else None


def _unix_connect(ctx: ProbeContext) -> str:
    return (
        "import socket\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        f"    s.connect({str(ctx.unix_path)!r})\n"
        f"    s.sendall({ctx.marker.encode()!r})\n"
        "except OSError:\n"
        "    pass\n"
    )


def _fork_setsid_fork(ctx: ProbeContext) -> str:
    # the grandchild becomes a `sleep` whose argv[0] is the marker, so it can be found in the host's process table
    return (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', [{ctx.marker!r}, '30'])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "def running():\n"  # end only once the grandchild has become the marked sleep
        "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "        try:\n"
        f"            if open(f'/proc/{{pid}}/cmdline', 'rb').read().startswith({ctx.marker.encode()!r}):\n"
        "                return True\n"
        "        except OSError:\n"
        "            pass\n"
        "deadline = time.monotonic() + 2\n"
        "while not running() and time.monotonic() < deadline:\n"
        "    time.sleep(0.01)\n"
    )


def _processes_with_marker(marker: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv0 = fh.read().split(b"\0")[0]
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv0 == marker.encode() and state != "Z":
            pids.append(int(entry))
    return pids


def _check_leftover(result: ExecResult, ctx: ProbeContext) -> str | None:
    pids = _processes_with_marker(ctx.marker)  # at once: nothing may outlive run_python
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return f"a grandchild outlived the run (pids {pids})" if pids else None


def _posix_spawn(ctx: ProbeContext) -> str:
    return (
        "import os\n"
        f"path = {str(ctx.scratch / 'spawned.txt')!r}\n"
        "for spawn in (os.posix_spawn, os.posix_spawnp):\n"
        "    try:\n"
        "        pid = spawn('/usr/bin/touch' if spawn is os.posix_spawn else 'touch', ['touch', path], {})\n"
        "        os.waitpid(pid, 0)\n"
        "    except OSError:\n"
        "        pass\n"
        "os.system(f'touch {path}')\n"
    )


def _check_spawned(result: ExecResult, ctx: ProbeContext) -> str | None:
    return "a spawned program wrote a host file" if (ctx.scratch / "spawned.txt").exists() else None


def _kill_victim(ctx: ProbeContext) -> str:
    pid = ctx.victim.pid
    return (
        "import os, posix, signal\n"
        "for kill, sig in ((posix.kill, signal.SIGKILL), (os.kill, signal.SIGTERM)):\n"
        "    try:\n"
        f"        kill({pid}, sig)\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n"
        f"    os.killpg({pid}, signal.SIGKILL)\n"
        "except OSError:\n"
        "    pass\n"
    )


def _check_victim(result: ExecResult, ctx: ProbeContext) -> str | None:
    return "killed a host process" if ctx.victim.poll() is not None else None


def _forge_verdict(ctx: ProbeContext) -> str:
    # everything a program can read without introspecting its own interpreter: its source, argv, environment,
    # every open descriptor (also reopened through /proc/self/fd), the working directory; every 32-hex-digit
    # string found is printed and written to every descriptor, then the program exits with status 0
    return (
        "import os, re, sys\n"
        "found = set()\n"
        "def scan(data):\n"
        "    found.update(re.findall(rb'[0-9a-f]{32}', data))\n"
        "for path in ['/proc/self/cmdline', '/proc/self/environ', 'program.py', sys.argv[0]] + os.listdir('.'):\n"
        "    try:\n"
        "        scan(open(path, 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
        "for fd in range(256):\n"
        "    for read in (lambda: os.pread(fd, 1 << 16, 0), lambda: os.read(fd, 1 << 16),\n"
        "                 lambda: open(f'/proc/self/fd/{fd}', 'rb').read(1 << 16)):\n"
        "        try:\n"
        "            scan(read())\n"
        "        except OSError:\n"
        "            pass\n"
        "scan(repr(dict(os.environ)).encode())\n"
        "for token in found:\n"
        "    print(token.decode(), flush=True)\n"
        "    for fd in range(1, 256):\n"
        "        try:\n"
        "            os.write(fd, token)\n"
        "        except OSError:\n"
        "            pass\n"
        "os._exit(0)\n"
    )


def _check_not_passed(result: ExecResult, ctx: ProbeContext) -> str | None:
    return "counted as passed without running to its end" if result.passed else None


def _sysctl_write(ctx: ProbeContext) -> str:
    ctx.state["sysctl"] = Path(_SYSCTL).read_text() if os.path.exists(_SYSCTL) else None
    new = str(int(ctx.state["sysctl"] or "5") + 1)
    return (
        "import subprocess\n"
        "try:\n"
        f"    open({_SYSCTL!r}, 'w').write({new!r})\n"
        "except OSError:\n"
        "    pass\n"
        f"shell = 'echo {new} > {_SYSCTL}'\n"
        "for flags in (['-Ur'], ['-Urmpf', '--mount-proc']):  # nested user (and PID) namespaces\n"
        "    subprocess.run(['unshare', *flags, 'sh', '-c', shell], capture_output=True)\n"
    )


def _check_sysctl(result: ExecResult, ctx: ProbeContext) -> str | None:
    old = ctx.state.get("sysctl")
    if old is None:
        return None
    now = Path(_SYSCTL).read_text()
    if now == old:
        return None
    Path(_SYSCTL).write_text(old)
    return f"changed a kernel setting ({_SYSCTL}: {old.strip()} -> {now.strip()}; restored)"


PROBES: tuple[Probe, ...] = (
    Probe("write_host_path", "create a file in a host directory", _write_host_path, _check_host_path),
    Probe(
        "write_system_dir",
        "create a file, directory or symlink in the Python installation (visible inside)",
        _write_system_dir,
        _check_system_dir,
    ),
    Probe(
        "remount_writable",
        "remount the read-only system writable (directly, with mount(8), in a nested user namespace) and write into it",
        _remount_writable,
        _check_system_dir,
    ),
    Probe("read_host_file", "read a file in a host directory", _read_host_file, _check_read_host_file),
    Probe(
        "unlink_host_file",
        "delete or rename a host file with posix.unlink, os.remove, os.rename, shutil.rmtree",
        _unlink_victim,
        _check_unlink_victim,
    ),
    Probe(
        "tcp_connect",
        "connect to a listener on the host's 127.0.0.1 and send data",
        _tcp_connect,
        _check_connections,
        needs=("tcp",),
    ),
    Probe(
        "bind_any",
        "bind 0.0.0.0 and accept connections from the host",
        _bind_any,
        _check_bind_any,
        needs=("free_port",),
    ),
    Probe(
        "unix_connect",
        "connect to a unix socket listening on the host",
        _unix_connect,
        _check_connections,
        needs=("unix",),
    ),
    Probe(
        "fork_setsid_fork",
        "leave a grandchild in its own session running after the program ends",
        _fork_setsid_fork,
        _check_leftover,
    ),
    Probe(
        "posix_spawn",
        "run /usr/bin/touch on a host path with os.posix_spawn, posix_spawnp and os.system",
        _posix_spawn,
        _check_spawned,
    ),
    Probe(
        "kill_host_process",
        "kill an unrelated host process with posix.kill, os.kill and os.killpg",
        _kill_victim,
        _check_victim,
        needs=("victim",),
    ),
    Probe(
        "sysctl_write",
        f"change a global kernel setting ({_SYSCTL}), directly and from nested namespaces",
        _sysctl_write,
        _check_sysctl,
    ),
    Probe(
        "forge_verdict",
        "find the pass token in its source, argv, environment or descriptors, print it, write it "
        "everywhere, then os._exit(0)",
        _forge_verdict,
        _check_not_passed,
    ),
    Probe(
        "os_exit_zero",
        "os._exit(0) before the tests",
        lambda ctx: "import os\nos._exit(0)\nassert False\n",
        _check_not_passed,
    ),
    Probe(
        "sys_exit_zero",
        "sys.exit(0) before the tests",
        lambda ctx: "import sys\nsys.exit(0)\nassert False\n",
        _check_not_passed,
    ),
)
PROBE_NAMES = tuple(p.name for p in PROBES)


def _listen(ctx: ProbeContext, server: socket.socket, stop: threading.Event) -> None:
    server.settimeout(0.05)
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            if stop.is_set():  # stop only once the queue is empty: a connection made just before the end counts
                break
            continue
        with conn:
            conn.settimeout(1)
            try:
                ctx.connections.append(conn.recv(1024))
            except OSError:
                ctx.connections.append(b"")


def _knock(ctx: ProbeContext, stop: threading.Event) -> None:
    """Keep trying to connect, from the host, to the port the program binds inside."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", ctx.port), timeout=0.2):
                ctx.state["reached"] = ctx.state.get("reached", 0) + 1
        except OSError:
            pass
        time.sleep(0.05)


def run_probe(probe: Probe | str, *, backend: str | None = None, unsafe: bool = False) -> ProbeResult:
    """Run one probe through ``run_python`` (same ``backend``/``unsafe`` meaning) and judge it from outside."""
    if isinstance(probe, str):
        probe = _by_name(probe)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    sockets: list[socket.socket] = []
    with tempfile.TemporaryDirectory(prefix="ps-probe-") as tmp:
        ctx = ProbeContext(Path(tmp), f"ps-probe-{secrets.token_hex(6)}")
        try:
            if "tcp" in probe.needs or "free_port" in probe.needs:
                server = socket.socket()
                server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                server.bind(("127.0.0.1", 0))
                ctx.port = server.getsockname()[1]
                if "tcp" in probe.needs:
                    server.listen(8)
                    sockets.append(server)
                    threads.append(threading.Thread(target=_listen, args=(ctx, server, stop), daemon=True))
                else:
                    server.close()  # the program binds this port inside; the host knocks on it meanwhile
                    threads.append(threading.Thread(target=_knock, args=(ctx, stop), daemon=True))
            if "unix" in probe.needs:
                ctx.unix_path = ctx.scratch / "host.sock"
                server = socket.socket(socket.AF_UNIX)
                server.bind(str(ctx.unix_path))
                server.listen(8)
                sockets.append(server)
                threads.append(threading.Thread(target=_listen, args=(ctx, server, stop), daemon=True))
            if "victim" in probe.needs:
                ctx.victim = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
            for t in threads:
                t.start()
            program = probe.program(ctx)
            result = run_python(
                program, timeout_s=probe.timeout_s, memory_mb=512, output_kb=256, backend=backend, unsafe=unsafe
            )
            stop.set()
            for t in threads:
                t.join(timeout=2)
            escaped = probe.check(result, ctx)
        finally:
            stop.set()
            for s in sockets:
                s.close()
            if ctx.victim is not None and ctx.victim.poll() is None:
                ctx.victim.kill()
                ctx.victim.wait()
    if escaped is None:
        return ProbeResult(probe.name, True, f"blocked ({result.status}, {result.isolation})")
    return ProbeResult(probe.name, False, f"ESCAPED: {escaped} ({result.status}, {result.isolation})")


def _by_name(name: str) -> Probe:
    for p in PROBES:
        if p.name == name:
            return p
    raise KeyError(f"unknown probe {name!r}; known: {', '.join(PROBE_NAMES)}")


def run_escape_probes(
    names: list[str] | tuple[str, ...] | None = None, *, backend: str | None = None, unsafe: bool = False
) -> list[ProbeResult]:
    """Run the escape probes (all, or those named) and return one result per probe, in order."""
    chosen = PROBES if names is None else tuple(_by_name(n) for n in names)
    return [run_probe(p, backend=backend, unsafe=unsafe) for p in chosen]


def main(argv: list[str] | None = None) -> int:
    """``python -m powersampling.sandbox.probes [bwrap|unshare|none]``: print each probe's verdict."""
    args = sys.argv[1:] if argv is None else argv
    backend = args[0] if args else None
    results = run_escape_probes(backend=backend)
    for r in results:
        print(f"{r.name:20s} {'blocked' if r.blocked else 'ESCAPED'}  {r.detail}")
    blocked = sum(r.blocked for r in results)
    print(f"{blocked} of {len(results)} escapes blocked")
    return 0 if blocked == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
