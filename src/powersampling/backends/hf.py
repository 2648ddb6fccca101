"""Hugging Face transformers backend: our own decode loop over full logits, with a prefix-keyed KV cache.

Why not ``generate``: it truncates (top_k=50 by default), reports processed scores rather than separate log p and
log q, and re-encodes every prefix. Here each call decodes a batch of rows together; every row starts from the
cached row sharing its longest token prefix (cropped there), so an MH proposal at cut m re-feeds nothing before
m. Rows that finish leave the batch, and their caches go back to the pool.
"""

from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .base import Continuation, ContinuationRequest
from .decoding import Row, common_prefix_length, decode, next_token_logprobs
from .tokenizers import HFTokenizer, stop_tokens_of

PREFILL_CHUNK = 128  # positions per forward pass when a long prompt is fed: the deadline is checked in between

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class _GrowingLayer(DynamicLayer):
    """A KV cache layer that writes new keys into spare capacity instead of concatenating the whole cache at every
    step (DynamicLayer's torch.cat copies all past keys per token, which dominates batched decoding on CPU)."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._kbuf = self._vbuf = None
        self._len = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        need = self._len + key_states.shape[-2]
        if self._kbuf is None or need > self._kbuf.shape[-2] or self._kbuf.shape[0] != key_states.shape[0]:
            capacity = max(need + 64, 2 * self._len)
            kbuf = key_states.new_empty(*key_states.shape[:-2], capacity, key_states.shape[-1])
            vbuf = value_states.new_empty(*value_states.shape[:-2], capacity, value_states.shape[-1])
            if self._len:
                kbuf[..., : self._len, :] = self.keys
                vbuf[..., : self._len, :] = self.values
            self._kbuf, self._vbuf = kbuf, vbuf
        self._kbuf[..., self._len : need, :] = key_states
        self._vbuf[..., self._len : need, :] = value_states
        self._len = need
        self.keys, self.values = self._kbuf[..., :need, :], self._vbuf[..., :need, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized and self._kbuf is not None:
            self._kbuf, self._vbuf = self._kbuf[indices], self._vbuf[indices]
            self.keys, self.values = self._kbuf[..., : self._len, :], self._vbuf[..., : self._len, :]

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("rows are cropped by building a new cache from the pool")


def _new_cache(layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> DynamicCache:
    cache = DynamicCache()
    cache.layer_class_to_replicate = _GrowingLayer
    for index, (k, v) in enumerate(layers or []):
        cache.update(k, v, index)
    return cache


class _CachePool:
    """Per-row KV caches keyed by the token ids they hold, least recently used evicted past a token budget."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.entries: OrderedDict[int, tuple[np.ndarray, list[tuple[torch.Tensor, torch.Tensor]]]] = OrderedDict()
        self._next_key = 0
        self.tokens = 0

    def longest_prefix(self, prefix: np.ndarray) -> tuple[int | None, int]:
        best_key, best_len = None, 0
        for key, (ids, _) in self.entries.items():
            if min(len(ids), len(prefix)) <= best_len:
                continue
            common = common_prefix_length(ids, prefix)
            if common > best_len:
                best_key, best_len = key, common
        if best_key is not None:
            self.entries.move_to_end(best_key)
        return best_key, best_len

    def add(self, ids: np.ndarray, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if len(ids) == 0 or len(ids) > self.max_tokens:
            return
        self.entries[self._next_key] = (ids, layers)
        self._next_key += 1
        self.tokens += len(ids)
        while self.tokens > self.max_tokens:
            _, (old, _) = self.entries.popitem(last=False)
            self.tokens -= len(old)

    def clear(self) -> None:
        self.entries.clear()
        self.tokens = 0


class TransformersLM:
    """A causal LM from transformers implementing the ``LanguageModel`` protocol.

    ``cache_tokens`` bounds the tokens kept in the prefix cache pool (memory: tokens x layers x 2 x kv_heads x
    head_dim x bytes per value).
    """

    def __init__(
        self,
        hf_model: PreTrainedModel,
        hf_tokenizer: PreTrainedTokenizerBase | None,
        *,
        name: str | None = None,
        cache_tokens: int = 16384,
    ) -> None:
        self.hf_model = hf_model.eval()
        self.tokenizer = HFTokenizer(hf_tokenizer) if hf_tokenizer is not None else None
        self.name = name or getattr(hf_model.config, "_name_or_path", None) or type(hf_model).__name__
        self.vocab_size = int(hf_model.get_output_embeddings().weight.shape[0])
        window = getattr(hf_model.config, "max_position_embeddings", None)
        self.context_length = int(window) if window else None
        self.stop_token_ids = stop_tokens_of(
            hf_tokenizer, (getattr(hf_model, "generation_config", None), hf_model.config)
        )
        self.device = next(hf_model.parameters()).device
        self._pool = _CachePool(cache_tokens)
        self._held: _HeldBatch | None = None
        self.forward_passes = 0
        # transformers renamed past_key_values to cache in 5.x; accept either
        self._cache_kw = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
        self.prefill_tokens = 0
        self.reused_tokens = 0

    # the protocol

    @torch.inference_mode()
    def sample(
        self,
        requests: Sequence[ContinuationRequest],
        temperature: float,
        rng: np.random.Generator,
        *,
        deadline: float | None = None,
    ) -> list[Continuation]:
        return decode(_CachedBatch(self), requests, temperature, rng, self.stop_token_ids, deadline=deadline)

    @torch.inference_mode()
    def next_token_logprobs(self, requests: Sequence[ContinuationRequest]) -> np.ndarray:
        return next_token_logprobs(_CachedBatch(self), requests, self.stop_token_ids)

    @torch.inference_mode()
    def score_tokens(self, ids: Sequence[int], start: int, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """log p(ids[i] | ids[:i]) at temperature 1 for i in [start, len(ids)), and the ``top`` most likely tokens
        and their log p at each of those positions: one forward pass over ``ids``, outside the prefix cache."""
        x = torch.tensor([[int(t) for t in ids]], device=self.device)
        logits = self.hf_model(input_ids=x, use_cache=False).logits[0, start - 1 : -1]
        self.forward_passes += 1
        logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
        chosen = logp.gather(-1, x[0, start:, None]).squeeze(-1)
        top_logp, top_ids = logp.topk(top, dim=-1) if top else (logp[:, :0], logp[:, :0].long())
        return chosen.cpu().numpy(), top_ids.cpu().numpy(), top_logp.cpu().numpy()

    def clear_cache(self) -> None:
        self._pool.clear()
        self._held = None

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache):
        """One forward pass; the last position's logits (float32) and the grown cache."""
        out = self.hf_model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: cache},
        )
        self.forward_passes += 1
        return out.logits[:, -1, :].float(), getattr(out, self._cache_kw)


