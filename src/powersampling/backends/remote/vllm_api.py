"""vLLM's OpenAI-compatible ``/v1/completions`` as a wire protocol for ``RemoteLM``.

Token-id ``prompt``; ``logprobs`` per generated token (-1: the whole vocabulary, which needs vLLM started with
``--max-logprobs -1``); ``prompt_logprobs`` to score tokens after a prefix; ``return_tokens_as_token_ids`` so that
answers name token ids rather than text. ``ignore_eos`` is set so that only the stop ids RemoteLM sends end a
generation.

A grammar goes out as ``structured_outputs: {"json": schema}`` (vLLM 0.10.2 and later); a server that answers 400
about that field is asked once more with the older top-level ``guided_json``, which is then used from there on.
``disable_any_whitespace`` is sent for a compact grammar, but vLLM's xgrammar backend takes whitespace from its
server configuration (``--structured-outputs-config '{"disable_any_whitespace": true}'``), so the server must be
started to match the local grammar.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np

from ...errors import CapabilityError, ModelLoadError
from .wire import UNTRUNCATED, WHOLE_VOCABULARY, Draw, Grammar, Refused, error_text, post

_TOP_K_CANDIDATES = (20, 10, 5, 2, 1)  # 20 is vLLM's default --max-logprobs


class VLLMApi:
    name = "vllm"
    full_vocabulary_hint = "start vLLM with --max-logprobs -1"

    def __init__(self, http: httpx.Client, root: str, stop_token_ids: frozenset[int], model: str | None) -> None:
        self._http = http
        self.base_url = root + "/v1"
        self._stop_token_ids = sorted(stop_token_ids)
        self.model = model or self._listed_model()
        self._grammar_field = "structured_outputs"

    def _listed_model(self) -> str:
        try:
            response = self._http.get("/v1/models")
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise ModelLoadError(f"could not list models at {self.base_url}/models: {exc}") from exc

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
        def complete() -> tuple[int, Any]:
            return self._complete(
                prefix,
                max_tokens=max_new_tokens,
                temperature=temperature,
                logprobs=top_logprobs,
                seed=seed,
                timeout=timeout,
                grammar=grammar,
            )

        field = self._grammar_field
        status, body = complete()
        if grammar is not None and field == "structured_outputs" and status in (400, 422) and field in error_text(body):
            self._grammar_field = "guided_json"
            status, body = complete()
        self._raise_for(status, body)
        logprobs = body["choices"][0]["logprobs"]
        tops = logprobs.get("top_logprobs")
        return Draw(
            _token_ids(logprobs),
            np.asarray([float(x) for x in logprobs["token_logprobs"]], dtype=np.float64),
            [_by_token_id(position) for position in tops] if tops is not None else None,
        )

    def score(self, prefix: list[int], tokens: list[int]) -> np.ndarray | None:
        if not tokens:
            return np.zeros(0)
        status, body = self._complete(prefix + tokens, max_tokens=1, temperature=1.0, prompt_logprobs=0)
        if status >= 400:
            return None
        entries = body["choices"][0].get("prompt_logprobs") or body.get("prompt_logprobs")
        if not entries:
            return None
        out = []
        for entry, token in zip(entries[len(prefix) :], tokens):
            value = entry.get(str(token)) if isinstance(entry, dict) else None
            if value is None:
                return None
            out.append(float(value["logprob"] if isinstance(value, dict) else value))
        return np.asarray(out, dtype=np.float64)

    def full_distribution(
        self, prompt: list[int], temperature: float, timeout: float | None = None
    ) -> dict[int, float] | None:
        status, body = self._complete(
            prompt, max_tokens=1, temperature=temperature, logprobs=WHOLE_VOCABULARY, timeout=timeout
        )
        if status >= 400:
            detail = error_text(body).lower()
            if "prompt" in detail or (status == 422 and "logprobs" not in detail):
                self._require_token_id_prompts(prompt)
            self._raise_for(status, body)
        return _by_token_id(body["choices"][0]["logprobs"]["top_logprobs"][0])

    def largest_accepted_k(self, prompt: list[int]) -> int:
        for k in _TOP_K_CANDIDATES:
            status, _ = self._complete(prompt, max_tokens=1, temperature=1.0, logprobs=k)
            if status < 400:
                return k
        raise CapabilityError(f"{self.base_url} refuses every top-k log-probability request")

    def _require_token_id_prompts(self, prompt: list[int]) -> None:
        """A refusal that mentions the prompt may be about token ids or about ``logprobs=-1``; a plain token-id
        request tells which."""
        status, body = self._complete(prompt, max_tokens=1, temperature=1.0, logprobs=1)
        if status >= 400:
            raise CapabilityError(
                f"{self.base_url} does not accept token-id prompts ({error_text(body)}); exact power sampling needs "
                "continuation from an exact token prefix. Use vLLM serve or a local backend."
            )

    def _complete(
        self,
        prompt: list[int],
        *,
        max_tokens: int,
        temperature: float,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        grammar: Grammar | None = None,
    ) -> tuple[int, Any]:
        payload: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            "ignore_eos": True,
            "stop_token_ids": self._stop_token_ids,
            **UNTRUNCATED,
        }
        if logprobs is not None:
            payload["logprobs"] = logprobs
        if prompt_logprobs is not None:
            payload["prompt_logprobs"] = prompt_logprobs
        if seed is not None:
            payload["seed"] = seed
        if grammar is not None:
            payload.update(self._grammar_payload(grammar))
        return post(self._http, "/v1/completions", payload, timeout)

    def _grammar_payload(self, grammar: Grammar) -> dict[str, Any]:
        schema = json.loads(grammar.schema_text)
        if self._grammar_field == "guided_json":
            return {"guided_json": schema}
        return {"structured_outputs": {"json": schema, **({"disable_any_whitespace": True} if grammar.compact else {})}}

    def _raise_for(self, status: int, body: Any) -> None:
        if status >= 400:
            raise Refused(f"{self.base_url}/completions", status, body)


def _token_ids(logprobs: dict) -> list[int]:
    out = []
    for token in logprobs["tokens"]:
        if not (isinstance(token, str) and token.startswith("token_id:")):
            raise CapabilityError("the server did not return token ids (needs return_tokens_as_token_ids)")
        out.append(int(token.split(":", 1)[1]))
    return out


def _by_token_id(position: dict) -> dict[int, float]:
    """One position's ``{"token_id:N": logprob}`` (or ``{"N": {"logprob": ...}}``) answer as ``{N: logprob}``."""
    out = {}
    for key, value in position.items():
        token = int(key.split(":", 1)[1]) if key.startswith("token_id:") else int(key)
        out[token] = float(value["logprob"] if isinstance(value, dict) else value)
    return out
