"""Server settings: limits that keep one process safe under load and bad input."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..samplers.registry import DEFAULT_METHOD, method_names


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str | None = Field(None, description="name served in /v1/models (default: the model's name)")
    api_key: str | None = Field(None, description="bearer token required on /v1/* when set")
    default_method: str = Field(DEFAULT_METHOD, description="decoding method when a request names none")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="sampling threads; keep 1 for backends that are not thread-safe (transformers, llama.cpp)",
    )
    max_queue: int = Field(16, ge=0, le=100_000, description="requests waiting for a worker before 429")
    request_timeout_s: float = Field(
        120.0, gt=0, description="server deadline per request, queueing included; past it: 504 with what was reached"
    )
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    max_prompt_tokens: int = Field(8192, ge=1)
    max_tokens_limit: int = Field(2048, ge=1, description="largest max_tokens a request may ask for")
    default_max_tokens: int = Field(64, ge=1)
    max_chains: int = Field(
        16, ge=1, description="largest power_sampling.chains (or best-of-n n) a request may ask for"
    )
    max_n_mcmc: int = Field(64, ge=1, description="largest power_sampling.n_mcmc a request may ask for")
    log_prompts: bool = Field(False, description="log prompt and completion text (off: only sizes and timings)")
    docs: bool = Field(
        True,
        description="serve /docs (a self-contained page: no scripts, nothing fetched from "
        "elsewhere) and /openapi.json; off: neither",
    )
    progress_interval_s: float = Field(
        0.2, ge=0, description="at most one streamed MH-step progress event per interval"
    )

    @field_validator("default_method")
    @classmethod
    def _registered(cls, method: str) -> str:
        if method not in method_names():
            raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(method_names())}")
        return method
