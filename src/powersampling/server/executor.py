"""Blocking sampler runs on worker threads behind a bounded queue.

Sampling is CPU-bound and blocking, so it never runs on the event loop. Admission is decided up front: when every
worker is busy and ``max_queue`` requests already wait, ``submit`` raises ``QueueFull`` (the caller answers 429)
instead of letting an unbounded backlog grow. A job whose client went away is skipped if it has not started, and
stopped at the sampler's next progress event if it has (the ``progress`` callback raises ``Cancelled``).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..observability.metrics import QUEUE_TIME, QueueGauges

T = TypeVar("T")


class QueueFull(Exception):
    """Every worker is busy and the waiting line is full."""


class Cancelled(Exception):
    """The client went away; raised inside the sampler's thread to unwind it."""


class DeadlineBeforeStart(Exception):
    """The request's deadline passed while it waited for a worker."""


@dataclass(eq=False)
class Job:
    """One admitted request: its cancellation flag and its deadline on the monotonic clock."""

    deadline_at: float
    cancel: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None

    def remaining_s(self) -> float:
        return self.deadline_at - time.monotonic()

    def check_cancelled(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()


class SamplingExecutor:
    def __init__(self, model_name: str, *, workers: int, max_queue: int) -> None:
        self.model_name = model_name
        self.workers, self.max_queue = workers, max_queue
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="powersampling-sampler")
        self._lock = threading.Lock()
        self.waiting = 0
        self.running = 0
        self._gauges = QueueGauges(model_name)
        self._closed = False
        self._jobs: set[Job] = set()

    @property
    def capacity(self) -> int:
        return self.workers + self.max_queue

    def submit(self, fn: Callable[[Job], T], job: Job) -> asyncio.Future[T]:
        """Run ``fn(job)`` on a worker; raises ``QueueFull`` at once when there is no room."""
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if self.waiting + self.running >= self.capacity:
                raise QueueFull(f"{self.running} requests running and {self.waiting} waiting; try again later")
            self.waiting += 1
            self._jobs.add(job)
            self._gauges.enqueue()
        context = contextvars.copy_context()  # carries the request's OpenTelemetry span into the worker
        try:
            return asyncio.get_running_loop().run_in_executor(self._pool, self._run, fn, job, context)
        except BaseException:
            self._leave_queue(job, started=False)
            raise

    def _run(self, fn: Callable[[Job], T], job: Job, context: contextvars.Context) -> T:
        started = not job.cancel.is_set() and job.remaining_s() > 0
        self._leave_queue(job, started)
        if not started:
            job.check_cancelled()
            raise DeadlineBeforeStart()
        job.started_at = time.monotonic()
        QUEUE_TIME.labels(self.model_name).observe(job.started_at - job.submitted_at)
        try:
            return context.run(fn, job)
        finally:
            with self._lock:
                self.running -= 1
                self._jobs.discard(job)
                self._gauges.finish()

    def _leave_queue(self, job: Job, started: bool) -> None:
        with self._lock:
            self.waiting -= 1
            if not started:
                self._jobs.discard(job)
            if started:
                self.running += 1
            self._gauges.leave_queue(started)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"waiting": self.waiting, "running": self.running, "capacity": self.capacity}

    def shutdown(self) -> None:
        """Refuse new work, stop running and queued jobs at their next check, and let the threads drain."""
        with self._lock:
            self._closed = True
            for job in self._jobs:
                job.cancel.set()
        self._pool.shutdown(wait=False)
