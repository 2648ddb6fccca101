"""The small protocol every sampler talks to.

A backend knows one thing: given token prefixes, draw continuations from the model at a temperature and report,
for every drawn token, its log-probability under the base model (temperature 1, ``logp``) and under the
distribution it was actually drawn from (``logq``). Both come from the same forward pass, so a Metropolis-Hastings
or SMC ratio computed from them is exact.

Backends are free to reuse work between calls (a KV cache keyed by token prefix, an engine's prefix cache): the
protocol is stateless from the sampler's side, so correctness never depends on the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ContextLengthError


@dataclass
class Continuation:
    """Tokens drawn after one prefix, with per-token log-probabilities (natural log).

    ``logp[i]`` is log p(token_ids[i] | prefix, token_ids[:i]) at temperature 1 (after the constraint mask, when
    one is used); ``logq[i]`` is the log-probability under the proposal the token was drawn from.
    ``stopped`` is True when the last token is a stop token or the request's constraint accepted the text as
    complete. ``interrupted`` is True when a deadline cut the
    decode short. ``exact`` is False when the row ran under a constraint whose mask the backend could not apply to
    ``logp`` and ``logq`` (a server that applies the grammar itself but returns only unmasked log-probabilities):
    the tokens follow the constraint, the log-probabilities are the unmasked model's, and samplers that need the
    target's values (power sampling, SMC) must not use them. ``entropy[i]`` is the entropy (nats) of p's next-token
    distribution that ``token_ids[i]`` was drawn after, from the same forward pass; only when the request asked for
    it (``ContinuationRequest.entropy``) and the backend runs the local decode core, else None.
    """

    token_ids: list[int]
    logp: np.ndarray
    logq: np.ndarray
    stopped: bool = False
    interrupted: bool = False
    exact: bool = True
    entropy: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.token_ids)


class ConstraintState(Protocol):
    """Where a constraint stands after the tokens fed to it so far."""

    def allowed_tokens(self) -> np.ndarray | None:
        """Boolean mask over the vocabulary of tokens allowed next (None: every token)."""

    def advance(self, token_id: int) -> None:
        """Consume one token (which must be allowed)."""

    def is_finished(self) -> bool:
        """True when the constraint accepts the text so far as complete and nothing more may follow."""


class TokenConstraint(Protocol):
    """A constraint on generated tokens (for example a JSON schema grammar).

    ``start(generated)`` returns a state after the already generated tokens (prompt excluded). Constraints make
    the target the step-wise renormalized masked model: at each step both p and q are renormalized over the
    allowed tokens.
    """

    def start(self, generated: Sequence[int]) -> ConstraintState: ...


@runtime_checkable
class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a chat-formatted prompt, ending where the assistant's reply starts."""


@runtime_checkable
class LanguageModel(Protocol):
    """What samplers need from a model.

    A model may also state ``context_length``: the most tokens (prompt and generated) one row can hold, or None
    when unknown. It is optional (read with ``getattr``) so that models written before it still qualify; see
    ``check_context_length``.
    """

    name: str
    vocab_size: int
    stop_token_ids: frozenset[int]
    tokenizer: Tokenizer | None

    def sample(
        self,
        requests: Sequence[ContinuationRequest],
        temperature: float,
        rng: np.random.Generator,
        *,
        deadline: float | None = None,
    ) -> list[Continuation]:
        """Draw one continuation per request, all rows decoded together where the engine allows.

        ``temperature == 0`` means greedy (``logq`` is then 0 for the chosen token). Decoding of a row stops at a
        stop token, at the request's ``max_new_tokens``, when its constraint finishes, or at ``deadline``
        (``time.monotonic()`` seconds).
        """
        ...


@runtime_checkable
class NextTokenModel(Protocol):
    """A model that also gives whole next-token distributions (the local backends do; samplers that need them,
    such as scalable power sampling, check for this)."""

    def next_token_logprobs(self, requests: Sequence[ContinuationRequest]) -> np.ndarray:
        """log p at temperature 1 of every token after each request's prefix, its constraint's mask applied and
        renormalized: a (rows, vocab) array."""
        ...


@dataclass
class ContinuationRequest:
    """One row to decode: the full prefix (prompt and generated tokens), and how many new tokens at most.

    ``generated_start`` is where the prompt ends inside ``prefix``; a constraint is started on
    ``prefix[generated_start:]``. The last three fields are honoured by the local decode core only (backends with
    ``next_token_logprobs``; samplers check for it): ``entropy`` asks for each drawn token's next-token entropy,
    and ``defensive_weight`` w > 0 draws every token from the mixture (1 - w) softmax(l / T) + w softmax(l /
    ``defensive_temperature``) instead of softmax(l / T), with log q the mixture's.
    """

    prefix: Sequence[int]
    max_new_tokens: int
    generated_start: int = 0
    constraint: TokenConstraint | None = None
    tags: dict = field(default_factory=dict)
    entropy: bool = False
    defensive_weight: float = 0.0
    defensive_temperature: float = 1.0


def check_context_length(model: LanguageModel, prompt_tokens: int, max_new_tokens: int) -> None:
    """Raise ``ContextLengthError`` when ``prompt_tokens + max_new_tokens`` exceeds the model's ``context_length``
    (models that state none are not checked): decoding past the window fails late in llama.cpp and vLLM, after
    minutes of work, and silently degrades in transformers."""
    limit = getattr(model, "context_length", None)
    if limit is not None and prompt_tokens + max_new_tokens > limit:
        raise ContextLengthError(
            f"the prompt has {prompt_tokens} tokens and up to {max_new_tokens} new tokens were asked for: "
            f"{prompt_tokens + max_new_tokens} is more than the context length of {model.name} ({limit} tokens)"
        )
