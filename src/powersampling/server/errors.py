"""OpenAI-style error objects: ``{"error": {"message", "type", "param", "code"}}`` for every failure."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("powersampling.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered to the client with ``status`` and an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        partial: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.partial, self.headers = partial, headers

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": error_object(self.status, self.message, param=self.param, code=self.code)}
        if self.partial is not None:
            out["partial"] = self.partial
        return out

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_object(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {
        "message": message,
        "type": _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        "param": param,
        "code": code,
    }


_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})


def _union_tag(part: Any) -> bool:
    """Pydantic names the member of a union it tried (``str``, ``list[int]``, ``constrained-str``) in an error's
    location; the client's parameter is the field, not the member."""
    return isinstance(part, str) and (part in _SCALAR_TAGS or "[" in part or "-" in part)


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One readable line and the offending parameter for pydantic/FastAPI validation errors."""
    if not errors:
        return "invalid request", None
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _union_tag(p)]
    param = ".".join(loc) or None
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        message = f"unrecognized request argument supplied: {param}"
    elif kind in ("json_invalid", "json_type"):
        message = "the request body is not valid JSON"
        param = None
    elif kind == "missing":
        message = f"missing required parameter: {param}"
    elif kind == "model_attributes_type" and not loc:
        message = "the request body must be a JSON object"
    else:
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {repr(got)[:80]})"
        message = f"{param + ': ' if param else ''}{err.get('msg', 'invalid value')}{shown}"
    extra = len(errors) - 1
    if extra:
        message += f" (and {extra} more error{'s' if extra > 1 else ''})"
    return message, param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(
            {"error": error_object(exc.status_code, message)},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return JSONResponse(
            {"error": error_object(500, "internal server error", code="internal_error")}, status_code=500
        )