class _CachedBatch:
    """The decode loop's view of a TransformersLM: rows start from the pooled cache sharing their longest token
    prefix, advance one token per forward pass, and leave their cache in the pool when they finish."""

    def __init__(self, lm: TransformersLM) -> None:
        self.lm = lm
        self.device = lm.device
        self.rows: list[Row] = []

    def start(self, rows: list[Row], deadline: float | None = None) -> torch.Tensor | None:
        self.rows = list(rows)
        held, self.lm._held = self.lm._held, None
        if held is not None:
            index = [held.index.get(tuple(row.prefix[:-1])) for row in self.rows]
            if None not in index:
                return self._continue(held, index)
            _pool_rows(self.lm, held.rows, held.cache, held.mask, range(len(held.rows)))
        self.cache, self.mask, positions, inputs = self._prefill_inputs(self.rows)
        self.positions = positions
        # a long uncached part is fed PREFILL_CHUNK positions at a time, with the deadline checked in between;
        # shorter ones (every prompt up to that length) go in one pass, as they always did
        fed = self.mask.shape[1] - inputs.shape[1]
        while inputs.shape[1] > PREFILL_CHUNK:
            fed += PREFILL_CHUNK
            part = slice(0, PREFILL_CHUNK)
            _, self.cache = self.lm.forward(inputs[:, part], self.mask[:, :fed], positions[:, part], self.cache)
            inputs, positions = inputs[:, PREFILL_CHUNK:], positions[:, PREFILL_CHUNK:]
            if deadline is not None and time.monotonic() > deadline:
                return None  # the partial cache is dropped: it is neither pooled nor held
        logits, self.cache = self.lm.forward(inputs, self.mask, positions, self.cache)
        return logits

    def step(self, keep: list[int]) -> torch.Tensor | None:
        kept = set(keep)
        finished = [j for j in range(len(self.rows)) if j not in kept]
        if not keep:  # the whole batch ends here: held for a call that continues its rows
            self.lm._held = _HeldBatch(self.rows, self.cache, self.mask, self.positions)
            self.rows = []
            return None
        if finished:
            _pool_rows(self.lm, self.rows, self.cache, self.mask, finished)
        if finished:
            index = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(index)
            self.mask, self.positions = self.mask[index], self.positions[index]
            self.rows = [self.rows[j] for j in keep]
        inputs = torch.tensor([row.tokens[-1] for row in self.rows], device=self.device).unsqueeze(1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.positions = self.positions[:, -1:] + 1
        logits, self.cache = self.lm.forward(inputs, self.mask, self.positions, self.cache)
        return logits

    def _prefill_inputs(self, rows: list[Row]):
        """Batch rows as [cached part, left-padded to A] + [pads] + [uncached remainder, right-aligned]."""
        lm, pool = self.lm, self.lm._pool
        starts = []
        for row in rows:
            prefix = np.asarray(row.prefix, dtype=np.int64)
            key, common = pool.longest_prefix(prefix)
            common = min(common, len(prefix) - 1)  # at least one token must be fed to get logits
            starts.append((key, common))
            lm.reused_tokens += common
        cached_len = max(c for _, c in starts)
        rest_len = max(len(row.prefix) - c for row, (_, c) in zip(rows, starts))
        n_rows, device = len(rows), self.device
        mask = torch.zeros(n_rows, cached_len + rest_len, dtype=torch.long, device=device)
        inputs = torch.zeros(n_rows, rest_len, dtype=torch.long, device=device)
        positions = torch.zeros(n_rows, rest_len, dtype=torch.long, device=device)
        for i, (row, (_, common)) in enumerate(zip(rows, starts)):
            rest = row.prefix[common:]
            mask[i, cached_len - common : cached_len] = 1
            mask[i, cached_len + rest_len - len(rest) :] = 1
            inputs[i, rest_len - len(rest) :] = torch.as_tensor(rest, device=device)
            positions[i, rest_len - len(rest) :] = torch.arange(common, common + len(rest), device=device)
            lm.prefill_tokens += len(rest)
        if cached_len == 0:
            return _new_cache(), mask, positions, inputs
        entries = pool.entries
        n_layers = len(next(iter(entries.values()))[1])
        layers = []
        for layer in range(n_layers):
            ks, vs = [], []
            for key, common in starts:
                if key is not None:
                    k, v = entries[key][1][layer]
                else:  # no cached prefix: zero length, any entry gives the shape
                    some = next(iter(entries.values()))[1][layer]
                    k, v = some[0][:, :0], some[1][:, :0]
                pad = cached_len - common
                ks.append(torch.nn.functional.pad(k[:, :common], (0, 0, pad, 0)))
                vs.append(torch.nn.functional.pad(v[:, :common], (0, 0, pad, 0)))
            layers.append((torch.stack(ks), torch.stack(vs)))
        return _new_cache(layers), mask, positions, inputs

    def _continue(self, held: _HeldBatch, index: list[int]) -> torch.Tensor:
        """Every row is a held row plus one token: select them from the held cache and feed that token."""
        selected = torch.tensor(index, device=self.device)
        self.cache = held.cache
        self.cache.batch_select_indices(selected)
        self.mask = torch.cat([held.mask[selected], torch.ones_like(held.mask[selected][:, :1])], dim=1)
        self.positions = held.positions[selected][:, -1:] + 1
        inputs = torch.tensor([row.prefix[-1] for row in self.rows], device=self.device).unsqueeze(1)
        self.lm.reused_tokens += sum(len(row.prefix) - 1 for row in self.rows)
        self.lm.prefill_tokens += len(self.rows)
        logits, self.cache = self.lm.forward(inputs, self.mask, self.positions, self.cache)
        return logits


class _HeldBatch:
    """A finished batch kept whole: its rows, cache, attention mask and positions, and which row holds which
    tokens (a row's cache holds its prefix and all its drawn tokens but the last, which was never fed)."""

    def __init__(self, rows: list[Row], cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor) -> None:
        self.rows, self.cache, self.mask, self.positions = rows, cache, mask, positions
        self.index = {tuple(_cached_tokens(row)): j for j, row in enumerate(rows)}


def _cached_tokens(row: Row) -> list[int]:
    return row.prefix + row.tokens[:-1]


def _pool_rows(lm: TransformersLM, rows: list[Row], cache: DynamicCache, mask: torch.Tensor, batch_index) -> None:
    """Pool the caches of finished rows, keyed by the tokens they hold."""
    for j in batch_index:
        keep = mask[j].nonzero().squeeze(1)
        layers = [(layer.keys[j][:, keep], layer.values[j][:, keep]) for layer in cache.layers]
        lm._pool.add(np.asarray(_cached_tokens(rows[j]), dtype=np.int64), layers)
