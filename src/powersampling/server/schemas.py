"""OpenAI wire format for requests and responses, plus the power-sampling extensions.

Extensions travel in extra body fields so the official clients can send them (``extra_body=``): ``method`` picks
the decoding method and ``power_sampling`` holds its parameters. Every field is honoured (docs/server.md says what
each does per method) or refused with a 400 naming it: top_p other than 1 and suffix are refused, since truncating
or filtering a power sample would change the distribution it was drawn from.

Fields are strictly typed (``"5"`` is not an integer, ``"yes"`` and ``1`` are not booleans; an integer is a valid
float): a value the client did not mean to send is refused instead of reinterpreted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from ..planner.planner import PlannerConfig
from ..samplers import method_names, planner_routes
from ..samplers.config import PowerSamplingConfig, default
from ..samplers.params import config_bounds

ScanName = PowerSamplingConfig.model_fields["scan"].annotation  # the MH scans, named once in the config

MAX_STOP_STRINGS = 4  # as OpenAI
MAX_STOP_LENGTH = 256
MAX_TOP_LOGPROBS = 20
MAX_TOOLS = 128
MAX_PARALLEL_CALLS = 4
_MIN_CHILDREN = PlannerConfig.__dataclass_fields__["min_children"].default  # a plan splits into at least this many


def _integral(value: Any) -> Any:
    # JSON Schema counts 5.0 as an integer, and JSON parsers hand it over as a float: taken as the integer it is
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral)]  # an integer; 5.0 is one, 5.5, "5" and true are not

# A JSON Schema for function parameters and response formats, as far as the grammar compiler reads it
# (planner.tools._normalize): published so that a schema the server cannot compile is not schema-valid.
JSON_SCHEMA_SUBSET = "JsonSchemaSubset"
_SCALAR_TYPES = ["string", "number", "integer", "boolean", "null"]
_PROPERTY_NAME = r'^[^\x00-\x1f"\\]{1,64}$'
# placeholders pydantic leaves alone; the app swaps in the subset (pydantic cannot point at a component of its own)
SUBSET_MARK = "x-json-schema-subset"
_OBJECT_SUBSET = {SUBSET_MARK: "object"}
_ANY_SUBSET = {SUBSET_MARK: "any"}


def subset_schema(kind: str) -> dict[str, Any]:
    """The published schema of a field that holds a JSON Schema (of an object, for ``kind`` object)."""
    ref = {"$ref": f"#/components/schemas/{JSON_SCHEMA_SUBSET}"}
    if kind == "any":
        return ref
    typed = {"allOf": [ref], "type": "object", "required": ["type"], "properties": {"type": {"const": "object"}}}
    return {"anyOf": [typed, {"type": "object", "maxProperties": 0}]}  # {}: no arguments


def json_schema_subset_definition() -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{JSON_SCHEMA_SUBSET}"}
    return {
        "type": "object",
        "additionalProperties": False,
        "description": "a JSON Schema in the subset the grammar compiler reads: type, properties, required, items, "
        "enum, additionalProperties (true/false), description, title",
        "properties": {
            "type": {"enum": [*_SCALAR_TYPES, "array", "object"]},
            "description": {"type": "string", "maxLength": 2000},
            "title": {"type": "string", "maxLength": 200},
            "enum": {
                "type": "array",
                "minItems": 1,
                "maxItems": 64,
                "items": {"type": ["string", "number", "boolean", "null"]},
            },
            "properties": {
                "type": "object",
                "maxProperties": 32,
                "propertyNames": {"pattern": _PROPERTY_NAME},
                "additionalProperties": ref,
            },
            "required": {"type": "array", "maxItems": 32, "items": {"type": "string", "pattern": _PROPERTY_NAME}},
            "items": ref,
            "additionalProperties": {"type": "boolean"},
        },
    }


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _route_enum(schema: dict[str, Any]) -> None:
    schema["enum"] = ["auto", *planner_routes()]


def _method_enum(schema: dict[str, Any]) -> None:
    # read from the registry when the OpenAPI document is built, so methods registered after import are listed
    schema["enum"] = list(method_names())


# the settings whose defaults differ between the sampling endpoints and the planner (docs/samplers.md, "Defaults per
# entry point"); the OpenAPI document states both, read from the code
ENTRY_POINT_DEFAULTS = ("alpha", "n_mcmc", "block_size")


def _entry_point_defaults(schema: dict[str, Any]) -> None:
    from ..planner.generation import RouteSettings

    for name in ENTRY_POINT_DEFAULTS:
        prop = schema["properties"][name]
        sampling, planner = default(PowerSamplingConfig, name), getattr(RouteSettings, name)
        prop["description"] = (
            f"{prop.get('description', name)} (default {sampling:g} on /v1/completions and /v1/chat/completions, "
            f"{planner:g} on /v1/plan)"
        )


class PlanPowerSamplingParams(_Strict):
    """The power_sampling fields the planner reads; every bound is the config's own (``config_bounds``)."""

    model_config = ConfigDict(_Strict.model_config, json_schema_extra=_entry_point_defaults)

    alpha: float | None = Field(None, **config_bounds("alpha"), description="power of the target p^alpha")
    n_mcmc: Int | None = Field(None, **config_bounds("n_mcmc"), description="MH steps after each block")
    block_size: Int | None = Field(None, **config_bounds("block_size"), description="tokens per block")
    chains: Int | None = Field(
        None, **config_bounds("n_chains"), description="independent MH chains (or SMC particles)"
    )
    n: Int | None = Field(None, **config_bounds("n"), description="candidates for best-of-n")
    seed: Int | None = Field(None, **config_bounds("seed"))


