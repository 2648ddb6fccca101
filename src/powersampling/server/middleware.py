"""Pure ASGI middlewares (no BaseHTTPMiddleware: it would hide client disconnects from the handlers)."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..observability.metrics import record_request, status_of_http
from .errors import error_object

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

# request path -> endpoint label of the requests_total metric
METERED_PATHS = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/plan": "plan"}


def install_middleware(app, *, model_name: str, api_key: str | None, max_body_bytes: int) -> None:
    # the last one added is the outermost: metrics see every answer, including 401, 413 and 415
    app.add_middleware(RequestBodyMiddleware, max_bytes=max_body_bytes, json_paths=frozenset(METERED_PATHS))
    app.add_middleware(BearerAuthMiddleware, api_key=api_key)
    app.add_middleware(RequestMetricsMiddleware, model_name=model_name)


async def send_error(
    send, status: int, message: str, *, code: str | None = None, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"error": error_object(status, message, code=code)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestMetricsMiddleware:
    """Counts every request to a sampling or planning endpoint, whatever answered it (auth, size limit,
    validation, the handler), and observes its end-to-end latency after the last byte (streams included).

    Handlers refine the labels through ``request.state.metrics`` (method, route, and a status such as
    ``cancelled`` that the HTTP code alone cannot tell)."""

    def __init__(self, app: ASGIApp, model_name: str) -> None:
        self.app, self.model_name = app, model_name

    async def __call__(self, scope, receive, send) -> None:
        endpoint = METERED_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        labels: dict[str, Any] = {"method": "none", "route": None, "status": None}
        scope.setdefault("state", {})["metrics"] = labels
        code: int | None = None
        left = False
        start = time.perf_counter()

        async def receive_watching() -> dict:
            nonlocal left
            message = await receive()
            left = left or message["type"] == "http.disconnect"
            return message

        async def send_recording(message: dict) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        returned = False
        try:
            await self.app(scope, receive_watching, send_recording)
            returned = True
        finally:
            # an app that returns no answer because the client left (mid-upload, say) saw a cancelled request, not
            # a server error; one that raised did fail
            fallback = "cancelled" if returned and left and code is None else status_of_http(code or 500)
            record_request(
                model_name=self.model_name,
                endpoint=endpoint,
                method=labels["method"],
                route=labels["route"],
                status=labels["status"] or fallback,
                latency_s=time.perf_counter() - start,
            )


class BearerAuthMiddleware:
    """``Authorization: Bearer <key>`` on every /v1/ path when a key is set; 401 with an error object otherwise."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if self.expected is None or scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            message = "missing API key: send 'Authorization: Bearer <key>'" if not given else "invalid API key"
            await send_error(
                send,
                401,
                message,
                code="invalid_api_key",
                headers=[(b"www-authenticate", b'Bearer realm="powersampling"')],
            )
            return
        await self.app(scope, receive, send)


class RequestBodyMiddleware:
    """Reads a request body up to ``max_bytes`` (413 beyond it, whether or not Content-Length says so) and replays
    it to the app; after the body, ``receive`` is the server's again, so disconnects still reach the handler.

    A POST to one of ``json_paths`` must declare a JSON body (``application/json``, parameters such as charset
    allowed, or ``application/*+json``): 415 otherwise, a missing Content-Type included; and an empty one is a 400
    that says so."""

    def __init__(self, app: ASGIApp, max_bytes: int, json_paths: frozenset[str] = frozenset()) -> None:
        self.app, self.max_bytes, self.json_paths = app, max_bytes, json_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        json_only = scope.get("method") == "POST" and scope.get("path") in self.json_paths
        if json_only and not _is_json(headers.get(b"content-type")):
            given = headers.get(b"content-type", b"").decode("latin-1")
            await send_error(
                send,
                415,
                f"{f'unsupported Content-Type {given!r}' if given else 'no Content-Type'}: "
                "send the body as JSON with 'Content-Type: application/json'",
                code="unsupported_media_type",
            )
            return
        too_large = f"request body larger than {self.max_bytes} bytes"
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    await send_error(send, 413, too_large, code="body_too_large")
                    return
            except ValueError:
                await send_error(send, 400, "invalid Content-Length header", code="invalid_header")
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(send, 413, too_large, code="body_too_large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_only and not body.strip():
            await send_error(send, 400, "the request body is empty; send a JSON object", code="invalid_value")
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _is_json(content_type: bytes | None) -> bool:
    media = (content_type or b"").split(b";")[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))
