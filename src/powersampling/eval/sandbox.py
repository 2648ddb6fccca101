"""Run untrusted generated Python in a child process with time, memory, output and file-size limits.

Containment comes from the operating system, not from Python: a fresh interpreter (``python -I``, no user site,
no environment variables beyond a minimal set) in a throw-away temporary directory, its own session (so the whole
process group is killed on timeout), ``RLIMIT_AS`` for memory, ``RLIMIT_CPU`` for CPU time, ``RLIMIT_FSIZE`` so a
print loop cannot fill the disk, and a wall-clock timeout. The candidate program needs no network and gets no
inputs. A small guard prelude also removes process-spawning and file-deleting functions from ``os``/``shutil``/
``subprocess`` (best effort: the real limits are the ones above).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PASSED, FAILED, TIMEOUT, MEMORY, OUTPUT = "passed", "failed", "timeout", "memory", "output_limit"

_LIMITS = '''\
import resource as _resource
for _limit, _value in ((_resource.RLIMIT_AS, {memory}), (_resource.RLIMIT_CPU, {cpu}),
                       (_resource.RLIMIT_FSIZE, {fsize}), (_resource.RLIMIT_CORE, 0)):
    _resource.setrlimit(_limit, (_value, _value))
del _resource, _limit, _value
'''

_GUARD = '''\
import os as _os, shutil as _shutil, subprocess as _subprocess
for _name in ("system", "popen", "kill", "killpg", "fork", "forkpty", "execv", "execve", "execvp", "execvpe",
              "spawnv", "spawnve", "spawnl", "remove", "unlink", "rmdir", "removedirs", "rename", "renames",
              "replace", "truncate", "chmod", "chown", "setuid"):
    if hasattr(_os, _name):
        setattr(_os, _name, None)
_shutil.rmtree = _shutil.move = None
_subprocess.Popen = _subprocess.run = _subprocess.call = _subprocess.check_output = None
del _os, _shutil, _subprocess, _name
'''


@dataclass(frozen=True)
class ExecResult:
    status: str  # passed | failed | timeout | memory | output_limit
    returncode: int | None
    wall_s: float
    stderr_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_python(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    output_kb: int = 1024,
    guard: bool = True,
) -> ExecResult:
    """Execute ``program`` as ``__main__``; passed means it ran to its end and exited with status 0 within the
    limits."""
    with tempfile.TemporaryDirectory(prefix="ps-sandbox-") as tmp:
        workdir = Path(tmp)
        # limits are set by the child on itself first thing: preexec_fn is unsafe in a threaded parent (torch)
        limits = _LIMITS.format(memory=memory_mb * 2**20, cpu=max(1, int(timeout_s) + 1), fsize=output_kb * 1024)
        # exit status 0 is not enough: a candidate that calls sys.exit(0) or os._exit(0) before the tests would
        # pass, so the program must also reach its last line and print a token it cannot know in advance
        sentinel = secrets.token_hex(16)
        body = limits + (_GUARD if guard else "") + program + f"\nprint({sentinel!r}, flush=True)\n"
        (workdir / "program.py").write_text(body, encoding="utf-8")
        stdout_path, stderr_path = workdir / "stdout.txt", workdir / "stderr.txt"
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        start = time.monotonic()
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-B", "program.py"], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
            )
            timed_out = False
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
        wall = time.monotonic() - start
        stderr_tail = _tail(stderr_path)
        finished = sentinel in _tail(stdout_path, 200)
    code = proc.returncode
    if timed_out or code == -signal.SIGXCPU:
        status = TIMEOUT
    elif code == -signal.SIGXFSZ or "File too large" in stderr_tail:  # Python ignores SIGXFSZ: writes raise
        status = OUTPUT
    elif code == 0 and finished:
        status = PASSED
    elif "MemoryError" in stderr_tail or code in (-signal.SIGSEGV, -signal.SIGABRT, -signal.SIGKILL):
        # allocation failures under RLIMIT_AS surface as MemoryError, or as a crash inside a C extension
        status = MEMORY
    else:
        status = FAILED
    return ExecResult(status, code, wall, stderr_tail[-1000:])


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's whole session (it may have started its own children) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
        pass
