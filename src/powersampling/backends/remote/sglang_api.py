"""SGLang's native ``POST /generate`` as a wire protocol for ``RemoteLM``.

``input_ids`` and ``sampling_params`` in; log-probabilities (``return_logprob``) come back in ``meta_info`` as
``[logprob, token_id, text]`` triples: ``output_token_logprobs`` for the drawn tokens, ``output_top_logprobs``
(``top_logprobs_num`` per position) and ``input_token_logprobs`` for the prompt from ``logprob_start_len`` on.
A server is recognized by ``GET /model_info`` (``/get_model_info`` before it was renamed) answering a
``model_path``.

A grammar goes out as ``sampling_params.json_schema`` (the schema as a JSON string). SGLang takes whitespace from
its server settings (``--constrained-json-disable-any-whitespace`` for a compact grammar), so the server must be
started to match the local grammar.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np

from ...errors import CapabilityError
from .wire import UNTRUNCATED, WHOLE_VOCABULARY, Draw, Grammar, Refused, error_text, post

# SGLang's SamplingParams rejects unknown keys, so only keys it knows are sent
_SAMPLING = {**UNTRUNCATED, "min_new_tokens": 0}
_TOP_K = 20
_FULL_MASS_TOL = 1e-5


def model_info(http: httpx.Client) -> dict | None:
    """SGLang's ``/model_info`` (``/get_model_info`` before it was renamed), or None for any other server."""
    for path in ("/model_info", "/get_model_info"):
        try:
            response = http.get(path)
            body = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            continue
        if isinstance(body, dict) and "model_path" in body:
            return body
    return None


