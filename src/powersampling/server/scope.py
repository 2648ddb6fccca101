"""One request to a sampling or planning endpoint, from arrival to its recording, and the limits both check.

A ``RequestScope`` owns what every such request has: its deadline (a ``Job``), the metrics labels the middleware
records, its span, its status and its log line. Handlers set what they learn; ``close`` records it all once,
however the request ends (answered, refused, cut by the deadline, abandoned by the client).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Request
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..errors import PowerSamplingError
from ..observability.metrics import status_of_http
from ..observability.tracing import tracer
from ..samplers.result import SampleResult
from .errors import APIError
from .executor import Cancelled, DeadlineBeforeStart, Job, QueueFull
from .schemas import PowerSamplingParams
from .settings import ServerSettings

if TYPE_CHECKING:
    from .app import ServerState
    from .sampling import SamplingCall

log = logging.getLogger("powersampling.server")

# seconds past a request's deadline before the server stops waiting for a run that overran it
DEADLINE_GRACE_S = 5.0


def status_for(exc: APIError) -> str:
    """The status (metrics label, span error type, log field) of a request answered with ``exc``."""
    return status_of_http(exc.status)


def check_limits(ps: PowerSamplingParams | None, settings: ServerSettings, *, max_tokens: int | None = None) -> None:
    """The server's caps on what one request may ask for, the same for sampling and planning: a 400 naming the
    parameter over its cap."""
    caps: list[tuple[str, int | None, int]] = [("max_tokens", max_tokens, settings.max_tokens_limit)]
    if ps is not None:
        caps += [
            ("power_sampling.n_mcmc", ps.n_mcmc, settings.max_n_mcmc),
            ("power_sampling.chains", ps.chains, settings.max_chains),
            ("power_sampling.n", ps.n, settings.max_chains),
        ]
    for param, value, cap in caps:
        if value is not None and value > cap:
            raise APIError(
                400, f"{param} must be <= {cap} on this server (got {value})", param=param, code="invalid_value"
            )


class RequestScope:
    def __init__(self, state: ServerState, request: Request, endpoint: str, operation: str) -> None:
        self.arrived = time.monotonic()
        self.state, self.request = state, request
        self.endpoint, self.operation = endpoint, operation
        self.labels: dict[str, Any] = request.state.metrics
        self.job = Job(deadline_at=self.arrived + state.settings.request_timeout_s)
        self.span: trace.Span | None = None
        self.future: asyncio.Future | None = None
        self.call: SamplingCall | None = None
        self.result: SampleResult | None = None
        self.finish_reasons: list[str] | None = None  # the answered choices' (tool_calls included), once known
        self._closed = False

    def begin(self, method: str, route: str, *, call: SamplingCall | None = None, model: str | None = None) -> None:
        """The request is valid: label it and open its GenAI span "{operation} {model}"."""
        self.call = call
        self.labels.update(method=method, route=route)
        attributes = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.provider.name": "powersampling",
            "gen_ai.request.model": model or self.state.model_name,
        }
        if call is not None:
            attributes.update(
                {
                    "gen_ai.request.max_tokens": call.params.get("max_new_tokens"),
                    "gen_ai.request.temperature": call.params.get("temperature"),
                    "gen_ai.request.seed": call.params.get("seed"),
                    "power_sampling.method": call.method,
                    "gen_ai.usage.input_tokens": len(call.prompt_ids),
                }
            )
        self.span = tracer().start_span(
            f"{self.operation} {self.state.model_name}",
            kind=SpanKind.SERVER,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )

    def submit(self, fn: Callable[[Job], Any]) -> asyncio.Future:
        """Run ``fn(job)`` on a worker under the request's span; a refused request (429) ends here."""
        try:
            with trace.use_span(self.span, end_on_exit=False):
                self.future = self.state.executor.submit(fn, self.job)
        except QueueFull as exc:
            self.close("rejected")
            raise APIError(429, f"server busy: {exc}", code="queue_full", headers={"Retry-After": "1"}) from None
        self.future.add_done_callback(_consume_exception)
        return self.future

    async def wait(self) -> Any:
        """The job's result; 499 when the client leaves, 504 when the deadline passes in the queue or is overrun."""
        future, job = self.future, self.job
        watcher = asyncio.ensure_future(_wait_disconnect(self.request))
        try:
            done, _ = await asyncio.wait(
                {future, watcher},
                timeout=max(job.remaining_s(), 0) + DEADLINE_GRACE_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if future in done:
                return job_result(future)
            job.cancel.set()
            if watcher in done:
                raise APIError(499, "the client closed the request", code="client_closed_request")
            raise APIError(504, "the request overran its deadline", code="deadline_exceeded")
        finally:
            watcher.cancel()

    def deadline_error(self, partial: dict[str, Any]) -> APIError:
        """The 504 for a run the server's deadline cut short, with the response body of what was reached."""
        return APIError(
            504,
            f"the request reached the server's deadline of {self.state.settings.request_timeout_s} s;"
            " 'partial' holds what was reached",
            code="deadline_exceeded",
            partial=partial,
        )

    def elapsed_s(self) -> float:
        return time.monotonic() - self.arrived

    @contextmanager
    def recording(self) -> Iterator[RequestScope]:
        """Close the scope when the block ends: ok if it returns, else the status of what it raised."""
        status = "error"
        try:
            yield self
            status = "ok"
        except APIError as exc:
            status = status_for(exc)
            raise
        finally:
            self.close(status)

    def close(self, status: str) -> None:
        """Record the request once: stop a run nobody waits for, the final labels, the span, the log line."""
        if self._closed:
            return
        self._closed = True
        if self.future is not None and not self.future.done():
            self.job.cancel.set()
        self.labels["status"] = status
        if self.span is not None:
            self._end_span(status)
        self._log(status)

    def _end_span(self, status: str) -> None:
        span, result, call = self.span, self.result, self.call
        if result is not None:
            md = result.metadata
            span.set_attributes(
                {
                    k: v
                    for k, v in {
                        "gen_ai.response.model": self.state.model_name,
                        "gen_ai.response.id": call.request_id if call else None,
                        "gen_ai.response.finish_reasons": self.finish_reasons
                        or ["stop" if md.get("stopped_by") == "eos" else "length"],
                        "gen_ai.usage.output_tokens": len(result.token_ids),
                        "power_sampling.tokens_generated": md.get("tokens_generated"),
                        "power_sampling.acceptance_rate": md.get("acceptance_rate"),
                        "power_sampling.cost_multiplier": md.get("cost_multiplier"),
                        "power_sampling.stopped_by": md.get("stopped_by"),
                    }.items()
                    if v is not None
                }
            )
        if status != "ok":
            span.set_attribute("error.type", status)
            span.set_status(Status(StatusCode.ERROR, status))
        span.end()

    def _log(self, status: str) -> None:
        call, result = self.call, self.result
        line = f"{self.endpoint}"
        if call is not None:
            line += f" id={call.request_id}"
        line += f" method={self.labels.get('method')} route={self.labels.get('route')} status={status}"
        if call is not None:
            line += f" prompt_tokens={len(call.prompt_ids)} completion_tokens={len(result.token_ids) if result else 0}"
        line += f" latency_s={self.elapsed_s():.3f}"
        if self.state.settings.log_prompts and result is not None:
            line += f" completion={result.text!r}"
        log.info(line)


def job_result(future: asyncio.Future) -> Any:
    """A finished job's result, or the API error its failure answers."""
    try:
        return future.result()
    except DeadlineBeforeStart:
        raise APIError(
            504, "the deadline passed while the request waited in the queue", code="deadline_exceeded"
        ) from None
    except Cancelled:
        raise APIError(499, "the client closed the request", code="client_closed_request") from None
    except (PowerSamplingError, ValueError) as exc:
        raise APIError(400, str(exc), code="invalid_value") from None


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _consume_exception(future: asyncio.Future) -> None:
    """Abandoned jobs (client gone, deadline overrun) still finish; their errors are expected, not 'unretrieved'."""
    if not future.cancelled():
        future.exception()