class PowerSamplingParams(PlanPowerSamplingParams):
    """The sampler settings a request may give; every bound is the config's own (``config_bounds``)."""

    deadline_s: float | None = Field(
        None,
        **config_bounds("deadline_s"),
        description="the client's time budget: when it runs out the best state so far is returned with status 200",
    )
    proposal_temperature: float | None = Field(None, **config_bounds("proposal_temperature"))
    scan: ScanName | None = None  # type: ignore[valid-type]
    entropy_floor: float | None = Field(
        None, **config_bounds("entropy_floor"), description="power, scan=entropy: uniform share of cuts"
    )
    stop_after_rejections: Int | None = Field(
        None,
        **config_bounds("stop_after_rejections"),
        description="power, random/entropy scan: end a block after this many rejections in a row (not exact)",
    )
    defensive_weight: float | None = Field(
        None,
        **config_bounds("defensive_weight"),
        description="power, smc: share of the flat component in each token's proposal (exact)",
    )
    defensive_temperature: float | None = Field(
        None,
        **config_bounds("defensive_temperature"),
        description="power, smc: temperature of the defensive component (default 1)",
    )
    top_k: Int | None = Field(
        None, **config_bounds("top_k"), description="scalable-power: candidate tokens per position"
    )
    rollouts: Int | None = Field(
        None, **config_bounds("rollouts"), description="scalable-power: rollouts per candidate"
    )
    horizon: Int | None = Field(
        None, **config_bounds("horizon"), description="scalable-power: tokens per rollout at most"
    )
    jackknife: bool | None = Field(None, description="scalable-power: jackknife the ratio estimate")
    entropy_threshold: float | None = Field(
        None,
        **config_bounds("entropy_threshold"),
        description="scalable-power: below this next-token entropy (nats), no rollouts",
    )
    select: Literal["default", "majority", "coverage", "consensus"] | None = Field(
        None,
        description="majority: return the answer most outputs (best-of-n candidates, MH chains, SMC "
        "particles) agree on; coverage: the output whose tool calls contain the most of the other outputs' calls; "
        "consensus: the output whose tool calls agree best (F1) with the other outputs' calls "
        "(for both, outputs without tool calls give no answer: with none, the method's own pick is returned and "
        "selected_by says which)",
    )
    answer_regex: str | None = Field(
        None,
        max_length=500,
        description="with select=majority: a regular expression whose last match (its first "
        "group, if it has one) is an output's answer; default: the last number",
    )


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_LENGTH)]


