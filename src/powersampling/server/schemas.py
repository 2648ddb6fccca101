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

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from ..samplers import method_names, planner_routes
from ..samplers.config import PowerSamplingConfig, default
from ..samplers.params import config_bounds

ScanName = PowerSamplingConfig.model_fields["scan"].annotation  # the MH scans, named once in the config

MAX_STOP_STRINGS = 4  # as OpenAI
MAX_STOP_LENGTH = 256
MAX_TOP_LOGPROBS = 20
MAX_TOOLS = 128
MAX_PARALLEL_CALLS = 4


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


class PowerSamplingParams(_Strict):
    """The sampler settings a request may give; every bound is the config's own (``config_bounds``)."""

    model_config = ConfigDict(_Strict.model_config, json_schema_extra=_entry_point_defaults)

    alpha: float | None = Field(None, **config_bounds("alpha"), description="power of the target p^alpha")
    n_mcmc: int | None = Field(None, **config_bounds("n_mcmc"), description="MH steps after each block")
    block_size: int | None = Field(None, **config_bounds("block_size"), description="tokens per block")
    chains: int | None = Field(
        None, **config_bounds("n_chains"), description="independent MH chains (or SMC particles)"
    )
    n: int | None = Field(None, **config_bounds("n"), description="candidates for best-of-n")
    seed: int | None = Field(None, **config_bounds("seed"))
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
    stop_after_rejections: int | None = Field(
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
    top_k: int | None = Field(
        None, **config_bounds("top_k"), description="scalable-power: candidate tokens per position"
    )
    rollouts: int | None = Field(
        None, **config_bounds("rollouts"), description="scalable-power: rollouts per candidate"
    )
    horizon: int | None = Field(
        None, **config_bounds("horizon"), description="scalable-power: tokens per rollout at most"
    )
    jackknife: bool | None = Field(None, description="scalable-power: jackknife the ratio estimate")
    entropy_threshold: float | None = Field(
        None,
        **config_bounds("entropy_threshold"),
        description="scalable-power: below this next-token entropy (nats), no rollouts",
    )
    select: Literal["default", "majority"] | None = Field(
        None,
        description="majority: return the answer most outputs (best-of-n candidates, MH chains, SMC "
        "particles) agree on",
    )
    answer_regex: str | None = Field(
        None,
        max_length=500,
        description="with select=majority: a regular expression whose last match (its first "
        "group, if it has one) is an output's answer; default: the last number",
    )


class JsonSchemaFormat(_Strict):
    name: str = Field(..., min_length=1, max_length=64)
    description: str | None = Field(None, max_length=2000)
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="a JSON Schema")
    strict: bool | None = Field(None, description="always strict: the grammar admits nothing else")

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    model: str = Field(..., min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(
        None,
        ge=0,
        le=2,
        description="sample, best-of-n: the sampling temperature; power, smc, scalable-power: the proposal "
        "temperature; greedy: 0 only; without method, 0 means greedy",
    )
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128, description="independent samples of the method, one choice each")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: str | list[str] | None = Field(
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

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP_STRINGS:
            raise PydanticCustomError("too_many", "at most {n} stop strings", {"n": MAX_STOP_STRINGS})
        if any(not 1 <= len(s) <= MAX_STOP_LENGTH for s in stops):
            raise PydanticCustomError("stop_length", "a stop string has 1 to {n} characters", {"n": MAX_STOP_LENGTH})
        return stop

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
        if self.stream_options is not None and not self.stream:
            return "stream_options", "stream_options is only allowed with stream: true"
        return None


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str | list[int]] = Field(
        ..., description="text, token ids, or a batch of either (one choice per prompt and sample)"
    )
    max_tokens: int | None = Field(None, ge=0, description="0 with echo: score the prompt only")
    echo: bool | None = Field(None, description="return the prompt before the completion (with its log-probabilities)")
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOGPROBS, description="the base model's log p of each token and this many alternatives"
    )
    suffix: str | None = None

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
    name: str | None = Field(None, max_length=256, description="refused: chat templates have no place for it")
    tool_calls: list[MessageToolCall] | None = Field(
        None, max_length=64, description="an assistant turn's calls, rendered as the JSON the tools grammar produces"
    )
    tool_call_id: str | None = Field(None, max_length=256, description="a tool message: the call it answers")

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class FunctionDefinition(_Strict):
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = Field(None, max_length=4000)
    parameters: dict[str, Any] | None = Field(None, description="a JSON Schema of the arguments object")
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
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = Field(None, description="the base model's log p of each returned token")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="alternatives per token")
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

    @field_validator("messages")
    @classmethod
    def _last_is_not_assistant(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages and messages[-1].role == "assistant":
            raise ValueError("the last message must not be from the assistant (continuing a reply is not supported)")
        return messages


class ToolParameterModel(_Strict):
    name: str = Field(..., min_length=1, max_length=64)
    type: str = Field("string", max_length=32, description="string, date, integer, number or boolean")
    desc: str = Field("", max_length=1000)


class ToolModel(_Strict):
    id: str = Field(..., min_length=1, max_length=64, description="the tool's name")
    desc: str = Field("", max_length=2000)
    parameters: list[ToolParameterModel] = Field(default_factory=list, max_length=32)


class PlanRequest(_Strict):
    request: str = Field(..., min_length=1, max_length=20_000, description="what to plan")
    model: str | None = Field(None, max_length=256)
    route: Annotated[str, Field(json_schema_extra=_route_enum)] | None = Field(
        "auto", max_length=64, description="auto: the feature flag and rollout percentage decide"
    )
    power_sampling: PowerSamplingParams | None = None
    max_tasks: int | None = Field(None, ge=1, le=1000)
    max_depth: int | None = Field(None, ge=1, le=20)
    seed: int | None = Field(None, ge=0, lt=2**63)
    tools: list[Annotated[str, Field(min_length=1, max_length=64)] | ToolModel | dict[str, Any]] | None = Field(
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
