"""Remote backend: a vLLM-compatible ``/v1/completions`` server that takes token-id prompts.

Exact MH needs, per generated token, log p (temperature 1) and log q (the proposal's normalized log-probability).
A capability probe at connect time finds out which of these the server can give:

* ``full``: the server returns the full-vocabulary distribution for every generated token (vLLM started with
  ``--max-logprobs -1``, request ``logprobs=-1``). In vLLM's default ``raw_logprobs`` mode that is log p, and
  log q = log_softmax(log p / T); in ``processed_logprobs`` mode it is log q, and log p = log_softmax(T * log q).
  Which of the two is detected by asking for the same next-token distribution at two temperatures.
* ``score``: the server returns processed log-probabilities (log q) for sampled tokens only, and log p comes from
  one scoring request (``prompt_logprobs``) over the prefix and the drawn tokens (vLLM with
  ``--logprobs-mode processed_logprobs``).
* ``topk``: only the top-k log p is available. log q then needs log Z_t = log sum_v p_t(v)^alpha (alpha = 1/T),
  which top-k cannot give exactly; the server is refused with ``CapabilityError`` unless ``approximate=True``,
  where log Z_t is estimated inside its bounds [Z_k, Z_k + r * p_min^(alpha-1)] (Z_k the sum over the top k,
  r the mass outside them, p_min the smallest top-k probability): see ``bounded_log_z``. The widest gap seen is
  kept in ``max_log_z_gap``.

Every request disables truncation (top_k -1, top_p 1, min_p 0, no penalties): vLLM can otherwise load a model's
generation_config defaults (start it with ``--generation-config vllm``).
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx
import numpy as np

from ..errors import CapabilityError, ModelLoadError
from .base import Continuation, ContinuationRequest

_UNTRUNCATED = {"top_p": 1.0, "top_k": -1, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "repetition_penalty": 1.0}
_SAME_DISTRIBUTION_TOL = 1e-4


class RemoteLM:
    """``LanguageModel`` over a vLLM-compatible completion server.

    ``tokenizer``: a transformers tokenizer (object or local folder) matching the served model; it gives text
    encoding, the chat template and the stop tokens (unless ``stop_token_ids`` is given).
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        tokenizer: Any = None,
        vocab_size: int | None = None,
        stop_token_ids: Sequence[int] | None = None,
        approximate: bool = False,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_concurrency: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency)
        self.tokenizer = _wrap_tokenizer(tokenizer)
        hf = getattr(self.tokenizer, "hf_tokenizer", None)
        self.model = model or self._served_model()
        self.name = f"remote:{self.model}"
        self.vocab_size = int(vocab_size or (len(hf) if hf is not None else 0))
        if stop_token_ids is not None:
            self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        elif hf is not None:
            from .hf import stop_token_ids_of

            class _NoConfig:
                config = None

            self.stop_token_ids = stop_token_ids_of(_NoConfig(), hf)
        else:
            self.stop_token_ids = frozenset()
        self.approximate = approximate
        self.max_log_z_gap = 0.0
        self._k = 0
        self.mode, self.logprobs_are_processed = self._probe()

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()

    # the protocol

    def sample(
        self,
        requests: Sequence[ContinuationRequest],
        temperature: float,
        rng: np.random.Generator,
        *,
        deadline: float | None = None,
    ) -> list[Continuation]:
        for r in requests:
            if r.constraint is not None:
                raise CapabilityError(
                    "the remote backend cannot apply token constraints (grammar masks) with exact log-probabilities; "
                    "use a local backend (llama.cpp or transformers) for constrained power sampling"
                )
            if len(r.prefix) == 0:
                raise ValueError("a request needs at least one prefix token (the prompt)")
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=len(requests))]
        futures = [self._pool.submit(self._sample_one, r, temperature, seed, deadline)
                   for r, seed in zip(requests, seeds)]
        return [f.result() for f in futures]

    # probing

    def _served_model(self) -> str:
        try:
            response = self._http.get("/models")
            response.raise_for_status()
            return response.json()["data"][0]["id"]
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise ModelLoadError(f"could not list models at {self.base_url}/models: {exc}") from exc

    def _probe(self) -> tuple[str, bool]:
        probe_prompt = self._probe_prompt()
        status, body = self._complete(probe_prompt, max_tokens=1, temperature=1.0, logprobs=-1, check=False)
        if status >= 400:
            detail = _error_text(body)
            if "prompt" in detail.lower() or status == 422 and "logprobs" not in detail.lower():
                # distinguish "token ids refused" from "logprobs=-1 refused" with a plain token-id request
                status_plain, body_plain = self._complete(probe_prompt, max_tokens=1, temperature=1.0, logprobs=1,
                                                          check=False)
                if status_plain >= 400:
                    raise CapabilityError(
                        f"{self.base_url} does not accept token-id prompts ({_error_text(body_plain)}); exact power "
                        "sampling needs continuation from an exact token prefix. Use vLLM serve or a local backend."
                    )
            return self._probe_without_full_vocab(probe_prompt), False
        choice = body["choices"][0]
        full = _top_logprobs(choice)[0]
        if self.vocab_size and len(full) < self.vocab_size:
            return self._probe_without_full_vocab(probe_prompt), False
        if not self.vocab_size:
            self.vocab_size = len(full)
        # raw or processed: the same next-token distribution asked at two temperatures
        _, cooler = self._complete(probe_prompt, max_tokens=1, temperature=0.5, logprobs=-1)
        a = _dense(full, self.vocab_size)
        b = _dense(_top_logprobs(cooler["choices"][0])[0], self.vocab_size)
        processed = not np.allclose(a, b, atol=_SAME_DISTRIBUTION_TOL)
        return "full", processed

    def _probe_without_full_vocab(self, probe_prompt: list[int]) -> str:
        status, body = self._complete(probe_prompt, max_tokens=2, temperature=0.5, logprobs=1, check=False)
        if status >= 400:
            raise CapabilityError(f"{self.base_url} returned no log-probabilities ({_error_text(body)}); exact power "
                                  "sampling needs them. Use baseline or best-of-n generation instead.")
        choice = body["choices"][0]
        tokens = _token_ids(choice)
        sampled = [float(x) for x in choice["logprobs"]["token_logprobs"]]
        scored = self._score(probe_prompt, tokens)
        if scored is not None and not np.allclose(sampled, scored, atol=_SAME_DISTRIBUTION_TOL):
            return "score"  # sampled log-probs carry the temperature: they are log q; the scoring call gives log p
        if self.approximate:
            self._k = self._largest_accepted_k(probe_prompt)
            return "topk"
        reason = ("returns only top-k log-probabilities at temperature 1" if scored is None or
                  np.allclose(sampled, scored, atol=_SAME_DISTRIBUTION_TOL) else "returns no usable log-probabilities")
        raise CapabilityError(
            f"{self.base_url} {reason}: the proposal's log q needs log Z_t = log sum_v p_t(v)^alpha over the whole "
            "vocabulary. Start vLLM with --max-logprobs -1 (full vocabulary) or --logprobs-mode processed_logprobs, "
            "or pass approximate=True to bound log Z_t from the top-k (not exact; see RemoteLM's documentation)."
        )

    def _probe_prompt(self) -> list[int]:
        if self.tokenizer is not None:
            ids = self.tokenizer.encode("The")
            if ids:
                return ids
        return [1]

    # sampling

    def _sample_one(self, request: ContinuationRequest, temperature: float, seed: int,
                    deadline: float | None) -> Continuation:
        prefix = [int(t) for t in request.prefix]
        if request.max_new_tokens <= 0:
            return Continuation([], np.zeros(0), np.zeros(0))
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return Continuation([], np.zeros(0), np.zeros(0), interrupted=True)
        logprobs = {"full": -1, "score": 0, "topk": self._topk()}[self.mode]
        try:
            _, body = self._complete(prefix, max_tokens=request.max_new_tokens, temperature=temperature,
                                     logprobs=logprobs, seed=seed, timeout=timeout)
        except httpx.TimeoutException:
            return Continuation([], np.zeros(0), np.zeros(0), interrupted=True)
        choice = body["choices"][0]
        tokens = _token_ids(choice)
        sampled = np.asarray([float(x) for x in choice["logprobs"]["token_logprobs"]], dtype=np.float64)
        if self.mode == "full":
            logp, logq = self._from_full(_top_logprobs(choice), tokens, temperature)
        elif self.mode == "score":
            logq = sampled if temperature != 0 else np.zeros(len(tokens))
            scored = self._score(prefix, tokens)
            if scored is None:
                raise CapabilityError(f"{self.base_url} stopped returning prompt log-probabilities")
            logp = np.asarray(scored, dtype=np.float64)
        else:
            logp = sampled
            logq = self._from_topk(_top_logprobs(choice), sampled, temperature)
        stopped = bool(tokens) and tokens[-1] in self.stop_token_ids
        return Continuation(tokens, logp, logq, stopped, False)

    def _from_full(self, distributions: list[dict], tokens: list[int], temperature: float):
        logp, logq = np.zeros(len(tokens)), np.zeros(len(tokens))
        for i, (dist, token) in enumerate(zip(distributions, tokens)):
            values = _dense(dist, self.vocab_size)
            if self.logprobs_are_processed and temperature not in (0, 1):
                base = _log_softmax(values * temperature)
            else:
                base = values
            logp[i] = base[token]
            logq[i] = 0.0 if temperature == 0 else _log_softmax(base / temperature)[token]
        return logp, logq

    def _from_topk(self, distributions: list[dict], sampled: np.ndarray, temperature: float) -> np.ndarray:
        if temperature == 0:
            return np.zeros(len(sampled))
        alpha = 1.0 / temperature
        logq = np.zeros(len(sampled))
        for i, dist in enumerate(distributions):
            log_z, gap = bounded_log_z(np.asarray(list(dist.values()), dtype=np.float64), alpha)
            self.max_log_z_gap = max(self.max_log_z_gap, gap)
            logq[i] = alpha * sampled[i] - log_z
        return logq

    def _topk(self) -> int:
        return self._k

    def _largest_accepted_k(self, probe_prompt: list[int]) -> int:
        for k in (20, 10, 5, 2, 1):
            status, _ = self._complete(probe_prompt, max_tokens=1, temperature=1.0, logprobs=k, check=False)
            if status < 400:
                return k
        raise CapabilityError(f"{self.base_url} refuses every top-k log-probability request")

    def _score(self, prefix: list[int], tokens: list[int]) -> list[float] | None:
        """log p (temperature 1) of ``tokens`` after ``prefix`` from prompt log-probabilities, or None when the
        server does not return them."""
        if not tokens:
            return []
        status, body = self._complete(prefix + tokens, max_tokens=1, temperature=1.0, prompt_logprobs=0,
                                      check=False)
        if status >= 400:
            return None
        entries = body["choices"][0].get("prompt_logprobs") or body.get("prompt_logprobs")
        if not entries:
            return None
        out = []
        for entry, token in zip(entries[len(prefix):], tokens):
            value = entry.get(str(token)) if isinstance(entry, dict) else None
            if value is None:
                return None
            out.append(float(value["logprob"] if isinstance(value, dict) else value))
        return out

    def _complete(self, prompt: list[int], *, max_tokens: int, temperature: float, check: bool = True,
                  logprobs: int | None = None, prompt_logprobs: int | None = None, seed: int | None = None,
                  timeout: float | None = None) -> tuple[int, dict]:
        payload: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
            "return_tokens_as_token_ids": True, "skip_special_tokens": False, "ignore_eos": True,
            "stop_token_ids": sorted(self.stop_token_ids), **_UNTRUNCATED,
        }
        if logprobs is not None:
            payload["logprobs"] = logprobs
        if prompt_logprobs is not None:
            payload["prompt_logprobs"] = prompt_logprobs
        if seed is not None:
            payload["seed"] = seed
        kwargs = {"timeout": timeout} if timeout is not None else {}
        try:
            response = self._http.post("/completions", json=payload, **kwargs)
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as exc:
            raise ModelLoadError(f"could not reach {self.base_url}/completions: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text[:300]}
        if check and response.status_code >= 400:
            raise CapabilityError(f"{self.base_url}/completions failed ({response.status_code}): {_error_text(body)}")
        return response.status_code, body


def bounded_log_z(top_logp: np.ndarray, alpha: float) -> tuple[float, float]:
    """An estimate of log Z = log sum_v p(v)^alpha from the top-k log p only, and the width of its bounds (log).

    Lower bound: the top-k terms. Upper bound: the remaining mass r = 1 - sum_k p is spread over tokens each at
    most p_min (the smallest top-k probability), so its terms sum to at most r * p_min^(alpha-1) for alpha >= 1.
    The estimate is the midpoint of the bounds in Z; the true value is within ``gap`` nats of it.
    """
    if alpha < 1.0:
        raise CapabilityError("the top-k bound on log Z_t needs alpha >= 1 (proposal temperature <= 1)")
    top_logp = np.sort(np.asarray(top_logp, dtype=np.float64))[::-1]
    z_low = float(np.sum(np.exp(alpha * top_logp)))
    rest = max(0.0, 1.0 - float(np.sum(np.exp(top_logp))))
    z_high = z_low + rest * float(np.exp(top_logp[-1])) ** (alpha - 1.0)
    return math.log(0.5 * (z_low + z_high)), math.log(z_high) - math.log(z_low)


def _wrap_tokenizer(tokenizer):
    if tokenizer is None:
        return None
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    if hasattr(tokenizer, "chat_prompt"):
        return tokenizer
    from .hf import HFTokenizer

    return HFTokenizer(tokenizer)


def _token_ids(choice: dict) -> list[int]:
    out = []
    for token in choice["logprobs"]["tokens"]:
        if not (isinstance(token, str) and token.startswith("token_id:")):
            raise CapabilityError("the server did not return token ids (needs return_tokens_as_token_ids)")
        out.append(int(token.split(":", 1)[1]))
    return out


def _top_logprobs(choice: dict) -> list[dict]:
    return choice["logprobs"]["top_logprobs"]


def _dense(distribution: dict, vocab_size: int) -> np.ndarray:
    values = np.full(vocab_size, -np.inf)
    for key, value in distribution.items():
        token = int(key.split(":", 1)[1]) if key.startswith("token_id:") else int(key)
        value = float(value["logprob"] if isinstance(value, dict) else value)
        values[token] = value if value > -9999.0 else -np.inf  # vLLM writes -inf as -9999.0
    return values


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x)
    return x - (m + np.log(np.sum(np.exp(x - m))))


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:300]
    return str(body)[:300]
