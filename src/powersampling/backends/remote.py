"""Remote backend: a served model that continues exact token-id prefixes, over one of two wire protocols.

* ``api="vllm"``: a vLLM-compatible ``/v1/completions`` server (token-id ``prompt``, ``return_tokens_as_token_ids``).
* ``api="sglang"``: SGLang's native ``POST /generate`` (``input_ids``, ``sampling_params``, ``return_logprob``,
  ``logprob_start_len``, ``top_logprobs_num``; answers in ``meta_info`` as ``[logprob, token_id, text]`` triples).
* ``api="auto"`` (default): SGLang when ``GET /model_info`` (or the older ``/get_model_info``) answers with a
  ``model_path``, vLLM otherwise.

Exact MH needs, per generated token, log p (temperature 1) and log q (the proposal's normalized log-probability).
A capability probe at connect time finds out which of these the server can give. vLLM:

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

SGLang (checked against the 0.5.23 sources): by default the log-probability of each sampled token is taken from
softmax(logits / T) before any top-k/top-p/min-p filtering, i.e. log q; with ``SGLANG_RETURN_ORIGINAL_LOGPROB``
set (``RETURN_ORIGINAL_LOGPROB`` in mid-2025 releases) it is log_softmax(logits), i.e. log p. Input-token
log-probabilities (``input_token_logprobs`` from ``logprob_start_len``) are always log_softmax of the raw logits.
The probe asks for the same next-token top-k at temperatures 1 and 0.5 to tell the two apart, then:

* ``score`` (default SGLang): log q from the sampled tokens, log p from one scoring request over prefix + drawn
  tokens (``input_token_logprobs`` from ``logprob_start_len = len(prefix) - 1``).
* ``full`` (original log-probabilities): ``top_logprobs_num = vocab_size`` gives the whole temperature-1
  distribution per token (checked to sum to 1), log q = log_softmax(log p / T). Costs vocab_size entries per token.
* ``topk``: as for vLLM, only with ``approximate=True``; otherwise ``CapabilityError`` naming the variable to unset.

SGLang stops on its own EOS ids as well as on ``stop_token_ids`` (``ignore_eos`` would disable both), so a
continuation also counts as stopped when the server reports ``finish_reason`` ``{"type": "stop", "matched": id}``
for its last token.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import httpx
import numpy as np

from ..errors import CapabilityError, ConfigError, ModelLoadError
from .base import Continuation, ContinuationRequest
from .decoding import log_softmax
from .tokenizers import as_tokenizer, stop_tokens_of

_UNTRUNCATED = {"top_p": 1.0, "top_k": -1, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                "repetition_penalty": 1.0}
_SAME_DISTRIBUTION_TOL = 1e-4
APIS = ("auto", "vllm", "sglang")
# SGLang: sampling_params keys that switch off truncation and penalties (its SamplingParams rejects unknown keys)
_SGLANG_UNTRUNCATED = {"top_p": 1.0, "top_k": -1, "min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                       "repetition_penalty": 1.0, "min_new_tokens": 0}
_SGLANG_PROBE_TEMPERATURE = 0.5
_SGLANG_SHAPE_TOL = 5e-3   # top-k log-prob differences at two temperatures: same (raw) or scaled by 1/T (processed)
_SGLANG_SCORE_TOL = 0.1    # prefill (scoring) against decode log p of one token: catches misalignment, not rounding
_SGLANG_FULL_MASS_TOL = 1e-5
_SGLANG_TOPK = 20


class RemoteLM:
    """``LanguageModel`` over a served model: vLLM's ``/v1/completions`` or SGLang's native ``/generate``.

    ``api``: ``"auto"`` (probe ``/model_info``), ``"vllm"`` or ``"sglang"``. ``tokenizer``: a transformers
    tokenizer (object or local folder) matching the served model; it gives text encoding, the chat template, the
    stop tokens (unless ``stop_token_ids`` is given) and the vocabulary size (unless ``vocab_size`` is given).
    After connecting, ``api`` and ``mode`` say what was found; ``logprobs_are_processed`` is True when the
    server's sampled-token log-probabilities carry the temperature.
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
        api: str = "auto",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_concurrency: int = 16,
    ) -> None:
        if api not in APIS:
            raise ConfigError(f"unknown remote api {api!r}; choose one of: {', '.join(APIS)}")
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=root, headers=headers, timeout=timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency)
        try:
            self._sglang_info = self._sglang_model_info() if api in ("auto", "sglang") else None
            if api == "sglang" and self._sglang_info is None:
                raise ModelLoadError(f"{root} does not answer SGLang's /model_info or /get_model_info; is it an "
                                     "SGLang server? (use api='vllm' for a vLLM server)")
            self.api = "sglang" if self._sglang_info is not None else "vllm"
            self.base_url = root if self.api == "sglang" else root + "/v1"
            self.tokenizer = as_tokenizer(tokenizer)
            hf = getattr(self.tokenizer, "hf_tokenizer", None)
            self.model = model or self._served_model()
            self.name = f"remote:{self.model}"
            self.vocab_size = int(vocab_size or (len(hf) if hf is not None else 0))
            if stop_token_ids is not None:
                self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
            else:
                self.stop_token_ids = stop_tokens_of(hf)
            self.approximate = approximate
            self.context_length: int | None = None  # the serving engine enforces its own window
            self.max_log_z_gap = 0.0
            self._k = 0
            self.mode, self.logprobs_are_processed = self._probe() if self.api == "vllm" else self._probe_sglang()
        except BaseException:
            self.close()
            raise

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
        if self.api == "sglang":
            return str(self._sglang_info.get("served_model_name") or self._sglang_info["model_path"])
        try:
            response = self._http.get("/v1/models")
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
        if self.api == "sglang":
            return self._sample_one_sglang(request, temperature, deadline)
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
                base = log_softmax(values * temperature)
            else:
                base = values
            logp[i] = base[token]
            logq[i] = 0.0 if temperature == 0 else log_softmax(base / temperature)[token]
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
        status, body = self._post("/v1/completions", payload, timeout)
        if check and status >= 400:
            raise CapabilityError(f"{self.base_url}/completions failed ({status}): {_error_text(body)}")
        return status, body

    def _post(self, path: str, payload: dict, timeout: float | None) -> tuple[int, Any]:
        """POST ``payload``; (status, JSON body, or an error body holding the start of a non-JSON answer).
        Timeouts propagate (callers treat them as deadlines); other transport errors are a ModelLoadError."""
        kwargs = {"timeout": timeout} if timeout is not None else {}
        try:
            response = self._http.post(path, json=payload, **kwargs)
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as exc:
            raise ModelLoadError(f"could not reach {str(self._http.base_url).rstrip('/')}{path}: {exc}") from exc
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"error": response.text[:300]}


    # SGLang's native /generate

    def _sglang_model_info(self) -> dict | None:
        """SGLang's ``/model_info`` (``/get_model_info`` before it was renamed), or None for any other server."""
        for path in ("/model_info", "/get_model_info"):
            try:
                response = self._http.get(path)
                body = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                continue
            if isinstance(body, dict) and "model_path" in body:
                return body
        return None

    def _probe_sglang(self) -> tuple[str, bool]:
        prompt = self._probe_prompt()
        k = min(5, self.vocab_size) if self.vocab_size else 5
        cold = self._generate(prompt, temperature=1.0, max_new_tokens=1, top_logprobs_num=k)
        warm = self._generate(prompt, temperature=_SGLANG_PROBE_TEMPERATURE, max_new_tokens=1, top_logprobs_num=k)
        cold_top, warm_top = _sglang_top(cold, "output_top_logprobs"), _sglang_top(warm, "output_top_logprobs")
        drawn_pairs = _sglang_pairs(cold, "output_token_logprobs")
        if not (cold_top and warm_top and drawn_pairs) or drawn_pairs[0][0] is None:
            raise CapabilityError(f"{self.base_url} returned no log-probabilities for a one-token generation")
        processed = self._carries_temperature(cold_top[0], warm_top[0])
        # input_token_logprobs must give log p: the token drawn at temperature 1 has its log p in both modes
        drawn_logprob, drawn = drawn_pairs[0]
        (scored,) = self._score_sglang(prompt, [drawn])
        if abs(scored - drawn_logprob) > _SGLANG_SCORE_TOL:
            raise CapabilityError(
                f"{self.base_url} scores token {drawn} at {scored:.4f} from input_token_logprobs but sampled it at "
                f"{drawn_logprob:.4f} at temperature 1: its prompt log-probabilities do not line up with the "
                "prompt, so log p cannot be read from them"
            )
        if processed:
            return "score", True
        if self.vocab_size and self._sglang_full_vocabulary(prompt):
            return "full", False
        if self.approximate:
            self._k = _SGLANG_TOPK
            return "topk", False
        reason = ("and RemoteLM knows no vocab_size to ask for the whole distribution" if not self.vocab_size else
                  f"and top_logprobs_num={self.vocab_size} did not return a whole distribution")
        raise CapabilityError(
            f"{self.base_url} (SGLang) reports sampled-token log-probabilities at temperature 1 (the server runs "
            f"with SGLANG_RETURN_ORIGINAL_LOGPROB, or RETURN_ORIGINAL_LOGPROB on mid-2025 releases) {reason}: the "
            "proposal's log q needs log Z_t over the whole vocabulary. Restart SGLang without that environment "
            "variable (by default it reports the temperature-scaled log q, and log p comes from "
            "input_token_logprobs), give RemoteLM the model's vocab_size or tokenizer to read full-vocabulary "
            "top_logprobs_num, or pass approximate=True to bound log Z_t from the top-k (not exact)."
        )

    def _carries_temperature(self, at_one: dict[int, float], at_t: dict[int, float]) -> bool:
        """Whether two answers for the same next-token top-k, at temperature 1 and at the probe temperature, are
        temperature-scaled (differences between tokens grow by 1/T) or both at temperature 1 (unchanged)."""
        common = [t for t in at_one if t in at_t and at_one[t] > -1e4 and at_t[t] > -1e4]
        if not common:
            raise CapabilityError(f"{self.base_url} returned no comparable top log-probabilities at two temperatures")
        top = max(common, key=at_one.get)
        d_one = np.array([at_one[t] - at_one[top] for t in common])
        d_t = np.array([at_t[t] - at_t[top] for t in common])
        same = bool(np.allclose(d_t, d_one, atol=_SGLANG_SHAPE_TOL))
        scaled = bool(np.allclose(d_t, d_one / _SGLANG_PROBE_TEMPERATURE, atol=_SGLANG_SHAPE_TOL))
        if same and scaled:  # a flat top-k: only the normalization can tell
            a = np.array([at_one[t] for t in common])
            b = np.array([at_t[t] for t in common])
            return not np.allclose(a, b, atol=_SGLANG_SHAPE_TOL)
        if same or scaled:
            return scaled
        raise CapabilityError(
            f"{self.base_url} returned top log-probabilities at temperature {_SGLANG_PROBE_TEMPERATURE} that are "
            "neither the temperature-1 values nor their temperature-scaled renormalization (a server-side "
            "truncation or logit processor?); exact power sampling cannot use them"
        )

    def _sglang_full_vocabulary(self, prompt: list[int]) -> bool:
        status, meta = self._generate(prompt, temperature=1.0, max_new_tokens=1, top_logprobs_num=self.vocab_size,
                                      check=False)
        if status >= 400:
            return False
        tops = _sglang_top(meta, "output_top_logprobs")
        values = np.array([v for v in tops[0].values() if v > -1e30] if tops else [], dtype=np.float64)
        if not tops or len(tops[0]) < self.vocab_size or values.size == 0:
            return False
        top = float(np.max(values))
        return abs(top + math.log(float(np.sum(np.exp(values - top))))) < _SGLANG_FULL_MASS_TOL

    def _sample_one_sglang(self, request: ContinuationRequest, temperature: float,
                           deadline: float | None) -> Continuation:
        prefix = [int(t) for t in request.prefix]
        if request.max_new_tokens <= 0:
            return Continuation([], np.zeros(0), np.zeros(0))
        timeout = None
        if deadline is not None:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return Continuation([], np.zeros(0), np.zeros(0), interrupted=True)
        k = {"score": 0, "full": self.vocab_size, "topk": self._k}[self.mode]
        try:
            meta = self._generate(prefix, temperature=temperature, max_new_tokens=request.max_new_tokens,
                                  top_logprobs_num=k, timeout=timeout)
        except httpx.TimeoutException:
            return Continuation([], np.zeros(0), np.zeros(0), interrupted=True)
        pairs = _sglang_pairs(meta, "output_token_logprobs")
        tokens = [t for _, t in pairs]
        if any(v is None for v, _ in pairs):
            raise CapabilityError(f"{self.base_url} returned a sampled token without its log-probability")
        sampled = np.asarray([v for v, _ in pairs], dtype=np.float64)
        if self.mode == "score":
            logq = sampled if temperature != 0 else np.zeros(len(tokens))
            logp = self._score_sglang(prefix, tokens)
        else:
            distributions = [{str(t): v for t, v in d.items()} for d in _sglang_top(meta, "output_top_logprobs")]
            if len(distributions) != len(tokens):
                raise CapabilityError(f"{self.base_url} returned {len(distributions)} top log-probability lists "
                                      f"for {len(tokens)} tokens")
            if self.mode == "full":
                logp, logq = self._from_full(distributions, tokens, temperature)
            else:
                logp = sampled
                logq = self._from_topk(distributions, sampled, temperature)
        finish = meta.get("finish_reason")
        server_stop = isinstance(finish, dict) and finish.get("type") == "stop" and bool(tokens) \
            and finish.get("matched") == tokens[-1]
        stopped = bool(tokens) and (tokens[-1] in self.stop_token_ids or server_stop)
        return Continuation(tokens, logp, logq, stopped, False)

    def _score_sglang(self, prefix: list[int], tokens: list[int]) -> np.ndarray:
        """log p (temperature 1) of ``tokens`` after ``prefix`` from SGLang's input_token_logprobs.

        SGLang answers one entry per input token from ``logprob_start_len`` on, the first without a value (see
        the module docstring), so starting at the last prefix token gives exactly the drawn tokens' log p.
        """
        if not tokens:
            return np.zeros(0)
        start = len(prefix) - 1
        ids = prefix + tokens
        status, meta = self._generate(ids, temperature=1.0, max_new_tokens=1, logprob_start_len=start, check=False)
        if status >= 400:
            raise CapabilityError(f"{self.base_url} refused a scoring request (input_token_logprobs from "
                                  f"logprob_start_len): {_error_text(meta)}")
        entries = _sglang_pairs(meta, "input_token_logprobs")
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

    def _generate(self, input_ids: list[int], *, temperature: float, max_new_tokens: int, check: bool = True,
                  top_logprobs_num: int = 0, logprob_start_len: int = -1, timeout: float | None = None) -> Any:
        """One SGLang ``/generate`` request. Returns ``meta_info`` (``check=True``: errors raise) or
        ``(status, meta_info or error body)`` with ``check=False``."""
        payload: dict[str, Any] = {
            "input_ids": input_ids,
            "sampling_params": {
                "temperature": temperature, "max_new_tokens": max_new_tokens, **_SGLANG_UNTRUNCATED,
                # ignore_eos would also switch off stop_token_ids in SGLang, so it stays off
                "stop_token_ids": sorted(self.stop_token_ids), "ignore_eos": False, "skip_special_tokens": False,
            },
            "return_logprob": True,
            "logprob_start_len": logprob_start_len,
            "top_logprobs_num": top_logprobs_num,
            "return_text_in_logprobs": False,
            "stream": False,
        }
        status, body = self._post("/generate", payload, timeout)
        meta = body.get("meta_info") if isinstance(body, dict) else None
        if status < 400 and not isinstance(meta, dict):
            status, body = 502, {"error": "the answer has no meta_info"}
        elif status < 400:
            finish = meta.get("finish_reason")
            if isinstance(finish, dict) and finish.get("type") == "abort":  # an abort can come back as a 200 answer
                status, body = 400, {"error": finish.get("message", "aborted")}
        if check:
            if status >= 400:
                raise CapabilityError(f"{self.base_url}/generate failed ({status}): {_error_text(body)}")
            return meta
        return (status, meta) if status < 400 else (status, body)


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
    """A {token: logprob} answer as a vector; ids past ``vocab_size`` (a model's padded vocabulary, larger than
    its tokenizer's) widen it."""
    entries = []
    for key, value in distribution.items():
        token = int(key.split(":", 1)[1]) if key.startswith("token_id:") else int(key)
        entries.append((token, float(value["logprob"] if isinstance(value, dict) else value)))
    values = np.full(max([vocab_size] + [token + 1 for token, _ in entries]), -np.inf)
    for token, value in entries:
        values[token] = value if value > -9999.0 else -np.inf  # vLLM writes -inf as -9999.0; SGLang clamps it too
    return values


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict):
            err = err.get("message", err)
        return str(err)[:300]
    return str(body)[:300]


def _sglang_pairs(meta: dict, key: str) -> list[tuple[float | None, int]]:
    """SGLang's ``[logprob, token_id, text]`` triples as (logprob, token_id)."""
    entries = meta.get(key)
    if not isinstance(entries, list):
        raise CapabilityError(f"the SGLang answer has no {key} (return_logprob was asked for)")
    try:
        return [(None if e[0] is None else float(e[0]), int(e[1])) for e in entries]
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise CapabilityError(f"the SGLang answer's {key} are not [logprob, token_id, text] entries: {exc}") from exc


def _sglang_top(meta: dict, key: str) -> list[dict[int, float]]:
    """SGLang's per-position top log-probabilities as {token_id: logprob} (an empty dict for a missing position)."""
    positions = meta.get(key)
    if not isinstance(positions, list):
        raise CapabilityError(f"the SGLang answer has no {key} (top_logprobs_num was asked for)")
    try:
        return [{int(e[1]): float(e[0]) for e in (position or [])} for position in positions]
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise CapabilityError(f"the SGLang answer's {key} are not lists of [logprob, token_id, text]: {exc}") from exc
