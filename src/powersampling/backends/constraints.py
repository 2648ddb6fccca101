"""Token constraints: JSON-schema grammars (xgrammar) and stop strings.

``StopStringConstraint`` masks nothing of its own (its state allows every token, ``None``, unless it wraps a grammar)
and only declares a completion finished once its text contains a stop string: the sampled distribution stays the
model's own, and power sampling targets p^alpha over completions that end at the first stop string.

``JsonSchemaConstraint``: JSON-schema constrained decoding with xgrammar.

A state can start after any generated prefix (``start(generated)`` replays the prefix through a fresh matcher),
which is what Metropolis-Hastings needs: it resamples suffixes from arbitrary cuts. Compiled grammars and tokenizer
tables are cached, so building a constraint for a schema seen before is free; bounded character-class patterns
are compiled as EBNF repetitions (``grammar_build``: the same language, about 100 times cheaper to build).

What the target becomes under a mask: both p and q are renormalized over the allowed tokens at every step, so the
sampled distribution is the step-wise renormalized masked model, and MH targets that model raised to alpha. This
is not p^alpha conditioned on "the text is valid JSON" (that would need the probability mass of every valid
future, which nobody computes); it is the standard constrained-decoding distribution, sharpened.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import CapabilityError, ConfigError
from .grammar_build import json_schema_grammar

_LOCK = threading.Lock()
_COMPILERS: dict[tuple[int, int, tuple[int, ...]], tuple[Any, Any, Any]] = {}
_GRAMMARS: OrderedDict[tuple, Any] = OrderedDict()
_MAX_GRAMMARS = 64


def _compiler_for(vocabulary, vocab_size: int, stop_token_ids: Sequence[int]):
    """xgrammar's tokenizer info and compiler for a vocabulary source: a tokenizer that lists its token pieces
    (``token_pieces()``: raw bytes, special tokens empty, as llama.cpp's vocabulary gives them, no transformers
    tokenizer to build) or a Hugging Face tokenizer."""
    import xgrammar as xgr

    key = (id(vocabulary), int(vocab_size), tuple(sorted(int(i) for i in stop_token_ids)))
    with _LOCK:
        entry = _COMPILERS.get(key)
        if entry is None or entry[0] is not vocabulary:
            stops = list(key[2]) or None
            if hasattr(vocabulary, "token_pieces"):
                info = xgr.TokenizerInfo(
                    vocabulary.token_pieces(), xgr.VocabType.RAW, vocab_size=int(vocab_size), stop_token_ids=stops
                )
            else:
                info = xgr.TokenizerInfo.from_huggingface(vocabulary, vocab_size=int(vocab_size), stop_token_ids=stops)
            # the source is kept alive so its id cannot be reused by another object while cached
            entry = (vocabulary, info, xgr.GrammarCompiler(info))
            _COMPILERS[key] = entry
        return key, entry[1], entry[2]


class JsonSchemaConstraint:
    """Generated text must be one JSON value matching ``schema``, then a stop token.

    ``any_whitespace=False`` gives compact JSON (``", "`` and ``": "`` separators): no tokens are spent on
    layout, and once the closing brace is out the only allowed token is a stop token.
    """

    def __init__(
        self,
        hf_tokenizer,
        schema: Mapping[str, Any] | str,
        *,
        vocab_size: int,
        stop_token_ids: Sequence[int],
        any_whitespace: bool = False,
    ) -> None:
        if hf_tokenizer is None:
            raise CapabilityError("grammar-constrained decoding needs the model's Hugging Face tokenizer")
        if not stop_token_ids:
            raise CapabilityError("grammar-constrained decoding needs at least one stop token id")
        schema_text = schema if isinstance(schema, str) else json.dumps(schema)  # key order is the output order
        self.schema_text = schema_text
        self.any_whitespace = any_whitespace  # a server applying the same schema must build the same grammar
        self.vocab_size = int(vocab_size)
        self.stop_token_ids = frozenset(int(i) for i in stop_token_ids)
        key, self.tokenizer_info, compiler = _compiler_for(hf_tokenizer, vocab_size, list(self.stop_token_ids))
        grammar_key = (key, schema_text, any_whitespace)
        with _LOCK:
            compiled = _GRAMMARS.get(grammar_key)
            if compiled is not None:
                _GRAMMARS.move_to_end(grammar_key)
        if compiled is None:
            try:
                kind, text = json_schema_grammar(schema_text, any_whitespace=any_whitespace)
                if kind == "ebnf":
                    compiled = compiler.compile_grammar(text)
                else:
                    compiled = compiler.compile_json_schema(schema_text, any_whitespace=any_whitespace)
            except Exception as exc:  # xgrammar raises RuntimeError/ValueError with the converter's message
                raise ConfigError(f"the response schema cannot be compiled to a grammar: {exc}") from None
            with _LOCK:
                _GRAMMARS[grammar_key] = compiled
                while len(_GRAMMARS) > _MAX_GRAMMARS:
                    _GRAMMARS.popitem(last=False)
        self.compiled = compiled

    @classmethod
    def for_model(cls, model, schema: Mapping[str, Any] | str, **kwargs) -> JsonSchemaConstraint:
        """The constraint for ``model``'s tokenizer, vocabulary size and stop tokens."""
        tokenizer = getattr(model, "tokenizer", None)
        hf_tokenizer = tokenizer if hasattr(tokenizer, "token_pieces") else getattr(tokenizer, "hf_tokenizer", None)
        if hf_tokenizer is None:
            raise CapabilityError(
                f"model {getattr(model, 'name', model)!r} has no Hugging Face tokenizer; "
                "grammar-constrained decoding is not available for it"
            )
        return cls(
            hf_tokenizer, schema, vocab_size=model.vocab_size, stop_token_ids=sorted(model.stop_token_ids), **kwargs
        )

    def start(self, generated: Sequence[int]) -> GrammarState:
        return GrammarState(self, generated)

    def accepts(self, token_ids: Sequence[int]) -> bool:
        """True when ``token_ids`` is a complete match (with or without the final stop token)."""
        try:
            state = self.start(token_ids)
        except ValueError:
            return False
        return state.matcher.is_completed() or state.matcher.is_terminated()


