"""Running untrusted generated Python in an operating-system sandbox (``isolation``), and the hostile programs
that check it holds on this machine (``probes``). The evaluation harness grades HumanEval and MBPP with it; it
depends on nothing else in the project."""

from .isolation import (
    BACKENDS,
    FAILED,
    MEMORY,
    NO_ISOLATION,
    OUTPUT,
    PASSED,
    TIMEOUT,
    ExecResult,
    SandboxUnavailableError,
    backend_works,
    isolation_backend,
    require_isolation,
    run_python,
)

__all__ = [
    "BACKENDS",
    "FAILED",
    "MEMORY",
    "NO_ISOLATION",
    "OUTPUT",
    "PASSED",
    "TIMEOUT",
    "ExecResult",
    "SandboxUnavailableError",
    "backend_works",
    "isolation_backend",
    "require_isolation",
    "run_python",
]
