"""The code sandbox: limits are enforced by the OS on a real child process."""

from __future__ import annotations

import os
import time

from powersampling.eval.sandbox import FAILED, MEMORY, OUTPUT, PASSED, TIMEOUT, run_python


def test_passing_and_failing_programs():
    assert run_python("assert sum([1, 2]) == 3").status == PASSED
    failed = run_python("assert 1 == 2, 'nope'")
    assert failed.status == FAILED and "AssertionError: nope" in failed.stderr_tail


def test_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    result = run_python("while True:\n    pass", timeout_s=1.5)
    assert result.status == TIMEOUT
    assert time.monotonic() - start < 6


def test_sleeping_program_is_killed_at_the_wall_clock_timeout():
    result = run_python("import time\ntime.sleep(60)", timeout_s=1.0)
    assert result.status == TIMEOUT and result.wall_s < 5


def test_memory_bomb_is_stopped_by_the_address_space_limit():
    result = run_python("blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 2**20))", memory_mb=256,
                        timeout_s=20)
    assert result.status == MEMORY
    assert result.wall_s < 15


def test_output_flood_is_stopped_by_the_file_size_limit():
    result = run_python("while True:\n    print('x' * 1000)", output_kb=64, timeout_s=20)
    assert result.status == OUTPUT


def test_grandchildren_die_with_the_program(tmp_path):
    pid_file = tmp_path / "pid"
    program = (
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '120'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(120)\n"
    )
    result = run_python(program, timeout_s=2.0, guard=False)
    assert result.status == TIMEOUT
    pid = int(pid_file.read_text())
    time.sleep(0.2)
    try:
        os.kill(pid, 0)
        alive = _is_running(pid)
    except ProcessLookupError:
        alive = False
    assert not alive


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_guard_blocks_process_spawning_and_deletion(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("data")
    result = run_python(f"import os\nos.remove({str(victim)!r})")
    assert result.status == FAILED and victim.exists()
    assert run_python("import subprocess\nsubprocess.run(['true'])").status == FAILED


def test_early_exit_with_status_zero_is_not_a_pass():
    assert run_python("import sys\nsys.exit(0)\nassert False").status == FAILED
    assert run_python("import os\nos._exit(0)").status == FAILED


def test_runs_in_a_private_temporary_directory():
    result = run_python("import os\nassert os.getcwd().startswith(os.environ['TMPDIR'])\n"
                        "assert 'ps-sandbox-' in os.getcwd()")
    assert result.status == PASSED
