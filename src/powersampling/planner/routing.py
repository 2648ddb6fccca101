"""Which route plans a request: the feature flag, the percentage rollout, and the power-sampling knobs from the
environment.

* ``POWER_SAMPLING_HTDAG_ENABLED``: true/false (also 1/0, yes/no, on/off); default false.
* ``POWER_SAMPLING_ROLLOUT_PERCENT``: 0-100, default 100: the share of requests (by a stable hash of the request
  key) that take the power route while the flag is on. The same key always gets the same route, and raising the
  percentage only adds keys (a key in at 20% stays in at 50%).
* ``POWER_SAMPLING_N_MCMC``, ``POWER_SAMPLING_ALPHA``, ``POWER_SAMPLING_BLOCK_SIZE``: MH settings of the power
  route; unset, they keep the planner's defaults (``RouteSettings``).

Bad values raise ``ConfigError`` when the config is read (at start), naming the variable.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..samplers.registry import BASELINE_ROUTE, POWER_METHOD, route_of
from .generation import RouteSettings

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class RouteDecision:
    route: str
    reason: str
    bucket: float | None = None


@dataclass(frozen=True)
class RoutingConfig:
    """The flag, the rollout share, and the route settings (the power route's MH knobs from the environment)."""

    enabled: bool = False
    rollout_percent: float = 100.0
    settings: RouteSettings = field(default_factory=RouteSettings)

    def __post_init__(self) -> None:
        if not 0 <= self.rollout_percent <= 100:
            raise ConfigError(f"POWER_SAMPLING_ROLLOUT_PERCENT must be between 0 and 100, got {self.rollout_percent}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RoutingConfig:
        env = os.environ if env is None else env
        defaults = RouteSettings()
        return cls(
            enabled=_parse_bool(env, "POWER_SAMPLING_HTDAG_ENABLED", False),
            rollout_percent=_parse_number(env, "POWER_SAMPLING_ROLLOUT_PERCENT", float, 100.0, 0, 100),
            settings=RouteSettings(
                n_mcmc=_parse_number(env, "POWER_SAMPLING_N_MCMC", int, defaults.n_mcmc, 1, 10_000),
                alpha=_parse_number(env, "POWER_SAMPLING_ALPHA", float, defaults.alpha, 0, 64, exclusive_low=True),
                block_size=_parse_number(env, "POWER_SAMPLING_BLOCK_SIZE", int, defaults.block_size, 1, 1_000_000),
            ),
        )

    def decide(self, request_key: str) -> RouteDecision:
        """The route for one request when the caller did not ask for one."""
        if not self.enabled:
            return RouteDecision(BASELINE_ROUTE, "flag_disabled")
        bucket = rollout_bucket(request_key)
        if bucket < self.rollout_percent:
            return RouteDecision(route_of(POWER_METHOD), "rollout_included", bucket)
        return RouteDecision(BASELINE_ROUTE, "rollout_excluded", bucket)


def rollout_bucket(request_key: str) -> float:
    """A stable number in [0, 100) for a key (SHA-256, so it does not change between processes or versions)."""
    digest = hashlib.sha256(request_key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100.0


def _parse_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false (or 1/0, yes/no, on/off), got {raw!r}")


def _parse_number(env: Mapping[str, str], name: str, kind: type, default, low, high, exclusive_low: bool = False):
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}") from None
    if kind is float and value != value:  # NaN
        raise ConfigError(f"{name} must be a number, got {raw!r}")
    too_low = value <= low if exclusive_low else value < low
    if too_low or value > high:
        bound = f"> {low}" if exclusive_low else f">= {low}"
        raise ConfigError(f"{name} must be {bound} and <= {high}, got {raw!r}")
    return value