class SGLangApi:
    name = "sglang"
    full_vocabulary_hint = (
        "start SGLang with SGLANG_RETURN_ORIGINAL_LOGPROB=1 and give RemoteLM the model's vocab_size or tokenizer"
    )

    def __init__(
        self,
        http: httpx.Client,
        root: str,
        stop_token_ids: frozenset[int],
        info: dict,
        vocab_size: int,
        model: str | None,
    ) -> None:
        self._http = http
        self.base_url = root
        self._stop_token_ids = sorted(stop_token_ids)
        self._vocab_size = vocab_size
        self.model = model or str(info.get("served_model_name") or info["model_path"])

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
        # no seed is sent (older releases refuse sampling_seed): SGLang draws with its own randomness
        top = self._vocab_size if top_logprobs == WHOLE_VOCABULARY else top_logprobs
        status, meta = self._generate(
            prefix,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            top_logprobs_num=top,
            timeout=timeout,
            grammar=grammar,
        )
        if status >= 400:
            raise Refused(f"{self.base_url}/generate", status, meta)
        pairs = _pairs(meta, "output_token_logprobs")
        if any(v is None for v, _ in pairs):
            raise CapabilityError(f"{self.base_url} returned a sampled token without its log-probability")
        tokens = [t for _, t in pairs]
        finish = meta.get("finish_reason")
        # SGLang also stops on the model's own EOS ids (ignore_eos would switch off stop_token_ids as well)
        server_stopped = (
            isinstance(finish, dict)
            and finish.get("type") == "stop"
            and bool(tokens)
            and finish.get("matched") == tokens[-1]
        )
        return Draw(
            tokens,
            np.asarray([v for v, _ in pairs], dtype=np.float64),
            _tops(meta, "output_top_logprobs") if top else None,
            server_stopped,
        )

    def score(self, prefix: list[int], tokens: list[int]) -> np.ndarray:
        """SGLang answers one ``input_token_logprobs`` entry per input token from ``logprob_start_len`` on, the
        first without a value, so starting at the last prefix token gives exactly the drawn tokens' log p."""
        if not tokens:
            return np.zeros(0)
        start = len(prefix) - 1
        ids = prefix + tokens
        status, meta = self._generate(ids, temperature=1.0, max_new_tokens=1, logprob_start_len=start)
        if status >= 400:
            raise CapabilityError(
                f"{self.base_url} refused a scoring request (input_token_logprobs from "
                f"logprob_start_len): {error_text(meta)}"
            )
        entries = _pairs(meta, "input_token_logprobs")
        expected = ids[start:]
        # SGLang writes 0 for ids at or past vocab_size - 1 in the echoed ids (multimodal hash padding)
        if len(entries) != len(expected) or any(t != e and t != 0 for (_, t), e in zip(entries, expected)):
            raise CapabilityError(
                f"{self.base_url} answered {len(entries)} input_token_logprobs for {len(expected)} tokens from "
                f"logprob_start_len={start}; they do not line up with the prompt"
            )
        values = [v for v, _ in entries[1:]]
        if any(v is None for v in values):
            raise CapabilityError(f"{self.base_url} left input_token_logprobs without values")
        return np.asarray(values, dtype=np.float64)

    def full_distribution(
        self, prompt: list[int], temperature: float, timeout: float | None = None
    ) -> dict[int, float] | None:
        """``top_logprobs_num = vocab_size``, which needs the vocabulary size; the answer must sum to 1, or part
        of the distribution was left out."""
        if not self._vocab_size:
            return None
        draw = self.draw(
            prompt, max_new_tokens=1, temperature=temperature, top_logprobs=WHOLE_VOCABULARY, timeout=timeout
        )
        top = draw.tops[0] if draw.tops else {}
        values = np.array([v for v in top.values() if v > -1e30], dtype=np.float64)
        if values.size == 0:
            return None
        peak = float(np.max(values))
        return top if abs(peak + math.log(float(np.sum(np.exp(values - peak))))) < _FULL_MASS_TOL else None

    def largest_accepted_k(self, prompt: list[int]) -> int:
        return _TOP_K  # not probed: a fixed top-k, vLLM's default maximum, keeps the answers small

    def _generate(
        self,
        input_ids: list[int],
        *,
        temperature: float,
        max_new_tokens: int,
        top_logprobs_num: int = 0,
        logprob_start_len: int = -1,
        timeout: float | None = None,
        grammar: Grammar | None = None,
    ) -> tuple[int, Any]:
        """One ``/generate`` request: (status, ``meta_info``) or (error status, error body)."""
        payload: dict[str, Any] = {
            "input_ids": input_ids,
            "sampling_params": {
                "temperature": temperature,
                "max_new_tokens": max_new_tokens,
                **_SAMPLING,
                # ignore_eos would also switch off stop_token_ids in SGLang, so it stays off
                "stop_token_ids": self._stop_token_ids,
                "ignore_eos": False,
                "skip_special_tokens": False,
            },
            "return_logprob": True,
            "logprob_start_len": logprob_start_len,
            "top_logprobs_num": top_logprobs_num,
            "return_text_in_logprobs": False,
            "stream": False,
        }
        if grammar is not None:
            payload["sampling_params"]["json_schema"] = grammar.schema_text
        status, body = post(self._http, "/generate", payload, timeout)
        if status >= 400:
            return status, body
        meta = body.get("meta_info") if isinstance(body, dict) else None
        if not isinstance(meta, dict):
            return 502, {"error": "the answer has no meta_info"}
        finish = meta.get("finish_reason")
        if isinstance(finish, dict) and finish.get("type") == "abort":  # an abort can come back as a 200 answer
            return 400, {"error": finish.get("message", "aborted")}
        return status, meta


def _pairs(meta: dict, key: str) -> list[tuple[float | None, int]]:
    """SGLang's ``[logprob, token_id, text]`` triples as (logprob, token_id)."""
    entries = meta.get(key)
    if not isinstance(entries, list):
        raise CapabilityError(f"the SGLang answer has no {key} (return_logprob was asked for)")
    try:
        return [(None if e[0] is None else float(e[0]), int(e[1])) for e in entries]
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise CapabilityError(f"the SGLang answer's {key} are not [logprob, token_id, text] entries: {exc}") from exc


def _tops(meta: dict, key: str) -> list[dict[int, float]]:
    """SGLang's per-position top log-probabilities as {token_id: logprob} (an empty dict for a missing position)."""
    positions = meta.get(key)
    if not isinstance(positions, list):
        raise CapabilityError(f"the SGLang answer has no {key} (top_logprobs_num was asked for)")
    try:
        return [{int(e[1]): float(e[0]) for e in (position or [])} for position in positions]
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise CapabilityError(f"the SGLang answer's {key} are not lists of [logprob, token_id, text]: {exc}") from exc
