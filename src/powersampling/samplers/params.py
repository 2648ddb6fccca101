"""The public knobs a request carries, turned into one method's config fields, in one place for ``powersampling
generate`` and the server.

A knob's meaning depends on the method, and the registry's ``MethodSpec`` says which: ``temperature`` is the
sampling temperature, the proposal temperature (the target stays p^alpha), only 0 (greedy), or nothing (low-temp,
whose temperature is 1/alpha), as ``MethodSpec.temperature`` says; ``chains`` sets ``MethodSpec.chains_field``
(MH's ``n_chains``, SMC's ``n_particles``); ``n`` the number of candidates; ``answer_regex`` the majority vote's
answer extractor.

A knob that does not apply is a ``KnobError`` naming it, which each entry point reports under its own name for
it (``--chains``, ``power_sampling.chains``); with ``strict=False`` (one set of settings passed to every method)
such a knob is left out instead, but a bad value for a knob the method has is still an error.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError
from .config import PARTS_RULES, AnswerExtractor, PartsExtractor
from .registry import method_names, method_spec, methods_where


class KnobError(ConfigError):
    """A public knob that does not apply to the method, or a bad value for it. ``knob`` is its neutral name
    (``chains``, ``temperature``, ``answer_regex``); ``for_param`` words the message with an entry point's name."""

    def __init__(self, knob: str, template: str) -> None:  # template: "{knob}" where the knob's name goes
        self.knob, self.template = knob, template
        super().__init__(template.format(knob=knob))

    def for_param(self, name: str) -> str:
        return self.template.format(knob=name)


def regex_extractor(pattern: str) -> AnswerExtractor:
    """An answer extractor from a regular expression: its last match in a text, or that match's first group."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise KnobError("answer_regex", f"{{knob}} is not a valid regular expression: {_literal(exc)}") from None

    def extract(text: str) -> str | None:
        matches = list(compiled.finditer(text))
        if not matches:
            return None
        return matches[-1].group(1) if compiled.groups else matches[-1].group(0)

    return extract


def knob_params(
    method: str,
    *,
    chains: int | None = None,
    temperature: float | None = None,
    proposal_temperature: float | None = None,
    n: int | None = None,
    select: str | None = None,
    answer_regex: str | None = None,
    parts_extractor: PartsExtractor | None = None,
    strict: bool = True,
) -> dict[str, Any]:
    """The config fields of ``method`` that the knobs set (None: not given); ``proposal_temperature`` is the
    method's own field when a request also names it, which ``temperature`` may then not set again.
    ``parts_extractor`` is what the entry point can compare for ``select`` coverage or consensus (the server: tool
    calls)."""
    spec = method_spec(method)
    config = spec.config
    params: dict[str, Any] = {}
    if chains is not None:
        if spec.chains_field is not None:
            params[spec.chains_field] = chains
        elif strict:
            with_chains = methods_where("chains_field")
            methods = _literal(", ".join(with_chains))
            raise KnobError("chains", f"{{knob}} applies to methods {methods}, not {_literal(repr(method))}")
    if temperature is not None:
        params.update(_temperature(method, spec.temperature, temperature, proposal_temperature, strict))
    if n is not None:
        if "n" in config.model_fields:
            params["n"] = n
        elif strict:
            with_n = [m for m in method_names() if "n" in method_spec(m).config.model_fields]
            raise KnobError("n", f"{{knob}} applies to {_literal(' and '.join(with_n))}, not {_literal(repr(method))}")
    if select in PARTS_RULES:
        if parts_extractor is None:  # an entry point with no answer parts to compare
            raise KnobError(
                "select",
                f"{{knob}} {select} compares answers made of parts (tool calls); it runs from the Python API "
                f"(select={select!r} with a parts_extractor), in `powersampling eval` (METHOD+cover, "
                "METHOD+consensus) and on the server with tools",
            )
        params["parts_extractor"] = parts_extractor
    if select is not None:
        params["select"] = select
    if answer_regex is not None:
        if select != "majority":
            raise KnobError("answer_regex", "{knob} is used by a majority vote (select majority) only")
        params["answer_extractor"] = regex_extractor(answer_regex)
    return params


def _temperature(method: str, role: str, temperature: float, given: float | None, strict: bool) -> dict[str, Any]:
    """A value the method cannot take is an error; a method without a temperature is one unless not ``strict``."""
    if role == "sampling":
        return {"temperature": temperature}
    if role == "proposal":
        if temperature == 0:
            problem = f"{{knob}} is {_literal(method)}'s proposal temperature, which must be > 0 (use method greedy)"
            raise KnobError("temperature", problem)
        if given is not None:
            raise KnobError("temperature", "{knob} and the proposal temperature are the same setting; give one")
        return {"proposal_temperature": temperature}
    if strict and role == "zero" and temperature != 0:
        raise KnobError("temperature", f"method {_literal(method)} takes no {{knob}} other than 0")
    if strict and role == "none":
        raise KnobError(
            "temperature", f"method {_literal(repr(method))} has no {{knob}} (it samples at 1/alpha: set alpha)"
        )
    return {}


def config_bounds(name: str) -> dict[str, Any]:
    """The numeric bounds (gt, ge, lt, le) every method's config that has field ``name`` validates it with, as
    ``Field`` keyword arguments: a request schema states them from here, so it cannot disagree with the config."""
    found: dict[str, Any] | None = None
    for method in method_names():
        info = method_spec(method).config.model_fields.get(name)
        if info is None:
            continue
        bounds = {
            key: getattr(m, key)
            for m in info.metadata
            for key in ("gt", "ge", "lt", "le")
            if getattr(m, key, None) is not None
        }
        if found is not None and bounds != found:
            raise ConfigError(f"config field {name!r} has different bounds in different methods: {found}, {bounds}")
        found = bounds
    if found is None:
        raise ConfigError(f"no method's config has a field {name!r}")
    return found


def _literal(value: object) -> str:
    """``value`` as text inside a message template: its braces doubled."""
    return str(value).replace("{", "{{").replace("}", "}}")
