"""``RemoteLM``: the connect-time probe that picks a mode, and log p / log q from what the server returned (see
the package docstring). The wire formats live in ``vllm_api`` and ``sglang_api``."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from ...errors import CapabilityError, ConfigError, ModelLoadError
from ..base import ConstraintState, Continuation, ContinuationRequest
from ..decoding import log_softmax
from ..tokenizers import as_tokenizer, stop_tokens_of
from . import sglang_api
from .masking import allowed_vector, draw_token, matches_served_mask, renormalized, replay, server_grammar
from .sglang_api import SGLangApi
from .vllm_api import VLLMApi
from .wire import WHOLE_VOCABULARY, Draw, Grammar, Refused

APIS = ("auto", "vllm", "sglang")
_SAME_DISTRIBUTION_TOL = 1e-4
_PROBE_TEMPERATURE = 0.5
_PROBE_TOP_K = 5
_SHAPE_TOL = 5e-3  # top-k log-prob differences at two temperatures: same (raw) or scaled by 1/T (processed)
_SCORE_TOL = 0.1  # prefill (scoring) against decode log p of one token: catches misalignment, not rounding


class RemoteLM:
    """``LanguageModel`` over a served model: vLLM's ``/v1/completions`` or SGLang's native ``/generate``.

    ``api``: ``"auto"`` (probe ``/model_info``), ``"vllm"`` or ``"sglang"``. ``tokenizer``: a transformers
    tokenizer (object or local folder) matching the served model; it gives text encoding, the chat template, the
    stop tokens (unless ``stop_token_ids`` is given) and the vocabulary size (unless ``vocab_size`` is given).
    After connecting, ``api`` and ``mode`` say what was found; ``logprobs_are_processed`` is True when the
    server's sampled-token log-probabilities carry the temperature. ``exact_under_constraints`` says whether
    grammar-constrained rows keep exact log p and log q (``inexact_constraints_reason`` says why not).
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
            self._connect(root, api, model, tokenizer, vocab_size, stop_token_ids)
            self.approximate = approximate
            self.thread_safe = True  # calls from several threads go out as concurrent requests
            self.context_length: int | None = None  # the serving engine enforces its own window
            self.max_log_z_gap = 0.0
            self._k = 0
            self.mode, self.logprobs_are_processed = self._probe()
        except BaseException:
            self.close()
            raise

    def _connect(
        self,
        root: str,
        api: str,
        model: str | None,
        tokenizer: Any,
        vocab_size: int | None,
        stop_token_ids: Sequence[int] | None,
    ) -> None:
        info = sglang_api.model_info(self._http) if api in ("auto", "sglang") else None
        if api == "sglang" and info is None:
            raise ModelLoadError(
                f"{root} does not answer SGLang's /model_info or /get_model_info; is it an "
                "SGLang server? (use api='vllm' for a vLLM server)"
            )
        self.tokenizer = as_tokenizer(tokenizer)
        hf = getattr(self.tokenizer, "hf_tokenizer", None)
        self.vocab_size = int(vocab_size or (len(hf) if hf is not None else 0))
        if stop_token_ids is not None:
            self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        else:
            self.stop_token_ids = stop_tokens_of(hf)
        if info is not None:
            self._wire = SGLangApi(self._http, root, self.stop_token_ids, info, self.vocab_size, model)
        else:
            self._wire = VLLMApi(self._http, root, self.stop_token_ids, model)
        self.api = self._wire.name
        self.base_url = self._wire.base_url
        self.model = self._wire.model
        self.name = f"remote:{self.model}"

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._http.close()

    @property
    def exact_under_constraints(self) -> bool:
        """Whether a constraint that masks tokens keeps log p and log q exact: renormalizing them over the
        allowed tokens needs the whole next-token distribution, which only ``full`` mode has. Constraints that
        mask nothing (``StopStringConstraint``) are exact in every mode."""
        return self.mode == "full"

    @property
    def inexact_constraints_reason(self) -> str | None:
        if self.exact_under_constraints:
            return None
        return (
            f"{self.base_url} does not return full-vocabulary log-probabilities, which exact sampling under a "
            "grammar needs (log p and log q renormalized over the allowed tokens at every step): "
            f"{self._wire.full_vocabulary_hint}"
        )

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
            if len(r.prefix) == 0:
                raise ValueError("a request needs at least one prefix token (the prompt)")
        seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=len(requests))]
        futures = [
            self._pool.submit(self._sample_one, r, temperature, seed, deadline) for r, seed in zip(requests, seeds)
        ]
        return [f.result() for f in futures]

    # probing

    def _probe(self) -> tuple[str, bool]:
        prompt = self._probe_prompt()
        return self._probe_vllm(prompt) if self.api == "vllm" else self._probe_sglang(prompt)

    def _probe_prompt(self) -> list[int]:
        if self.tokenizer is not None:
            ids = self.tokenizer.encode("The")
            if ids:
                return ids
        return [1]

    def _probe_vllm(self, prompt: list[int]) -> tuple[str, bool]:
        """A full distribution wins: asked at two temperatures it shows whether the server reports raw or
        processed log-probabilities. Without it, processed sampled log-probabilities (log q) differ from scored
        ones (log p); with neither, only top-k is left."""
        full = self._whole_distribution(prompt, 1.0)
        if full is not None:
            self.vocab_size = self.vocab_size or len(full)
            cooler = self._wire.full_distribution(prompt, _PROBE_TEMPERATURE)
            if cooler is None:
                raise CapabilityError(
                    f"{self.base_url} returned a whole distribution at temperature 1 but not at {_PROBE_TEMPERATURE}"
                )
            processed = not np.allclose(self._dense(full), self._dense(cooler), atol=_SAME_DISTRIBUTION_TOL)
            return "full", processed
        try:
            drawn = self._wire.draw(prompt, max_new_tokens=2, temperature=_PROBE_TEMPERATURE, top_logprobs=1)
        except Refused as exc:
            raise CapabilityError(
                f"{self.base_url} returned no log-probabilities ({exc.detail}); exact power "
                "sampling needs them. Use baseline or best-of-n generation instead."
            ) from None
        scored = self._wire.score(prompt, drawn.tokens)
        if scored is not None and not np.allclose(drawn.sampled, scored, atol=_SAME_DISTRIBUTION_TOL):
            return "score", False  # sampled log-probs carry the temperature: they are log q; scoring gives log p
        reason = (
            "returns only top-k log-probabilities at temperature 1"
            if scored is None or np.allclose(drawn.sampled, scored, atol=_SAME_DISTRIBUTION_TOL)
            else "returns no usable log-probabilities"
        )
        return self._topk_or_refuse(
            prompt,
            (
                f"{self.base_url} {reason}: the proposal's log q needs log Z_t = log sum_v p_t(v)^alpha over the whole "
                "vocabulary. Start vLLM with --max-logprobs -1 (full vocabulary) or --logprobs-mode "
                "processed_logprobs, or pass approximate=True to bound log Z_t from the top-k (not exact; see "
                "RemoteLM's documentation)."
            ),
        )

    def _probe_sglang(self, prompt: list[int]) -> tuple[str, bool]:
        """Temperature-scaled sampled log-probabilities (SGLang's default) win: log q comes with every draw and
        log p from one scoring request, without vocab_size entries per token. Otherwise the whole distribution
        (asked for by vocabulary size), otherwise top-k."""
        k = min(_PROBE_TOP_K, self.vocab_size) if self.vocab_size else _PROBE_TOP_K
        cold = self._wire.draw(prompt, max_new_tokens=1, temperature=1.0, top_logprobs=k)
        warm = self._wire.draw(prompt, max_new_tokens=1, temperature=_PROBE_TEMPERATURE, top_logprobs=k)
        if not (cold.tokens and cold.tops and cold.tops[0] and warm.tops and warm.tops[0]):
            raise CapabilityError(f"{self.base_url} returned no log-probabilities for a one-token generation")
        processed = self._carries_temperature(cold.tops[0], warm.tops[0])
        self._check_scoring_lines_up(prompt, cold)
        if processed:
            return "score", True
        if self._whole_distribution(prompt, 1.0) is not None:
            return "full", False
        reason = (
            "and RemoteLM knows no vocab_size to ask for the whole distribution"
            if not self.vocab_size
            else f"and top_logprobs_num={self.vocab_size} did not return a whole distribution"
        )
        return self._topk_or_refuse(
            prompt,
            (
                f"{self.base_url} (SGLang) reports sampled-token log-probabilities at temperature 1 (the server runs "
                f"with SGLANG_RETURN_ORIGINAL_LOGPROB, or RETURN_ORIGINAL_LOGPROB on mid-2025 releases) {reason}: the "
                "proposal's log q needs log Z_t over the whole vocabulary. Restart SGLang without that environment "
                "variable (by default it reports the temperature-scaled log q, and log p comes from "
                "input_token_logprobs), give RemoteLM the model's vocab_size or tokenizer to read full-vocabulary "
                "top_logprobs_num, or pass approximate=True to bound log Z_t from the top-k (not exact)."
            ),
        )

    def _whole_distribution(self, prompt: list[int], temperature: float) -> dict[int, float] | None:
        """The next-token distribution over at least ``vocab_size`` tokens, or None."""
        try:
            full = self._wire.full_distribution(prompt, temperature)
        except Refused:
            return None
        return full if full is not None and len(full) >= self.vocab_size else None

    def _check_scoring_lines_up(self, prompt: list[int], drawn_at_one: Draw) -> None:
        """Scoring must give log p: the token drawn at temperature 1 has its log p as its sampled value, whether
        or not the server's sampled log-probabilities carry the temperature."""
        token, sampled = drawn_at_one.tokens[0], float(drawn_at_one.sampled[0])
        (scored,) = self._wire.score(prompt, [token])
        if abs(scored - sampled) > _SCORE_TOL:
            raise CapabilityError(
                f"{self.base_url} scores token {token} at {scored:.4f} from input_token_logprobs but sampled it at "
                f"{sampled:.4f} at temperature 1: its prompt log-probabilities do not line up with the "
                "prompt, so log p cannot be read from them"
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
        same = bool(np.allclose(d_t, d_one, atol=_SHAPE_TOL))
        scaled = bool(np.allclose(d_t, d_one / _PROBE_TEMPERATURE, atol=_SHAPE_TOL))
        if same and scaled:  # a flat top-k: only the normalization can tell
            a = np.array([at_one[t] for t in common])
            b = np.array([at_t[t] for t in common])
            return not np.allclose(a, b, atol=_SHAPE_TOL)
        if same or scaled:
            return scaled
        raise CapabilityError(
            f"{self.base_url} returned top log-probabilities at temperature {_PROBE_TEMPERATURE} that are "
            "neither the temperature-1 values nor their temperature-scaled renormalization (a server-side "
            "truncation or logit processor?); exact power sampling cannot use them"
        )

    def _topk_or_refuse(self, prompt: list[int], refusal: str) -> tuple[str, bool]:
        if not self.approximate:
            raise CapabilityError(refusal)
        self._k = self._wire.largest_accepted_k(prompt)
        return "topk", False

    # sampling

    def _sample_one(
        self, request: ContinuationRequest, temperature: float, seed: int, deadline: float | None
    ) -> Continuation:
        if request.max_new_tokens <= 0:
            return _empty()
        prefix = [int(t) for t in request.prefix]
        generated = prefix[request.generated_start :]
        state = request.constraint.start(generated) if request.constraint is not None else None
        grammar = server_grammar(request.constraint, generated)
        if state is not None and grammar is None and state.allowed_tokens() is not None:
            return self._decode_locally(prefix, request.max_new_tokens, state, temperature, seed, deadline)
        timeout = _time_left(deadline)
        if timeout is not None and timeout <= 0:
            return _empty(interrupted=True)
        top_logprobs = {"full": WHOLE_VOCABULARY, "score": 0, "topk": self._k}[self.mode]
        try:
            drawn = self._wire.draw(
                prefix,
                max_new_tokens=request.max_new_tokens,
                temperature=temperature,
                top_logprobs=top_logprobs,
                seed=seed,
                timeout=timeout,
                grammar=grammar,
            )
        except httpx.TimeoutException:
            return _empty(interrupted=True)
        masks, finished = (None, False) if state is None else self._replay(state, drawn, len(generated), grammar)
        drawn = drawn.cut(len(masks)) if finished else drawn
        logp, logq = self._log_p_and_q(prefix, drawn, temperature, masks)
        tokens = drawn.tokens
        stopped = finished or (bool(tokens) and (tokens[-1] in self.stop_token_ids or drawn.server_stopped))
        exact = self.exact_under_constraints or all(m is None for m in masks or [])
        return Continuation(tokens, logp, logq, stopped, False, exact)

    def _replay(
        self, state: ConstraintState, drawn: Draw, generated_before: int, grammar: Grammar | None
    ) -> tuple[list[np.ndarray | None], bool]:
        """The local constraint over the drawn tokens. A disagreement is refused in every mode, also where the
        log-probabilities are not exact anyway: a server that ignored the grammar (an older vLLM warns about an
        unknown field and goes on) would otherwise pass off unconstrained text."""
        masks, finished = replay(state, drawn.tokens)
        if finished or len(masks) == len(drawn.tokens):
            return masks, finished
        token, position = drawn.tokens[len(masks)], generated_before + len(masks)
        if grammar is not None:
            raise CapabilityError(
                f"the server's grammar disagrees with the local one: {self.base_url} drew token {token} at generated "
                f"position {position}, which the local grammar does not allow there (a server builds its JSON "
                "grammar with its own whitespace setting; build the JsonSchemaConstraint with any_whitespace=True "
                "for a server that allows any whitespace)"
            )
        raise CapabilityError(
            f"{self.base_url} drew token {token} at generated position {position}, which the constraint does not "
            "allow there: a server applies only JSON-schema grammars (JsonSchemaConstraint) itself, so another "
            "constraint must allow every token, as StopStringConstraint does"
        )

    def _decode_locally(
        self,
        prefix: list[int],
        max_new_tokens: int,
        state: ConstraintState,
        temperature: float,
        seed: int,
        deadline: float | None,
    ) -> Continuation:
        """A grammar already under way cannot be handed to a server, which starts it afresh at the first generated
        token; so each token is drawn here from the server's whole next-token distribution under the local mask.
        Exact, at one request per token."""
        if not self.exact_under_constraints:
            raise CapabilityError(
                f"{self.inexact_constraints_reason}; a row that continues from inside its "
                "grammar (as power sampling resamples) is drawn token by token from them"
            )
        rng = np.random.default_rng(seed)
        tokens, logp, logq = [], [], []
        stopped, interrupted = state.is_finished(), False
        while not stopped and len(tokens) < max_new_tokens:
            values = self._next_distribution(prefix + tokens, deadline)
            if values is None:
                interrupted = True
                break
            allowed = allowed_vector(state.allowed_tokens(), len(values))
            token, token_logp, token_logq = draw_token(renormalized(values, allowed), temperature, rng)
            tokens.append(token)
            logp.append(token_logp)
            logq.append(token_logq)
            state.advance(token)
            stopped = token in self.stop_token_ids or state.is_finished()
        return Continuation(
            tokens, np.asarray(logp, dtype=np.float64), np.asarray(logq, dtype=np.float64), stopped, interrupted
        )

    def _next_distribution(self, ids: list[int], deadline: float | None) -> np.ndarray | None:
        """The whole next-token distribution at temperature 1 (log p), or None once the deadline has passed."""
        timeout = _time_left(deadline)
        if timeout is not None and timeout <= 0:
            return None
        try:
            distribution = self._wire.full_distribution(ids, 1.0, timeout=timeout)
        except httpx.TimeoutException:
            return None
        if distribution is None:
            raise CapabilityError(f"{self.base_url} stopped returning whole next-token distributions")
        return self._dense(distribution)

    def _log_p_and_q(
        self, prefix: list[int], drawn: Draw, temperature: float, masks: list[np.ndarray | None] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.mode == "score":
            logp = self._wire.score(prefix, drawn.tokens)
            if logp is None:
                raise CapabilityError(f"{self.base_url} stopped returning prompt log-probabilities")
            return logp, drawn.sampled if temperature != 0 else np.zeros(len(drawn.tokens))
        if drawn.tops is None or len(drawn.tops) != len(drawn.tokens):
            raise CapabilityError(
                f"{self.base_url} returned {len(drawn.tops or [])} top log-probability lists "
                f"for {len(drawn.tokens)} tokens"
            )
        if self.mode == "full":
            return self._from_full(drawn.tops, drawn.tokens, temperature, masks)
        return drawn.sampled, self._from_topk(drawn.tops, drawn.sampled, temperature)

    def _from_full(
        self,
        distributions: list[dict[int, float]],
        tokens: list[int],
        temperature: float,
        masks: list[np.ndarray | None] | None = None,
    ):
        logp, logq = np.zeros(len(tokens)), np.zeros(len(tokens))
        for i, (dist, token) in enumerate(zip(distributions, tokens)):
            values = self._dense(dist)
            if self.logprobs_are_processed and temperature not in (0, 1):
                base = log_softmax(values * temperature)
            else:
                base = values
            if masks is not None and masks[i] is not None:
                base = self._under_mask(base, masks[i], i)
            logp[i] = base[token]
            logq[i] = 0.0 if temperature == 0 else log_softmax(base / temperature)[token]
        return logp, logq

    def _under_mask(self, logp: np.ndarray, mask: np.ndarray, index: int) -> np.ndarray:
        allowed = allowed_vector(mask, len(logp))
        if not matches_served_mask(logp, allowed):
            raise CapabilityError(
                f"the server's grammar disagrees with the local one: at drawn token {index} its log-probabilities "
                f"allow {int(np.isfinite(logp).sum())} tokens, the local grammar {int(allowed.sum())}"
            )
        return renormalized(logp, allowed)

    def _from_topk(self, distributions: list[dict[int, float]], sampled: np.ndarray, temperature: float) -> np.ndarray:
        if temperature == 0:
            return np.zeros(len(sampled))
        alpha = 1.0 / temperature
        logq = np.zeros(len(sampled))
        for i, dist in enumerate(distributions):
            log_z, gap = bounded_log_z(np.asarray(list(dist.values()), dtype=np.float64), alpha)
            self.max_log_z_gap = max(self.max_log_z_gap, gap)
            logq[i] = alpha * sampled[i] - log_z
        return logq

    def _dense(self, distribution: dict[int, float]) -> np.ndarray:
        """A ``{token: logprob}`` answer as a vector; ids past ``vocab_size`` (a model's padded vocabulary, larger
        than its tokenizer's) widen it."""
        values = np.full(max([self.vocab_size] + [token + 1 for token in distribution]), -np.inf)
        for token, value in distribution.items():
            values[token] = value if value > -9999.0 else -np.inf  # vLLM writes -inf as -9999.0; SGLang clamps too
        return values


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


def _time_left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _empty(interrupted: bool = False) -> Continuation:
    return Continuation([], np.zeros(0), np.zeros(0), interrupted=interrupted)
