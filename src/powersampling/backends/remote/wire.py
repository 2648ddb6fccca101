"""What every wire protocol gives ``RemoteLM``, and the HTTP plumbing they share.

A protocol module (``vllm_api``, ``sglang_api``) knows only its server's request and answer formats. It draws a
continuation (``draw``), scores tokens after a prefix (``score``) and answers the probe's questions
(``full_distribution``, ``largest_accepted_k``, ``model``); which mode to run in, and how log p and log q follow
from what the server said, is ``RemoteLM``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from ...errors import CapabilityError, ModelLoadError

WHOLE_VOCABULARY = -1  # ``top_logprobs`` value asking for every token's log-probability at every position

# sampling parameters that switch off truncation and penalties, which a server may otherwise load from a model's
# generation_config
UNTRUNCATED = {
    "top_p": 1.0,
    "top_k": -1,
    "min_p": 0.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
}


@dataclass
class Draw:
    """A continuation as the server reported it.

    ``sampled[i]``: the log-probability the server gave ``tokens[i]`` (temperature 1 or the proposal's,
    depending on the server's settings). ``tops[i]``: ``{token_id: logprob}`` at position ``i`` when top
    log-probabilities were asked for, else None. ``server_stopped``: the server said its last token stopped the
    generation (a stop id of its own, not only those RemoteLM sent).
    """

    tokens: list[int]
    sampled: np.ndarray
    tops: list[dict[int, float]] | None = None
    server_stopped: bool = False

    def cut(self, length: int) -> Draw:
        """The first ``length`` tokens (the server's stop, if any, was on a later one)."""
        if length >= len(self.tokens):
            return self
        return Draw(
            self.tokens[:length], self.sampled[:length], self.tops[:length] if self.tops is not None else None, False
        )


@dataclass
class Grammar:
    """A JSON-schema grammar for the server to apply from the first generated token. ``compact``: no whitespace
    outside strings beyond the ``", "`` and ``": "`` separators, as the local grammar was built."""

    schema_text: str
    compact: bool


class Refused(CapabilityError):
    """The server answered a request with an error status."""

    def __init__(self, endpoint: str, status: int, body: Any) -> None:
        self.status = status
        self.detail = error_text(body)
        super().__init__(f"{endpoint} failed ({status}): {self.detail}")


class WireProtocol(Protocol):
    """One server API as ``RemoteLM`` uses it. Timeouts raise ``httpx.TimeoutException`` (callers treat them as
    deadlines); error answers raise ``Refused`` unless a method says otherwise."""

    name: str
    base_url: str
    model: str
    full_vocabulary_hint: str  # how to start this server so that it returns full-vocabulary log-probabilities

    def draw(
        self,
        prefix: list[int],
        *,
        max_new_tokens: int,
        temperature: float,
        top_logprobs: int,
        seed: int | None = None,
        timeout: float | None = None,
        grammar: Grammar | None = None,
    ) -> Draw:
        """Continue ``prefix`` at ``temperature``, under ``grammar`` when given; ``top_logprobs``: 0 for the
        sampled tokens' log-probabilities only, k for the top k at each position as well, ``WHOLE_VOCABULARY``
        for all of them."""

    def score(self, prefix: list[int], tokens: list[int]) -> np.ndarray | None:
        """log p (temperature 1) of ``tokens`` after ``prefix``; None when the server gives no prompt
        log-probabilities at all."""

    def full_distribution(
        self, prompt: list[int], temperature: float, timeout: float | None = None
    ) -> dict[int, float] | None:
        """The whole next-token distribution after ``prompt``, or None when the server will not give it."""

    def largest_accepted_k(self, prompt: list[int]) -> int:
        """The largest per-position top-k the server answers."""


def post(http: httpx.Client, path: str, payload: dict, timeout: float | None) -> tuple[int, Any]:
    """POST ``payload``; (status, JSON body, or an error body holding the start of a non-JSON answer).
    Timeouts propagate; other transport errors are a ModelLoadError."""
    kwargs = {"timeout": timeout} if timeout is not None else {}
    try:
        response = http.post(path, json=payload, **kwargs)
    except httpx.TimeoutException:
        raise
    except httpx.HTTPError as exc:
        raise ModelLoadError(f"could not reach {str(http.base_url).rstrip('/')}{path}: {exc}") from exc
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, {"error": response.text[:300]}


def error_text(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:300]
    return str(body)[:300]
