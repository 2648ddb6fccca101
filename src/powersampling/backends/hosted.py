"""Hosted chat providers (OpenAI, Gemini, Anthropic, any OpenAI-compatible chat endpoint) for text generation.

They serve the routes that need only text: baseline generation and best-of-n ranked by a verifier. They cannot
serve power sampling, and asking for it raises ``CapabilityError`` with the reason:

* OpenAI and Gemini chat APIs return at most the top-20 log-probabilities per token (and none for reasoning
  models) and cannot continue from an exact token prefix, so neither log q (it needs log Z_t over the whole
  vocabulary) nor an MH proposal from a cut point can be computed.
* Anthropic returns no log-probabilities at all, and no prefix continuation either.
* A generic OpenAI-compatible chat endpoint takes messages, not token ids.

Configuration follows each provider's usual environment variables: ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``,
``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``) / ``GEMINI_BASE_URL``, ``ANTHROPIC_API_KEY`` / ``ANTHROPIC_BASE_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..errors import CapabilityError, ConfigError, PowerSamplingError

PROVIDERS = ("openai", "openai-compatible", "gemini", "anthropic")

_DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "anthropic": "https://api.anthropic.com",
}
_KEY_VARS = {
    "openai": ("OPENAI_API_KEY",),
    "openai-compatible": ("OPENAI_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "anthropic": ("ANTHROPIC_API_KEY",),
}
_URL_VARS = {
    "openai": "OPENAI_BASE_URL",
    "openai-compatible": "OPENAI_BASE_URL",
    "gemini": "GEMINI_BASE_URL",
    "anthropic": "ANTHROPIC_BASE_URL",
}
_NO_POWER_REASONS = {
    "openai": "OpenAI's chat API returns at most the top-20 log-probabilities per token (none for reasoning "
    "models) and cannot continue from an exact token prefix",
    "openai-compatible": "an OpenAI-compatible chat endpoint takes messages, not token-id prefixes, and returns at "
    "most top-k log-probabilities",
    "gemini": "Gemini returns at most the top-20 log-probabilities per token and cannot continue from an exact "
    "token prefix",
    "anthropic": "Anthropic returns no log-probabilities at all and cannot continue from an exact token prefix",
}
_ALTERNATIVES = (
    "use method 'sample' (baseline) or 'best-of-n' with a verifier on this provider, or power sampling "
    "on a model with real logits: a local GGUF (llama.cpp) or transformers model, or a vLLM server "
    "through the remote backend"
)


class HostedRequestError(PowerSamplingError):
    """A hosted provider answered with an error or could not be reached."""


@dataclass
class HostedCompletion:
    text: str
    finish_reason: str | None
    usage: dict = field(default_factory=dict)


class HostedChatModel:
    """Text generation on a hosted chat provider. Not a ``LanguageModel``: it has no token ids or log-probs."""

    supports_power_sampling = False

    def __init__(
        self, provider: str, model: str, *, api_key: str | None, base_url: str, timeout_s: float = 120.0
    ) -> None:
        if provider not in PROVIDERS:
            raise ConfigError(f"unknown hosted provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
        self.provider, self.model, self.base_url = provider, model, base_url.rstrip("/")
        self.name = f"{provider}:{model}"
        self._api_key = api_key
        self._http = httpx.Client(timeout=timeout_s)

    @property
    def power_sampling_unsupported_reason(self) -> str:
        return _NO_POWER_REASONS[self.provider]

    def close(self) -> None:
        self._http.close()

    def generate(
        self,
        messages: Sequence[dict[str, str]],
        *,
        temperature: float = 1.0,
        max_tokens: int = 512,
        n: int = 1,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[HostedCompletion]:
        """``n`` independent completions of a chat."""
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        if not messages:
            raise ConfigError("messages must not be empty")
        call = {
            "openai": self._openai,
            "openai-compatible": self._openai,
            "gemini": self._gemini,
            "anthropic": self._anthropic,
        }[self.provider]
        return call(list(messages), temperature, max_tokens, n, seed, list(stop or []))

    def best_of_n(
        self,
        messages: Sequence[dict[str, str]],
        n: int,
        score: Callable[[str], float],
        **kwargs,
    ) -> tuple[HostedCompletion, list[tuple[HostedCompletion, float]]]:
        """The highest-scoring of ``n`` completions, with every candidate and its score."""
        candidates = self.generate(messages, n=n, **kwargs)
        scored = [(c, float(score(c.text))) for c in candidates]
        return max(scored, key=lambda pair: pair[1])[0], scored

    def sample(self, *args, **kwargs):
        """Power sampling (or any token-level sampler) on a hosted provider: refused, with the reason."""
        raise CapabilityError(
            f"power sampling is not possible on {self.name}: {self.power_sampling_unsupported_reason}; {_ALTERNATIVES}"
        )

    # providers

    def _openai(self, messages, temperature, max_tokens, n, seed, stop):
        payload: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature, "n": n}
        # OpenAI's own API renamed the field (reasoning models refuse max_tokens); compatible servers know the old one
        payload["max_completion_tokens" if self.provider == "openai" else "max_tokens"] = max_tokens
        if seed is not None:
            payload["seed"] = seed
        if stop:
            payload["stop"] = stop
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        body = self._post(f"{self.base_url}/chat/completions", payload, headers)
        choices = body.get("choices") or []
        if len(choices) < n:  # some compatible servers ignore n: ask again for the rest
            for _ in range(n - len(choices)):
                extra = self._post(f"{self.base_url}/chat/completions", {**payload, "n": 1}, headers)
                choices += extra.get("choices") or []
        return [
            HostedCompletion(c["message"].get("content") or "", c.get("finish_reason"), body.get("usage") or {})
            for c in choices[:n]
        ]

    def _gemini(self, messages, temperature, max_tokens, n, seed, stop):
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        contents = [
            {"role": "model" if m["role"] == "assistant" else "user", "parts": [{"text": m["content"]}]}
            for m in messages
            if m["role"] != "system"
        ]
        config: dict[str, Any] = {"temperature": temperature, "maxOutputTokens": max_tokens, "candidateCount": n}
        if seed is not None:
            config["seed"] = seed
        if stop:
            config["stopSequences"] = stop
        payload: dict[str, Any] = {"contents": contents, "generationConfig": config}
        if system:
            payload["systemInstruction"] = {"parts": [{"text": system}]}
        body = self._post(
            f"{self.base_url}/models/{self.model}:generateContent", payload, {"x-goog-api-key": self._api_key or ""}
        )
        out = []
        for candidate in body.get("candidates") or []:
            parts = (candidate.get("content") or {}).get("parts") or []
            out.append(
                HostedCompletion(
                    "".join(p.get("text", "") for p in parts),
                    candidate.get("finishReason"),
                    body.get("usageMetadata") or {},
                )
            )
        if not out:
            raise HostedRequestError(f"{self.name} returned no candidates: {str(body)[:300]}")
        return out

    def _anthropic(self, messages, temperature, max_tokens, n, seed, stop):
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"],
        }
        if system:
            payload["system"] = system
        if stop:
            payload["stop_sequences"] = stop
        headers = {"x-api-key": self._api_key or "", "anthropic-version": "2023-06-01"}

        def one(_):
            body = self._post(f"{self.base_url}/v1/messages", payload, headers)
            text = "".join(block.get("text", "") for block in body.get("content") or [] if block.get("type") == "text")
            return HostedCompletion(text, body.get("stop_reason"), body.get("usage") or {})

        # the Messages API has no n: independent requests, concurrently
        with ThreadPoolExecutor(max_workers=min(n, 8)) as pool:
            return list(pool.map(one, range(n)))

    def _post(self, url: str, payload: dict, headers: dict) -> dict:
        try:
            response = self._http.post(url, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            raise HostedRequestError(f"could not reach {self.name} at {url}: {exc}") from exc
        if response.status_code >= 400:
            raise HostedRequestError(f"{self.name} answered {response.status_code}: {response.text[:300]}")
        try:
            return response.json()
        except ValueError as exc:
            raise HostedRequestError(f"{self.name} answered with non-JSON: {response.text[:200]}") from exc


def hosted_model(
    provider: str, model: str, *, api_key: str | None = None, base_url: str | None = None, timeout_s: float = 120.0
) -> HostedChatModel:
    """A hosted chat model configured from arguments, else the provider's usual environment variables.

    ``openai-compatible`` needs a base URL (argument or ``OPENAI_BASE_URL``) and accepts a missing key (local
    servers); the others need their key.
    """
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown hosted provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
    if not model:
        raise ConfigError("a hosted provider needs a model name")
    key = api_key or next((os.environ[v] for v in _KEY_VARS[provider] if os.environ.get(v)), None)
    url = base_url or os.environ.get(_URL_VARS[provider]) or _DEFAULT_BASE_URLS.get(provider)
    if url is None:
        raise ConfigError("the openai-compatible provider needs a base URL: pass base_url or set OPENAI_BASE_URL")
    if key is None and provider != "openai-compatible":
        raise ConfigError(f"{provider} needs an API key: set {' or '.join(_KEY_VARS[provider])}")
    return HostedChatModel(provider, model, api_key=key, base_url=url, timeout_s=timeout_s)


def require_power_sampling(model: Any) -> None:
    """Raise ``CapabilityError`` when ``model`` cannot serve power sampling (hosted providers)."""
    if isinstance(model, HostedChatModel):
        model.sample()
