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
from typing import Sequence

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .base import Continuation, ContinuationRequest

_FIRST_TOKEN_STOPS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|endoftext|>")


class HFTokenizer:
    """Adapter over a transformers tokenizer."""

    def __init__(self, hf_tokenizer) -> None:
        self.hf_tokenizer = hf_tokenizer
        self.has_chat_template = getattr(hf_tokenizer, "chat_template", None) is not None

    def encode(self, text: str) -> list[int]:
        return list(self.hf_tokenizer.encode(text))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.hf_tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if not self.has_chat_template:
            raise ValueError("this tokenizer has no chat template; use a raw prompt (chat=False)")
        text = self.hf_tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return list(self.hf_tokenizer.encode(text, add_special_tokens=False))


def stop_token_ids_of(hf_model, hf_tokenizer) -> frozenset[int]:
    """The model's real stop tokens: EOS from the config, the generation config and the tokenizer, plus the chat
    turn delimiter when the tokenizer has one."""
    ids: set[int] = set()
    for source in (getattr(hf_model, "generation_config", None), hf_model.config, hf_tokenizer):
        if source is None:
            continue
        eos = getattr(source, "eos_token_id", None)
        if eos is None:
            continue
        ids.update(eos if isinstance(eos, (list, tuple, set)) else [eos])
    if hf_tokenizer is not None and getattr(hf_tokenizer, "chat_template", None):
        vocab = hf_tokenizer.get_vocab()
        ids.update(vocab[t] for t in _FIRST_TOKEN_STOPS if t in vocab and t in hf_tokenizer.chat_template)
    return frozenset(int(i) for i in ids)


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
            n = min(len(ids), len(prefix))
            if n <= best_len:
                continue
            same = ids[:n] == prefix[:n]
            common = n if same.all() else int(np.argmin(same))
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

    def __init__(self, hf_model, hf_tokenizer, *, name: str | None = None, cache_tokens: int = 16384) -> None:
        self.hf_model = hf_model.eval()
        self.tokenizer = HFTokenizer(hf_tokenizer) if hf_tokenizer is not None else None
        self.name = name or getattr(hf_model.config, "_name_or_path", None) or type(hf_model).__name__
        self.vocab_size = int(hf_model.get_output_embeddings().weight.shape[0])
        self.stop_token_ids = stop_token_ids_of(hf_model, hf_tokenizer)
        self.device = next(hf_model.parameters()).device
        self._pool = _CachePool(cache_tokens)
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
        if not requests:
            return []
        for r in requests:
            if len(r.prefix) == 0:
                raise ValueError("a request needs at least one prefix token (the prompt)")
        generator = torch.Generator(device=self.device).manual_seed(int(rng.integers(0, 2**62)))
        rows = [_Row(r) for r in requests]
        cache, mask, positions, inputs = self._prefill_inputs(rows)
        active = list(range(len(rows)))  # indices into rows, in batch order
        while active:
            out = self.hf_model(
                input_ids=inputs, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                **{self._cache_kw: cache},
            )
            self.forward_passes += 1
            cache = getattr(out, self._cache_kw)
            logits = out.logits[:, -1, :].float()
            tokens, logp, logq = self._draw(logits, [rows[i] for i in active], temperature, generator)
            finished = []
            out_of_time = deadline is not None and time.monotonic() > deadline
            for j, i in enumerate(active):
                if rows[i].push(tokens[j], logp[j], logq[j], self.stop_token_ids) or out_of_time:
                    rows[i].interrupted = out_of_time and not rows[i].done
                    finished.append(j)
            if finished:
                self._store(cache, mask, [rows[active[j]] for j in finished], finished)
                keep = [j for j in range(len(active)) if j not in set(finished)]
                if not keep:
                    break
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                tokens = [tokens[j] for j in keep]
                active = [active[j] for j in keep]
            inputs = torch.tensor(tokens, device=self.device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
        return [row.continuation() for row in rows]

    def clear_cache(self) -> None:
        self._pool.clear()

    # internals

    def _prefill_inputs(self, rows: list["_Row"]):
        """Batch rows as [cached part, left-padded to A] + [pads] + [uncached remainder, right-aligned]."""
        starts = []
        for row in rows:
            key, common = self._pool.longest_prefix(row.prefix)
            common = min(common, len(row.prefix) - 1)  # at least one token must be fed to get logits
            starts.append((key, common))
            self.reused_tokens += common
        cached_len = max(c for _, c in starts)
        rest_len = max(len(row.prefix) - c for row, (_, c) in zip(rows, starts))
        n_rows = len(rows)
        mask = torch.zeros(n_rows, cached_len + rest_len, dtype=torch.long, device=self.device)
        inputs = torch.zeros(n_rows, rest_len, dtype=torch.long, device=self.device)
        positions = torch.zeros(n_rows, rest_len, dtype=torch.long, device=self.device)
        for i, (row, (_, common)) in enumerate(zip(rows, starts)):
            rest = row.prefix[common:]
            mask[i, cached_len - common : cached_len] = 1
            mask[i, cached_len + rest_len - len(rest) :] = 1
            inputs[i, rest_len - len(rest) :] = torch.as_tensor(rest, device=self.device)
            positions[i, rest_len - len(rest) :] = torch.arange(common, common + len(rest), device=self.device)
            self.prefill_tokens += len(rest)
        if cached_len == 0:
            return _new_cache(), mask, positions, inputs
        layers = []
        for layer in range(self._n_layers()):
            ks, vs = [], []
            for key, common in starts:
                k, v = self._pool.entries[key][1][layer] if key is not None else self._empty_kv(layer)
                pad = cached_len - common
                ks.append(torch.nn.functional.pad(k[:, :common], (0, 0, pad, 0)))
                vs.append(torch.nn.functional.pad(v[:, :common], (0, 0, pad, 0)))
            layers.append((torch.stack(ks), torch.stack(vs)))
        return _new_cache(layers), mask, positions, inputs

    def _empty_kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        # any entry gives the shape; rows without a cached prefix use zero length
        some = next(iter(self._pool.entries.values()))[1][layer]
        return some[0][:, :0], some[1][:, :0]

    def _n_layers(self) -> int:
        return len(next(iter(self._pool.entries.values()))[1])

    def _store(self, cache, mask: torch.Tensor, rows: list["_Row"], batch_idx: list[int]) -> None:
        for row, j in zip(rows, batch_idx):
            keep = mask[j].nonzero().squeeze(1)
            layers = [(layer.keys[j][:, keep], layer.values[j][:, keep]) for layer in cache.layers]
            fed = np.concatenate([row.prefix, np.asarray(row.tokens[:-1], dtype=np.int64)])
            self._pool.add(fed, layers)

    def _draw(self, logits: torch.Tensor, rows: list["_Row"], temperature: float, generator):
        allowed = [row.allowed_tokens() for row in rows]
        if any(a is not None for a in allowed):
            full = torch.ones_like(logits, dtype=torch.bool)
            for j, a in enumerate(allowed):
                if a is not None:
                    full[j] = torch.as_tensor(a[: logits.shape[1]], device=logits.device)
            logits = logits.masked_fill(~full, float("-inf"))
        # log p and log q of the drawn token only need each distribution's normalizer: one exp pass apiece
        log_z = torch.logsumexp(logits, dim=-1)
        if temperature == 0:
            tokens = torch.argmax(logits, dim=-1)
            logq = torch.zeros(len(rows), dtype=torch.float64, device=logits.device)
        else:
            scaled = logits / temperature
            peak = scaled.max(dim=-1, keepdim=True).values
            weights = torch.exp(scaled - peak)
            cdf = torch.cumsum(weights, dim=-1)
            u = torch.rand(len(rows), 1, generator=generator, device=logits.device, dtype=cdf.dtype) * cdf[:, -1:]
            tokens = torch.searchsorted(cdf, u).squeeze(1).clamp_(max=logits.shape[1] - 1)
            # a zero-weight token can only be hit at a CDF plateau's edge; step back to the token that owns it
            tokens = torch.where(weights.gather(1, tokens[:, None]).squeeze(1) > 0, tokens,
                                 torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=logits.shape[1] - 1))
            log_zq = peak.squeeze(1) + torch.log(cdf[:, -1])
            logq = (scaled.gather(1, tokens[:, None]).squeeze(1) - log_zq).double()
        logp = (logits.gather(1, tokens[:, None]).squeeze(1) - log_z).double()
        return tokens.tolist(), logp.tolist(), logq.tolist()


class _Row:
    def __init__(self, request: ContinuationRequest) -> None:
        self.prefix = np.asarray(request.prefix, dtype=np.int64)
        self.max_new = request.max_new_tokens
        self.state = (
            request.constraint.start(list(request.prefix[request.generated_start :])) if request.constraint else None
        )
        self.tokens: list[int] = []
        self.logp: list[float] = []
        self.logq: list[float] = []
        self.stopped = self.interrupted = self.done = False

    def allowed_tokens(self):
        return self.state.allowed_tokens() if self.state is not None else None

    def push(self, token: int, logp: float, logq: float, stops: frozenset[int]) -> bool:
        """Record a drawn token; True when the row is finished."""
        self.tokens.append(token)
        self.logp.append(logp)
        self.logq.append(logq)
        if self.state is not None:
            self.state.advance(token)
        if token in stops or (self.state is not None and self.state.is_finished()):
            self.stopped = True
        self.done = self.stopped or len(self.tokens) >= self.max_new
        return self.done

    def continuation(self) -> Continuation:
        return Continuation(self.tokens, np.array(self.logp), np.array(self.logq), self.stopped, self.interrupted)