def _rules(*rules: dict[str, Any]):
    """Cross-field rules the server checks, published in the schema (``allOf``)."""

    def extra(schema: dict[str, Any]) -> None:
        schema.setdefault("allOf", []).extend(rules)

    return extra


def _given(name: str, value: dict[str, Any] | None = None) -> dict[str, Any]:
    """The condition "``name`` is sent and not null" (and matches ``value``)."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}, **(value or {})}}}


def _absent(name: str) -> dict[str, Any]:
    """The condition "``name`` is left out or null"."""
    return {"properties": {name: {"type": "null"}}}


def implies(name: str, value: dict[str, Any] | None, then: dict[str, Any]) -> dict[str, Any]:
    """ "When ``name`` is sent (and matches ``value``), ``then`` holds", written as ``anyOf`` [not the condition,
    ``then``]: schemathesis's generator handles this form where several ``if``/``then`` clauses overwhelm it."""
    otherwise = {"properties": {name: {"not": value}}} if value else _absent(name)
    return {"anyOf": [otherwise, then]}


class JsonSchemaFormat(_Strict):
    name: str = Field(..., min_length=1, max_length=64)
    description: str | None = Field(None, max_length=2000)
    schema_: Annotated[dict[str, Any], WithJsonSchema(_ANY_SUBSET)] = Field(
        ..., alias="schema", description="a JSON Schema"
    )
    strict: bool | None = Field(None, description="always strict: the grammar admits nothing else")

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = Field(None, description="with type json_schema only, and then required")

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_rules(
            {
                "anyOf": [
                    {"allOf": [{"properties": {"type": {"const": "json_schema"}}}, _given("json_schema")]},
                    {"allOf": [{"properties": {"type": {"not": {"const": "json_schema"}}}}, _absent("json_schema")]},
                ]
            }
        ),
    )


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    model: str = Field(..., min_length=1, max_length=256)
    max_tokens: Int | None = Field(None, ge=1)
    temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="sample, best-of-n: the sampling temperature; power, smc, scalable-power: the proposal "
        "temperature; greedy: 0 only; without method, 0 means greedy",
    )
    # the schema says what is served (1); other values in [0, 1] get a 400 that says why
    top_p: (
        Annotated[float, Field(ge=0, le=1), WithJsonSchema({"type": "number", "minimum": 1, "maximum": 1})] | None
    ) = Field(None, description="only 1: truncation would change the target distribution")
    n: Int | None = Field(None, ge=1, le=128, description="independent samples of the method, one choice each")
    stream: bool | None = False
    stream_options: StreamOptions | None = Field(
        None, description="include_usage: a usage chunk before [DONE]; a response that is not streamed always has usage"
    )
    seed: Int | None = Field(None, ge=0, lt=2**63)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = Field(
        None,
        description="up to 4 stop strings: the completion ends at the first one, as at a stop token (every method "
        "samples its target over completions that end there); the returned text excludes it",
    )
    user: str | None = Field(None, max_length=256)
    response_format: ResponseFormat | None = Field(
        None, description="json_object or json_schema: every method samples under the schema's grammar"
    )
    method: Annotated[str, Field(json_schema_extra=_method_enum)] | None = Field(
        None, max_length=64, description="decoding method (default: the server's)"
    )
    power_sampling: PowerSamplingParams | None = None

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str | None) -> str | None:
        # checked against the registry at request time: a method registered after the app was built is served
        if method is not None and method not in method_names():
            raise PydanticCustomError(
                "unknown_method", "must be one of: {choices}", {"choices": ", ".join(method_names())}
            )
        return method

    def unsupported(self) -> tuple[str, str] | None:
        """(field, reason) for the first field the server cannot honour exactly, or None."""
        if self.top_p is not None and self.top_p != 1:
            return "top_p", "top_p other than 1 is not supported (it would change the target distribution)"
        return None


