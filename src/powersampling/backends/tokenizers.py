"""Tokenizers: adapters over a Hugging Face tokenizer and over llama.cpp's own vocabulary, and which token ids end
a generation.

Shared by the backends (transformers, vLLM, remote servers, llama.cpp), so none of them imports another backend
for these helpers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # engine and tokenizer types for annotations only; each loads with its backend
    from llama_cpp import Llama
    from transformers import PreTrainedTokenizerBase

# chat-turn delimiters that end an assistant reply when the chat template uses them
CHAT_TURN_STOPS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|endoftext|>")


class HFTokenizer:
    """The ``Tokenizer`` protocol over a transformers tokenizer (``hf_tokenizer`` stays reachable for grammar
    compilers)."""

    def __init__(self, hf_tokenizer: PreTrainedTokenizerBase) -> None:
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


def as_tokenizer(tokenizer: Any) -> Any:
    """A ``Tokenizer``: given as is when it already is one, wrapped when it is a transformers tokenizer, loaded
    when it is a local folder name."""
    if tokenizer is None or hasattr(tokenizer, "chat_prompt"):
        return tokenizer
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    return HFTokenizer(tokenizer)


def stop_tokens_of(hf_tokenizer: Any, configs: Iterable[Any] = ()) -> frozenset[int]:
    """The real stop tokens: ``eos_token_id`` of each config given (model config, generation config) and of the
    tokenizer, plus the chat-turn delimiter when the tokenizer's chat template uses one."""
    ids: set[int] = set()
    for source in (*configs, hf_tokenizer):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is None:
            continue
        ids.update(eos if isinstance(eos, (list, tuple, set)) else [eos])
    template = getattr(hf_tokenizer, "chat_template", None) if hf_tokenizer is not None else None
    if template:
        vocab = hf_tokenizer.get_vocab()
        ids.update(vocab[t] for t in CHAT_TURN_STOPS if t in vocab and t in template)
    return frozenset(int(i) for i in ids)


class LlamaCppTokenizer:
    """Tokenizer adapter over llama.cpp's own vocabulary and the GGUF's chat template.

    ``hf_tokenizer`` (for grammar compilers such as xgrammar) is built from the same GGUF file by transformers on
    first use, which takes a few seconds.
    """

    def __init__(self, llama: Llama, gguf_path: str | None = None) -> None:
        self._llama = llama
        self._gguf_path = gguf_path
        self._hf_tokenizer = None
        self.chat_template: str | None = llama.metadata.get("tokenizer.chat_template")
        self.has_chat_template = self.chat_template is not None
        self._template = None

    def encode(self, text: str) -> list[int]:
        # add_bos follows the GGUF's tokenizer.ggml.add_bos_token, as transformers' add_special_tokens does
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._llama.detokenize([int(t) for t in token_ids], special=False).decode("utf-8", errors="replace")

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if not self.has_chat_template:
            raise ValueError("this GGUF file has no chat template; use a raw prompt (chat=False)")
        text = self._render_chat(messages)
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise ValueError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._template = env.from_string(self.chat_template)
        vocab = self._llama
        piece = lambda token: vocab.detokenize([token], special=True).decode("utf-8", errors="replace")
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=True,
            bos_token=piece(vocab.token_bos()) if vocab.token_bos() >= 0 else "",
            eos_token=piece(vocab.token_eos()) if vocab.token_eos() >= 0 else "",
        )

    def token_pieces(self) -> list[bytes]:
        """Every token's bytes as generated text shows them; special tokens (control, not text) are empty."""
        import ctypes

        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        buffer = ctypes.create_string_buffer(256)
        pieces = []
        for token in range(self._llama.n_vocab()):
            n = llama_cpp.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, False)
            if n < 0:  # longer than the buffer: -n is the size needed
                larger = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(vocab, token, larger, len(larger), 0, False)
                pieces.append(larger.raw[:n])
            else:
                pieces.append(buffer.raw[:n])
        return pieces

    @property
    def hf_tokenizer(self):
        if self._hf_tokenizer is None:
            if self._gguf_path is None:
                raise AttributeError("hf_tokenizer needs the GGUF file path")
            from transformers import AutoTokenizer

            path = Path(self._gguf_path)
            self._hf_tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return self._hf_tokenizer


def end_of_generation_tokens(llama) -> frozenset[int]:
    """llama.cpp's end-of-generation set (EOS, EOT and the chat turn delimiters the GGUF marks as such)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    return frozenset(t for t in range(llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t))