class GrammarState:
    """Matcher state after a token prefix; implements ``ConstraintState``."""

    def __init__(self, constraint: JsonSchemaConstraint, generated: Sequence[int]) -> None:
        import xgrammar as xgr

        self.constraint = constraint
        self.matcher = xgr.GrammarMatcher(constraint.compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, constraint.vocab_size)
        for position, token in enumerate(generated):
            if not self.matcher.accept_token(int(token)):
                raise ValueError(f"token {int(token)} at generated position {position} does not match the grammar")

    def allowed_tokens(self) -> np.ndarray:
        if self.matcher.is_terminated():
            return np.zeros(self.constraint.vocab_size, dtype=bool)
        self.matcher.fill_next_token_bitmask(self._bitmask)
        bits = np.unpackbits(self._bitmask.numpy().view(np.uint8), bitorder="little")
        return bits[: self.constraint.vocab_size].astype(bool)

    def advance(self, token_id: int) -> None:
        if not self.matcher.accept_token(int(token_id)):
            raise ValueError(f"token {int(token_id)} is not allowed by the grammar here")

    def is_finished(self) -> bool:
        return self.matcher.is_terminated()


class StopStringConstraint:
    """Finishes a completion at the first token after which its decoded text contains a stop string, the way a
    stop token does; masks nothing of its own.

    ``within`` is an optional constraint the completion must also follow (a JSON-schema grammar): its mask is
    used, and the completion finishes when either one finishes.

    Which completions count as finished is a function of the token prefix alone (the decoded text of its last
    ``window`` tokens), checked after every token, so a sampler that restarts from any cut (``start(generated)``)
    sees the same rule as one that decoded straight through: the target of power sampling is p^alpha over
    completions that end at the first stop string (or a stop token, or the length cap), and the exactness
    enumerator can apply the same rule.
    """

    def __init__(self, tokenizer, stops: Sequence[str], *, within=None) -> None:
        stops = tuple(stops)
        if not stops:
            raise ValueError("StopStringConstraint needs at least one stop string")
        if not all(isinstance(s, str) and s for s in stops):
            raise ValueError("stop strings must be non-empty strings")
        if tokenizer is None:
            raise CapabilityError("stop strings need the model's tokenizer (to read the text of the tokens)")
        self.tokenizer = tokenizer
        self.stops = stops
        self.within = within
        # a stop string spans at most one token per UTF-8 byte; a few more tokens before it keep the decoded window
        # from starting inside it (partial characters, a tokenizer's dropped leading space)
        self.window = max(len(s.encode("utf-8")) for s in stops) + 4

    def start(self, generated: Sequence[int]) -> StopStringState:
        return StopStringState(self, list(generated))

    def find(self, text: str) -> int | None:
        """Where the first stop string in ``text`` begins, or None."""
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(found) if found else None

    def truncate(self, text: str) -> tuple[str, bool]:
        """``text`` up to (not including) its first stop string, and whether it had one (OpenAI's ``stop``)."""
        at = self.find(text)
        return (text, False) if at is None else (text[:at], True)


class StopStringState:
    def __init__(self, owner: StopStringConstraint, tokens: list[int]) -> None:
        self.owner = owner
        self.tokens = tokens
        self.inner = owner.within.start(tokens) if owner.within is not None else None
        self.hit_stop = self._tail_has_stop()

    def allowed_tokens(self) -> np.ndarray | None:
        return self.inner.allowed_tokens() if self.inner is not None else None

    def advance(self, token_id: int) -> None:
        self.tokens.append(int(token_id))
        if self.inner is not None:
            self.inner.advance(token_id)
        self.hit_stop = self.hit_stop or self._tail_has_stop()

    def is_finished(self) -> bool:
        return self.hit_stop or (self.inner is not None and self.inner.is_finished())

    def _tail_has_stop(self) -> bool:
        if not self.tokens:
            return False
        return self.owner.find(self.owner.tokenizer.decode(self.tokens[-self.owner.window :])) is not None