class CompletionRequest(_SamplingFields):
    prompt: str | list[Int] | list[str | list[Int]] = Field(
        ..., description="text, token ids, or a batch of either (one choice per prompt and sample)"
    )
    max_tokens: Int | None = Field(None, ge=0, description="0 with echo: score the prompt only")
    echo: bool | None = Field(None, description="return the prompt before the completion (with its log-probabilities)")
    logprobs: Int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="the base model's log p of each token and this many alternatives"
    )
    suffix: Annotated[str, WithJsonSchema({"type": "string", "maxLength": 0})] | None = Field(
        None, description="refused unless empty: insertion is not supported"
    )

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_rules(
            implies("max_tokens", {"const": 0}, _given("echo", {"const": True})),
        ),
    )

    def unsupported(self) -> tuple[str, str] | None:
        if self.suffix:
            return "suffix", "suffix (insertion) is not supported"
        return super().unsupported()


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str = Field(..., min_length=1, max_length=64)
    arguments: str = Field(..., description="the arguments as a JSON object in a string")


class MessageToolCall(_Strict):
    id: str = Field(..., min_length=1, max_length=256)
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: Annotated[str, WithJsonSchema({"not": {}})] | None = Field(
        None, description="refused: chat templates have no place for it"
    )
    tool_calls: list[MessageToolCall] | None = Field(
        None, max_length=64, description="an assistant turn's calls, rendered as the JSON the tools grammar produces"
    )
    tool_call_id: str | None = Field(None, max_length=256, description="a tool message: the call it answers")

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_rules(
            {"anyOf": [{"properties": {"role": {"const": "assistant"}}}, _absent("tool_calls")]},
            {
                "anyOf": [
                    {"allOf": [{"properties": {"role": {"const": "tool"}}}, _given("tool_call_id")]},
                    {"allOf": [{"properties": {"role": {"not": {"const": "tool"}}}}, _absent("tool_call_id")]},
                ]
            },
            {"anyOf": [_given("content"), _given("tool_calls", {"type": "array", "minItems": 1})]},
        ),
    )

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionDefinition(_Strict):
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(None, max_length=4000)
    parameters: Annotated[dict[str, Any], WithJsonSchema(_OBJECT_SUBSET)] | None = Field(
        None, description="a JSON Schema of the arguments object"
    )
    strict: bool | None = Field(None, description="always strict: the grammar admits only valid arguments")

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, parameters: dict[str, Any] | None) -> dict[str, Any] | None:
        if parameters is None:
            return None
        properties, required = parameters.get("properties", {}), parameters.get("required", [])
        if not isinstance(properties, dict) or not all(isinstance(v, dict) for v in properties.values()):
            raise PydanticCustomError("bad_schema", "properties must map names to JSON Schemas")
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise PydanticCustomError("bad_schema", "required must be a list of property names")
        return parameters


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str = Field(..., min_length=1, max_length=64)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=1024)
    max_completion_tokens: Int | None = Field(None, ge=1)
    logprobs: bool | None = Field(None, description="the base model's log p of each returned token")
    top_logprobs: Int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="alternatives per token")
    tools: list[ChatTool] | None = Field(
        None, min_length=1, max_length=MAX_TOOLS, description="functions the reply may call (through a grammar)"
    )
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None,
        description="auto (default with tools): tool calls or a text answer; required: one or more calls; none: "
        "text only; a named function: calls of that function only",
    )
    parallel_tool_calls: bool | None = Field(
        None, description=f"true (default): up to {MAX_PARALLEL_CALLS} calls in one turn; false: one"
    )

    def unsupported(self) -> tuple[str, str] | None:
        for i, message in enumerate(self.messages):
            if message.name is not None:
                return f"messages.{i}.name", "message names are not supported (the chat template has no place for them)"
        return super().unsupported()

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra=_rules(
            implies("top_logprobs", None, _given("logprobs", {"const": True})),
        ),
    )


