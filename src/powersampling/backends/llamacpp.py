"""llama.cpp backend (llama-cpp-python, GGUF files): full-vocabulary logits, our own sampling loop.

Why not ``Llama.generate`` / ``create_completion``: their sampler chain truncates by default (top_k 40, top_p 0.95,
min_p 0.05), which silently changes both the proposal and the target. Here llama.cpp only evaluates tokens; every
draw, log p and log q is computed in numpy (float64) from the same full logit vector.

Rows are decoded together: one llama.cpp context holds up to ``n_seq_max`` KV sequences ("slots") in a unified
cache, and every decode step evaluates one token of every active row in a single ``llama_decode`` call. A row
starts from the slot with the longest common token prefix: the slot is trimmed at the cut, or, when another row of
the same call already owns it, the shared prefix is copied into a spare slot (``llama_memory_seq_cp`` shares the
cache cells, nothing is re-encoded). MH proposals drawn from one state at several cuts, SMC particles and best-of-n
candidates then cost only their own suffixes, evaluated side by side.

Path-independent log p: llama.cpp switches matrix-multiplication kernels by batch size, at a size that depends on
the quantization type and the CPU. Measured here: the embedded Q4_1 model gives bit-identical logits for batches of
up to 63 tokens (from one sequence or from many) and logits up to 1.8 nats away at 64; Qwen2.5-0.5B Q4_K_M is
identical up to 16 and differs at 32. MH needs p(x) to be one function of the tokens, so at load time a probe finds
the largest batch (32, 16, 8, 4 or 2 tokens per ``llama_decode`` call, ``eval_batch``) at which a 40-token
sequence fed in batches, and fed next to a second row, gives exactly the logits of one-token evaluation; every
later call stays within it. If no size passes, tokens are fed one per call (exact, slower) with a warning.

Logits are requested only where a row needs them (the last prefix token and each generated token).
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelLoadError
from .base import Continuation, ContinuationRequest
from .decoding import Row, common_prefix_length, decode, next_token_logprobs
from .tokenizers import LlamaCppTokenizer, end_of_generation_tokens

if TYPE_CHECKING:  # the engine's types, for annotations only: llama_cpp loads when a GGUF model does
    from llama_cpp import Llama

DEFAULT_N_CTX = 8192  # cells shared by all sequences (a unified cache)
DEFAULT_N_SEQ_MAX = 16  # rows decoded side by side
_MAX_BATCH = 32  # tokens per llama_decode call at most; the load-time probe may lower it (see the docstring)
_EVAL_BATCH_CANDIDATES = (32, 16, 8, 4, 2)
_PROBE_TOKENS = np.arange(40, dtype=np.int64) * 7919 + 17
_INVARIANCE_CACHE: dict[tuple, bool] = {}


class LlamaCppLM:
    """A GGUF model run by llama.cpp implementing the ``LanguageModel`` protocol.

    Up to ``n_seq_max`` rows are decoded side by side in one context; see the module docstring for the cache
    policy and the batch-invariance probe.
    """

    def __init__(
        self,
        llama: Llama,
        *,
        name: str,
        gguf_path: str | None = None,
        n_ctx: int = DEFAULT_N_CTX,
        n_seq_max: int = DEFAULT_N_SEQ_MAX,
        n_threads: int = 1,
    ) -> None:
        import llama_cpp

        self._lib = llama_cpp
        self.llama = llama  # owns the weights and the vocabulary; its own small context is not used for decoding
        self.name = name
        self.vocab_size = int(llama.n_vocab())
        self.n_ctx = int(n_ctx)
        self.n_seq_max = int(n_seq_max)
        self.n_threads = int(n_threads)
        self.tokenizer = LlamaCppTokenizer(llama, gguf_path)
        self.stop_token_ids = end_of_generation_tokens(llama)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = params.n_ubatch = _MAX_BATCH
        params.n_seq_max = self.n_seq_max
        params.kv_unified = True  # one cell pool: sequences share the cells of a common prefix
        params.n_threads = params.n_threads_batch = self.n_threads
        self._ctx = llama_cpp.llama_init_from_model(llama.model, params)
        if not self._ctx:
            raise ModelLoadError(
                f"llama.cpp could not create a context of {self.n_ctx} tokens x {self.n_seq_max} sequences for {name}"
            )
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx))  # llama.cpp may round the size up
        self._batch = llama_cpp.llama_batch_init(_MAX_BATCH, 0, 1)
        # free the engine before interpreter shutdown: Llama.__del__ at shutdown prints a TypeError traceback
        atexit.register(_close_if_alive, weakref.ref(self))
        self._slots: list[list[int]] = [[] for _ in range(self.n_seq_max)]  # token ids each sequence holds
        self._last_used = [0] * self.n_seq_max
        self._busy: set[int] = set()  # slots of the rows being decoded: never evicted to make room
        self._clock = 0
        self.prefill_tokens = 0
        self.reused_tokens = 0
        self.decode_calls = 0
        self.cache_evictions = 0
        self.eval_batch = self._probe_batch_invariance()  # tokens per llama_decode call
        if self.eval_batch == 1:
            import warnings

            warnings.warn(
                f"llama.cpp gives {name} different logits for batched and one-token evaluation on this "
                "machine; feeding one token per call (exact, slower)",
                RuntimeWarning,
                stacklevel=2,
            )

    @property
    def context_length(self) -> int:
        """The most tokens one row can hold: the context's cells (shared by all rows, so a row alone can fill them)."""
        return self.n_ctx

    # the protocol

    def sample(
        self,
        requests: Sequence[ContinuationRequest],
        temperature: float,
        rng: np.random.Generator,
        *,
        deadline: float | None = None,
    ) -> list[Continuation]:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        for r in requests:
            if len(r.prefix) == 0:
                raise ValueError("a request needs at least one prefix token (the prompt)")
            if len(r.prefix) + r.max_new_tokens > self.n_ctx:
                raise ValueError(
                    f"prefix ({len(r.prefix)} tokens) + max_new_tokens ({r.max_new_tokens}) exceeds the llama.cpp "
                    f"context of {self.n_ctx} tokens; load the model with a larger n_ctx"
                )
        results: list[Continuation | None] = [None] * len(requests)
        for group in self._groups(requests):
            continuations = decode(
                _SlotBatch(self), [requests[i] for i in group], temperature, rng, self.stop_token_ids, deadline=deadline
            )
            for index, continuation in zip(group, continuations):
                results[index] = continuation
        return results  # type: ignore[return-value]

    def next_token_logprobs(self, requests: Sequence[ContinuationRequest]) -> np.ndarray:
        out = np.empty((len(requests), self.vocab_size))
        for group in self._groups(requests):
            out[group] = next_token_logprobs(_SlotBatch(self), [requests[i] for i in group], self.stop_token_ids)
        return out

    def clear_cache(self) -> None:
        self._lib.llama_memory_clear(self._memory, True)
        self._slots = [[] for _ in range(self.n_seq_max)]

    def next_token_logits(self, prefix: Sequence[int]) -> np.ndarray:
        """Raw float64 logits for the token after ``prefix`` (through the same cache as sampling)."""
        (seq,) = self._place([[int(t) for t in prefix]])
        return self._prefill([seq], [[int(t) for t in prefix]])[0].astype(np.float64)

    def close(self) -> None:
        """Free the decoding context and the model; the backend cannot be used afterwards."""
        if self._ctx:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._ctx = None
        close_llama = getattr(self.llama, "close", None)
        if close_llama is not None:
            close_llama()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass

    # internals: scheduling

    def _groups(self, requests: Sequence[ContinuationRequest]) -> list[list[int]]:
        """Rows in groups that fit the sequence slots and the context, longest prefixes first so that rows cut from
        one state share a group. A group's cells are bounded by its first (longest) prefix plus, per row, the part
        of its prefix not shared with that one (shared cells are copied by reference) and its max_new_tokens."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i].prefix))
        groups: list[list[int]] = []
        cells = 0
        head: np.ndarray = np.zeros(0, dtype=np.int64)
        for i in order:
            prefix = np.asarray(requests[i].prefix, dtype=np.int64)
            own = len(prefix) - common_prefix_length(head, prefix) if groups else len(prefix)
            need = own + requests[i].max_new_tokens
            if not groups or len(groups[-1]) == self.n_seq_max or cells + need > self.n_ctx:
                groups.append([])
                head, cells = prefix, len(prefix)
                need = requests[i].max_new_tokens
            groups[-1].append(i)
            cells += need
        return groups

    def _place(self, prefixes: list[list[int]]) -> list[int]:
        """Give every prefix a sequence slot holding the longest cached part of it (at most all but its last
        token, which is fed again for its logits); returns the slots. Copies happen before trims, so a slot can
        seed other rows and keep its own."""
        arrays = [np.asarray(p, dtype=np.int64) for p in prefixes]
        slot_arrays = [np.asarray(s, dtype=np.int64) for s in self._slots]
        best, common = [], []
        for p in arrays:
            lengths = [min(common_prefix_length(s, p), len(p) - 1) for s in slot_arrays]
            b = int(np.argmax(lengths))
            best.append(b)
            common.append(lengths[b])
        claimed: dict[int, int] = {}  # slot -> row
        assignment = [-1] * len(prefixes)
        copies = []  # (source slot, target slot, length)
        for row in sorted(range(len(prefixes)), key=lambda r: -common[r]):
            if common[row] > 0 and best[row] not in claimed:
                claimed[best[row]] = row
                assignment[row] = best[row]
        for row in range(len(prefixes)):
            if assignment[row] >= 0:
                continue
            spare = [s for s in range(self.n_seq_max) if s not in claimed]  # every source slot is claimed
            target = min(spare, key=lambda s: (len(self._slots[s]) > 0, self._last_used[s]))
            claimed[target] = row
            assignment[row] = target
            if common[row] > 0 and best[row] != target:
                copies.append((best[row], target, common[row]))
            elif best[row] != target:
                common[row] = 0
        self._busy = set(assignment)
        for source, target, length in copies:
            self._lib.llama_memory_seq_rm(self._memory, target, -1, -1)
            self._lib.llama_memory_seq_cp(self._memory, source, target, 0, length)
        new_slots = {target: self._slots[source][:length] for source, target, length in copies}
        for row, slot in enumerate(assignment):
            keep = common[row]
            if slot in new_slots:
                self._slots[slot] = new_slots[slot]
            else:
                self._lib.llama_memory_seq_rm(self._memory, slot, keep, -1)
                self._slots[slot] = self._slots[slot][:keep]
            self._clock += 1
            self._last_used[slot] = self._clock
            self.reused_tokens += keep
        return assignment

    # internals: evaluation

    def _prefill(
        self, slots: list[int], prefixes: list[list[int]], deadline: float | None = None
    ) -> list[np.ndarray] | None:
        """Feed each prefix's uncached tail into its slot; the logits after each prefix's last token (None when
        ``deadline`` passed between two ``llama_decode`` calls)."""
        entries = []
        for row, (slot, prefix) in enumerate(zip(slots, prefixes)):
            start = len(self._slots[slot])
            self.prefill_tokens += len(prefix) - start
            for position in range(start, len(prefix)):
                entries.append((prefix[position], position, slot, row if position == len(prefix) - 1 else -1))
        return self._evaluate(entries, len(prefixes), deadline)

    def _evaluate(
        self, entries: list[tuple[int, int, int, int]], n_rows: int, deadline: float | None = None
    ) -> list[np.ndarray] | None:
        """Decode (token, position, slot, row or -1) entries in order; logits of the entries that name a row, or
        None when ``deadline`` passed between two calls (the slots then record what was fed)."""
        logits: list[np.ndarray | None] = [None] * n_rows
        chunk = self.eval_batch
        start = 0
        while start < len(entries):
            part = entries[start : start + chunk]
            self._decode(part)
            for i, (_, _, _, row) in enumerate(part):
                if row >= 0:
                    pointer = self._lib.llama_get_logits_ith(self._ctx, i)
                    if not pointer:  # reading through a NULL pointer would kill the process, not raise
                        raise RuntimeError(f"llama.cpp returned no logits for output {i} of a {len(part)}-token batch")
                    logits[row] = np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy()
            start += len(part)
            if deadline is not None and start < len(entries) and time.monotonic() > deadline:
                entries = entries[:start]
                logits = None
                break
        for token, _, slot, _ in entries:
            self._slots[slot].append(token)
        return logits  # type: ignore[return-value]

    def _decode(self, entries: list[tuple[int, int, int, int]]) -> None:
        batch = self._batch
        batch.n_tokens = len(entries)
        for i, (token, position, slot, row) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot
            batch.logits[i] = row >= 0
        status = self._lib.llama_decode(self._ctx, batch)
        if status == 1:  # no room in the cache: drop the sequences no running row uses, then retry once
            self.cache_evictions += 1
            busy = self._busy | {slot for _, _, slot, _ in entries}
            for slot in range(self.n_seq_max):
                if slot not in busy and self._slots[slot]:
                    self._lib.llama_memory_seq_rm(self._memory, slot, -1, -1)
                    self._slots[slot] = []
            status = self._lib.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(
                f"llama_decode failed with status {status} ({len(entries)} tokens; the context holds "
                f"{self.n_ctx} tokens: load the model with a larger n_ctx)"
            )
        self.decode_calls += 1

    def _probe_batch_invariance(self) -> int:
        """The largest evaluation batch (tokens per ``llama_decode`` call) whose logits equal one-token
        evaluation: a 40-token sequence fed in batches of that size and, token by token, next to a second row must
        give the same logits as feeding it one token at a time. 1 when no batch size passes."""
        key = (self.tokenizer._gguf_path or self.name, self.vocab_size, self.n_threads)
        if key in _INVARIANCE_CACHE:
            return _INVARIANCE_CACHE[key]
        probe = [int(t) for t in _PROBE_TOKENS % max(self.vocab_size - 1, 1) + 1]
        self.eval_batch = 1
        single = self._evaluate([(t, i, 0, i) for i, t in enumerate(probe)], len(probe))
        agree = True
        if self.n_seq_max > 1:
            self.clear_cache()
            self.eval_batch = 2
            other = probe[::-1]
            for i in range(len(probe)):
                agree = agree and np.array_equal(
                    single[i], self._evaluate([(probe[i], i, 0, 0), (other[i], i, 1, 1)], 2)[0]
                )
        chosen = 1
        for size in _EVAL_BATCH_CANDIDATES if agree else ():
            self.clear_cache()
            self.eval_batch = size
            batched = self._evaluate([(t, i, 0, i) for i, t in enumerate(probe)], len(probe))
            if all(np.array_equal(a, b) for a, b in zip(single, batched)):
                chosen = size
                break
        self.clear_cache()
        _INVARIANCE_CACHE[key] = chosen
        return chosen


class _SlotBatch:
    """The decode loop's view of a LlamaCppLM: each row decodes in its own sequence slot, all rows' tokens of a
    step in one ``llama_decode`` call."""

    def __init__(self, lm: LlamaCppLM) -> None:
        self.lm = lm
        self.rows: list[Row] = []
        self.slots: list[int] = []

    def start(self, rows: list[Row], deadline: float | None = None):
        self.rows = list(rows)
        prefixes = [row.prefix for row in rows]
        self.slots = self.lm._place(prefixes)
        logits = self.lm._prefill(self.slots, prefixes, deadline)
        return None if logits is None else np.stack(logits)

    def step(self, keep: list[int]):
        self.rows = [self.rows[j] for j in keep]
        self.slots = [self.slots[j] for j in keep]
        if not keep:
            return None
        entries = [
            (row.tokens[-1], row.length - 1, slot, k) for k, (row, slot) in enumerate(zip(self.rows, self.slots))
        ]
        return np.stack(self.lm._evaluate(entries, len(entries)))


def load_llamacpp(
    path: str,
    *,
    name: str | None = None,
    n_ctx: int = DEFAULT_N_CTX,
    n_seq_max: int = DEFAULT_N_SEQ_MAX,
    n_threads: int | None = None,
    seed: int = 0,
    **unsupported,
) -> LlamaCppLM:
    """Load a GGUF file with llama.cpp.

    ``n_ctx`` is the cache size shared by all rows; ``n_seq_max`` how many rows are decoded side by side.
    ``n_threads`` defaults to half the CPUs: ggml's worker threads spin while they wait, so on a shared machine
    more threads than idle cores is several times slower (measured here with another process busy: 29 tok/s with
    1 thread, 7 tok/s with 2).
    """
    if unsupported:
        raise ModelLoadError(f"option(s) not supported by the llama.cpp backend: {', '.join(sorted(unsupported))}")
    for option, value in (("n_ctx", n_ctx), ("n_seq_max", n_seq_max), ("n_threads", n_threads or 1)):
        if int(value) < 1:
            raise ModelLoadError(f"{option} must be >= 1, got {value}")
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ModelLoadError("llama.cpp backend needs llama-cpp-python: pip install 'powersampling[llama]'") from exc
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f"GGUF file {path!r} does not exist")
    threads = n_threads or default_threads()
    try:
        # this Llama object provides the weights, vocabulary and metadata; decoding uses the backend's own context
        llama = Llama(
            model_path=str(p),
            n_ctx=64,
            n_batch=64,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            seed=seed,
            verbose=False,
        )
    except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError with little detail
        raise ModelLoadError(f"llama.cpp could not load {p}: {exc}") from exc
    return LlamaCppLM(llama, name=name or p.stem, gguf_path=str(p), n_ctx=n_ctx, n_seq_max=n_seq_max, n_threads=threads)


def default_threads() -> int:
    """Half the CPUs this process may run on (1 on a 2-core machine): ggml's worker threads spin while they wait,
    so on a machine where another process is busy, more threads than idle cores is several times slower."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


def _close_if_alive(ref: weakref.ref) -> None:
    backend = ref()
    if backend is not None:
        backend.close()
