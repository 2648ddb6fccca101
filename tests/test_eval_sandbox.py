"""The code sandbox: OS isolation (bwrap or unshare), limits, the verdict channel, and refusal without isolation.

Every escape is judged from outside the sandbox (files on the host, host listeners, the host's process table, a
victim process, a kernel setting), by the probes in ``powersampling.sandbox.probes``, for every backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time

import pytest

from powersampling.errors import PowerSamplingError
from powersampling.eval.benchmarks import BenchmarkPrompt, ExecLimits, get_benchmark
from powersampling.eval.datasets import Problem
from powersampling.eval.grading import grade_program
from powersampling.sandbox import (
    BACKENDS,
    FAILED,
    MEMORY,
    NO_ISOLATION,
    OUTPUT,
    PASSED,
    TIMEOUT,
    SandboxUnavailableError,
    backend_works,
    isolation_backend,
    require_isolation,
    run_python,
)
from powersampling.sandbox import isolation as sandbox
from powersampling.sandbox.probes import PROBE_NAMES, _processes_with_marker, run_escape_probes, run_probe

ALL = (*BACKENDS, NO_ISOLATION)


def _need(backend: str) -> str:
    if backend != NO_ISOLATION and not backend_works(backend):
        pytest.skip(f"{backend} does not work here: {sandbox._probe_failures.get(backend)}")
    return backend


def _raw_ok(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_isolation_works_wherever_the_kernel_and_tools_allow_it():
    # guards against the backends silently skipping: if the bare mechanism works here, ours must too
    if shutil.which("unshare") and _raw_ok(["unshare", "-Urnpf", "--mount-proc", "true"]):
        assert backend_works("unshare"), sandbox._probe_failures.get("unshare")
    if shutil.which("bwrap") and _raw_ok(
        [
            "bwrap",
            "--ro-bind",
            "/",
            "/",
            "--unshare-all",
            "--unshare-user",
            "--die-with-parent",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "true",
        ]
    ):
        assert backend_works("bwrap"), sandbox._probe_failures.get("bwrap")
    working = [b for b in BACKENDS if backend_works(b)]
    assert isolation_backend() == (working[0] if working else None)


@pytest.mark.parametrize("probe", PROBE_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_escape_is_blocked(backend, probe):
    result = run_probe(probe, backend=_need(backend))
    assert result.blocked, result.detail


def test_the_probes_see_escapes_when_there_is_no_isolation():
    # the outside checks do detect an escape (and clean up after it): these four all escape a plain child
    names = ["write_host_path", "unlink_host_file", "tcp_connect", "fork_setsid_fork"]
    results = run_escape_probes(names, backend=NO_ISOLATION)
    assert [r.name for r in results] == names
    assert not any(r.blocked for r in results), [r.detail for r in results]
    # while the verdict cannot be forged even then
    assert all(r.blocked for r in run_escape_probes(["forge_verdict", "os_exit_zero"], backend=NO_ISOLATION))
    with pytest.raises(KeyError, match="unknown probe"):
        run_escape_probes(["no_such_probe"])


@pytest.mark.parametrize("backend", ALL)
def test_passing_and_failing_programs(backend):
    _need(backend)
    ok = run_python("assert sum([1, 2]) == 3\nprint('chatter')", backend=backend)
    assert (ok.status, ok.isolation) == (PASSED, backend)
    failed = run_python("x = 1\nassert x == 2, 'nope'", backend=backend)
    assert failed.status == FAILED
    assert "AssertionError: nope" in failed.stderr_tail and 'File "program.py", line 2' in failed.stderr_tail
    assert "_main" not in failed.stderr_tail  # the wrapper's own frame is not shown
    assert run_python("def f(:\n    pass", backend=backend).status == FAILED


@pytest.mark.parametrize("backend", ALL)
def test_sleeping_program_is_killed_at_the_timeout_with_its_children(backend):
    _need(backend)
    marker = f"ps-test-{os.getpid()}-{backend}"
    program = f"import os, time\nif os.fork() == 0:\n    os.execv('/bin/sleep', [{marker!r}, '60'])\ntime.sleep(60)\n"
    result = run_python(program, timeout_s=1.0, backend=backend)
    assert result.status == TIMEOUT and result.wall_s < 4
    leftover = _processes_with_marker(marker)
    for pid in leftover:  # the unsafe mode kills the process group, which includes this child
        os.kill(pid, 9)
    assert not leftover


def test_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=1.5, backend=_need(isolation_backend() or NO_ISOLATION))
    assert result.status == TIMEOUT
    assert time.monotonic() - start < 6


@pytest.mark.parametrize("backend", ALL)
def test_a_huge_allocation_is_reported_as_memory(backend):
    _need(backend)
    for program in ("import mmap\nm = mmap.mmap(-1, 10 * 2**30)\nm[-1] = 1", "x = bytearray(10 * 2**30)"):
        result = run_python(program, memory_mb=256, backend=backend)
        assert result.status == MEMORY, result.stderr_tail


def test_memory_bomb_is_stopped_by_the_address_space_limit():
    result = run_python(
        "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))",
        memory_mb=256,
        timeout_s=20,
        backend=_need(isolation_backend() or NO_ISOLATION),
    )
    assert result.status == MEMORY
    assert result.wall_s < 15


@pytest.mark.parametrize("backend", ALL)
def test_output_flood_is_stopped_by_the_file_size_limit(backend):
    result = run_python("while True:\n    print('x' * 1000)", output_kb=64, timeout_s=20, backend=_need(backend))
    assert result.status == OUTPUT


@pytest.mark.parametrize("backend", BACKENDS)
def test_inside_the_sandbox(backend):
    program = (
        "import os, socket, tempfile\n"
        "assert os.getcwd() == os.environ['HOME'] == tempfile.gettempdir() == '/tmp'\n"
        "open('/tmp/scratch.txt', 'w').write('ok')\n"  # the private tmpfs is writable
        "assert open('scratch.txt').read() == 'ok'\n"
        "for path in ('/x', '/usr/x', '/etc/x', '/dev/x', '/proc/sys/kernel/printk_ratelimit'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        raise AssertionError(path + ' is writable')\n"
        "    except OSError:\n"
        "        pass\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "assert all(int(status[k], 16) == 0 for k in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb')), status\n"
        "assert int(status['NoNewPrivs']) == 1\n"
        "assert [n for _, n in socket.if_nameindex()] == ['lo']\n"
        "assert sorted(p for p in os.listdir('/proc') if p.isdigit()) == ['1', '2']\n"  # init and the program
        "assert not os.path.exists('/home') and not os.path.exists('/run')\n"
        "assert input.__module__ == 'builtins' and open('/dev/stdin').read() == ''\n"  # stdin is empty
        "import json, math, re, collections, itertools, heapq, functools\n"
    )
    result = run_python(program, backend=_need(backend))
    assert result.status == PASSED, result.stderr_tail


def test_programs_run_concurrently_and_no_descriptor_leaks():
    backend = _need(isolation_backend() or NO_ISOLATION)
    before = len(os.listdir("/proc/self/fd"))
    results: list = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(run_python(f"assert {i} == {i}", backend=backend)))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status for r in results] == [PASSED] * 4
    assert run_python("import time\ntime.sleep(5)", timeout_s=0.5, backend=backend).status == TIMEOUT
    assert len(os.listdir("/proc/self/fd")) == before


def test_works_in_a_process_with_more_than_1024_descriptors():
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 1200:
        pytest.skip("the descriptor limit is too low to test this")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        result = run_python("pass", backend=_need(isolation_backend() or NO_ISOLATION))
    finally:
        for fd in held:
            os.close(fd)
    assert result.status == PASSED, result.stderr_tail


def test_without_isolation_run_python_refuses_unless_unsafe(monkeypatch):
    monkeypatch.setattr(sandbox, "backend_works", lambda backend: False)
    assert isolation_backend() is None
    with pytest.raises(SandboxUnavailableError, match="--unsafe-exec") as err:
        run_python("pass")
    assert isinstance(err.value, PowerSamplingError) and "\n" not in str(err.value)
    with pytest.raises(SandboxUnavailableError):
        require_isolation(unsafe=False)
    with pytest.raises(SandboxUnavailableError):
        run_python("pass", backend="bwrap")
    assert require_isolation(unsafe=True) == NO_ISOLATION
    result = run_python("assert 1 + 1 == 2", unsafe=True)
    assert (result.status, result.isolation) == (PASSED, NO_ISOLATION)
    # the graders pass the permission through
    with pytest.raises(SandboxUnavailableError):
        grade_program("pass")
    assert grade_program("pass", unsafe=True).correct
    problem = Problem(
        "mbpp",
        "mbpp/0",
        0,
        "add",
        "def add(a, b):\n    return a + b",
        {"tests": ["assert add(1, 2) == 3"], "setup": ""},
    )
    prompt, mbpp, code = (
        BenchmarkPrompt([], (), "fewshot", ""),
        get_benchmark("mbpp"),
        "def add(a, b):\n    return a + b\n",
    )
    with pytest.raises(SandboxUnavailableError):
        mbpp.grade(problem, code, prompt, ExecLimits())
    assert mbpp.grade(problem, code, prompt, ExecLimits(unsafe_exec=True)).correct


def test_require_isolation_names_the_backend_in_use():
    backend = isolation_backend()
    if backend is None:
        pytest.skip("no isolation here")
    assert require_isolation(unsafe=False) == require_isolation(unsafe=True) == backend
    assert run_python("pass").isolation == backend
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        backend_works("docker")