ToolName = Annotated[str, Field(pattern=_PROPERTY_NAME)]  # what a JSON string holds without escapes


def tool_rule(grammar: bool) -> dict[str, Any]:
    """tool_choice and parallel_tool_calls need tools; response_format applies to text answers (tool_choice none);
    without a grammar (a model without a Hugging Face tokenizer) the reply cannot call tools."""
    branches = [
        {"allOf": [_absent("tools"), _absent("tool_choice"), _absent("parallel_tool_calls")]},
        {"allOf": [_given("tools"), _given("tool_choice", {"const": "none"})]},
    ]
    if grammar:
        branches.append(
            {
                "allOf": [
                    _given("tools"),
                    {"properties": {"tool_choice": {"not": {"const": "none"}}}},
                    {"properties": {"response_format": {"properties": {"type": {"const": "text"}}}}},
                ]
            }
        )
    return {"anyOf": branches}


class ToolParameterModel(_Strict):
    name: ToolName
    type: str = Field("string", max_length=32, description="string, date, integer, number or boolean")
    desc: str = Field("", max_length=1000)


class ToolModel(_Strict):
    id: ToolName = Field(..., description="the tool's name")
    desc: str = Field("", max_length=2000)
    parameters: list[ToolParameterModel] = Field(default_factory=list, max_length=32)


class McpTool(_Strict):
    """An entry of an MCP ``tools/list`` result."""

    name: ToolName
    description: str | None = Field(None, max_length=4000)
    inputSchema: Annotated[dict[str, Any], WithJsonSchema(_OBJECT_SUBSET)] = Field(
        ..., description="a JSON Schema of the arguments object"
    )
    title: str | None = Field(None, max_length=200)


class PlanRequest(_Strict):
    request: str = Field(..., min_length=1, max_length=20_000, description="what to plan")
    model: str | None = Field(None, max_length=256)
    route: Annotated[str, Field(json_schema_extra=_route_enum)] | None = Field(
        "auto", max_length=64, description="auto: the feature flag and rollout percentage decide"
    )
    power_sampling: PlanPowerSamplingParams | None = None
    max_tasks: Int | None = Field(None, ge=_MIN_CHILDREN, le=1000, description="at least the planner's min_children")
    max_depth: Int | None = Field(None, ge=1, le=20)
    seed: Int | None = Field(None, ge=0, lt=2**63)
    tools: list[ToolName | ToolModel | ChatTool | McpTool] | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="a closed tool vocabulary: names, TaskBench tools (tools.json), OpenAI function tools "
        '({"type": "function", "function": {...}}) or MCP tools/list entries (inputSchema); every task then calls '
        "one of them with its arguments",
    )

    @field_validator("route")
    @classmethod
    def _known_route(cls, route: str | None) -> str | None:
        if route is not None and route != "auto" and route not in planner_routes():
            raise PydanticCustomError(
                "unknown_route", "must be auto or one of: {choices}", {"choices": ", ".join(planner_routes())}
            )
        return route


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
    partial: dict[str, Any] | None = None


# Response bodies, for the OpenAPI document (the handlers build plain dicts in these shapes).


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Usage(_Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(_Open):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(_Open):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(_Open):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    power_sampling: dict[str, Any] = Field(..., description="the run's measured metadata")


class TopLogprob(_Open):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(_Open):
    content: list[TokenLogprob]


class ResponseToolCall(_Open):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ResponseToolCall] | None = None


class ChatChoice(_Open):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls"]
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(_Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    power_sampling: dict[str, Any] = Field(..., description="the run's measured metadata")
