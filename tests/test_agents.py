"""The plan executor: real Python callables, dependency order, concurrency (proved by a barrier, not by timing),
timeouts, captured errors, argument references, pydantic conversion, replanning through the planner's own
update (ScriptedLM: a real LanguageModel with scripted answers; grammar and samplers run for real), spans and
Prometheus observations."""

from __future__ import annotations

import asyncio
import enum
import threading

import pytest
from pydantic import BaseModel

from powersampling.agents import Executor, load_tools_module
from powersampling.errors import ConfigError
from powersampling.observability.metrics import REGISTRY
from powersampling.planner import Planner, PlannerConfig, RouteSettings, RoutingConfig, Task, TaskDAG, TaskStatus
from powersampling.planner.tools import ToolsFileError, ToolSpec
from test_planner_helpers import ScriptedLM, answer, task_in_prompt


def call(task_id: str, tool: str, arguments: dict, deps: tuple[str, ...] = ()) -> Task:
    return Task(task_id, f"run {tool}", "tool_call", dependencies=deps, tool=tool, arguments=arguments)


def plan(*tasks: Task) -> TaskDAG:
    return TaskDAG("test request", tasks)


def number(value: int) -> int:
    """Give a number back."""
    return value


def double(value: int) -> int:
    """Twice a number."""
    return 2 * value


def add(a: int, b: int) -> int:
    """Sum of two numbers."""
    return a + b


def test_dependency_order_and_references_to_earlier_outputs():
    dag = plan(
        call("t1", "number", {"value": 21}),
        call("t2", "double", {"value": {"from_task": "t1"}}, ("t1",)),
        call("t3", "number", {"value": 5}),
        call("t4", "add", {"a": {"from_task": "t2"}, "b": {"from_task": "t3"}}),  # the references alone order it
    )
    result = Executor([number, double, add]).run_sync(dag)
    assert result.ok
    assert result.outputs == {"t1": 21, "t2": 42, "t3": 5, "t4": 47}
    by_id = {c.task_id: c for c in result.calls}
    assert by_id["t4"].arguments == {"a": 42, "b": 5}  # what the function got, references resolved
    assert by_id["t4"].started_s >= max(by_id["t2"].started_s, by_id["t3"].started_s)
    assert all(t.status is TaskStatus.done for t in result.dag.tasks)


def test_independent_calls_run_concurrently_and_the_bound_holds():
    def meet(name: str) -> str:
        """Waits until a second call is running at the same time."""
        barrier.wait()
        return name

    dag = plan(call("t1", "meet", {"name": "a"}), call("t2", "meet", {"name": "b"}))
    barrier = threading.Barrier(2, timeout=20)
    result = Executor([meet], max_concurrency=2).run_sync(dag)
    assert result.ok and result.outputs == {"t1": "a", "t2": "b"}
    barrier = threading.Barrier(2, timeout=0.5)  # one at a time: the lone caller's barrier breaks
    result = Executor([meet], max_concurrency=1).run_sync(dag)
    assert {c.status for c in result.calls} == {"error"}
    assert "BrokenBarrierError" in result.calls[0].error


def test_errors_and_timeouts_are_captured_and_block_only_their_dependents():
    async def slow(seconds: float) -> str:
        """Sleeps."""
        await asyncio.sleep(seconds)
        return "late"

    def broken(text: str) -> str:
        """Always fails."""
        raise ValueError(f"cannot handle {text}")

    dag = plan(
        call("t1", "slow", {"seconds": 30}),
        call("t2", "broken", {"text": "this"}),
        call("t3", "number", {"value": 1}),
        call("t4", "double", {"value": {"from_task": "t2"}}, ("t2",)),
        call("t5", "number", {"value": 2}, ("t1",)),
    )
    result = Executor([slow, broken, number, double], timeout_s=0.2).run_sync(dag)
    status = {c.task_id: c.status for c in result.calls}
    assert status == {"t1": "timeout", "t2": "error", "t3": "ok", "t4": "skipped", "t5": "skipped"}
    errors = {c.task_id: c.error for c in result.calls}
    assert errors["t2"] == "ValueError: cannot handle this"
    assert "t2" in errors["t4"]
    assert not result.ok
    assert result.dag["t1"].status is TaskStatus.failed and result.dag["t4"].status is TaskStatus.skipped


class Unit(str, enum.Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Place(BaseModel):
    city: str
    country: str = "FR"


def forecast(place: Place, unit: Unit = Unit.celsius) -> str:
    """A forecast for a place."""
    assert isinstance(place, Place) and isinstance(unit, Unit)  # pydantic built them from the plan's JSON
    return f"{place.city}, {place.country}: 20 degrees {unit.value}"


def test_json_arguments_become_the_declared_types_and_bad_ones_are_errors():
    dag = plan(
        call("t1", "forecast", {"place": {"city": "Paris"}, "unit": "fahrenheit"}),
        call("t2", "forecast", {"place": {"country": "FR"}}),
    )
    result = Executor([forecast]).run_sync(dag)
    assert result.outputs["t1"] == "Paris, FR: 20 degrees fahrenheit"
    bad = next(c for c in result.calls if c.task_id == "t2")
    assert bad.status == "error" and "ValidationError" in bad.error and "city" in bad.error


def test_a_plan_that_cannot_run_is_refused_before_any_call():
    with pytest.raises(ConfigError, match="no function for the plan's tool"):
        Executor([number]).run_sync(plan(call("t1", "double", {"value": 1})))
    with pytest.raises(ConfigError, match="not an earlier task"):
        Executor([number]).run_sync(plan(call("t1", "number", {"value": {"from_task": "t9"}})))
    with pytest.raises(ConfigError, match="timeout_s"):
        Executor([number], timeout_s=0)


def test_each_call_is_a_prometheus_observation():
    def samples(tool: str, status: str) -> float:
        return (
            REGISTRY.get_sample_value(
                "powersampling_tool_calls_total", {"model_name": "m", "tool": tool, "status": status}
            )
            or 0.0
        )

    def count(tool: str) -> float:
        return (
            REGISTRY.get_sample_value(
                "powersampling_tool_call_duration_seconds_count", {"model_name": "m", "tool": tool}
            )
            or 0.0
        )

    def fails() -> None:
        """Fails."""
        raise RuntimeError("no")

    before = (samples("number", "ok"), samples("fails", "error"), count("number"))
    Executor([number, fails], model_name="m").run_sync(
        plan(call("t1", "number", {"value": 3}), call("t2", "fails", {}))
    )
    after = (samples("number", "ok"), samples("fails", "error"), count("number"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]


def test_each_call_is_an_opentelemetry_span():
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider = trace.get_tracer_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    Executor([number, double]).run_sync(
        plan(call("t1", "number", {"value": 3}), call("t2", "double", {"value": {"from_task": "t1"}}, ("t1",)))
    )
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith("execute_tool")}
    assert set(spans) == {"execute_tool number", "execute_tool double"}
    attrs = spans["execute_tool double"].attributes
    assert attrs["gen_ai.tool.name"] == "double" and attrs["gen_ai.tool.call.id"] == "call_t2"
    assert attrs["powersampling.tool.status"] == "ok"


# replanning through the planner's own update


def lookup_primary(city: str) -> str:
    """Look up a city's population in the primary index."""
    raise ConnectionError("the primary index is down")


def lookup_backup(city: str) -> str:
    """Look up a city's population in the backup index."""
    return f"{city}: 2.1 million"


def report(text: str) -> str:
    """Write a short report."""
    return f"REPORT {text}"


TOOLS = [lookup_primary, lookup_backup, report]


def city_answers(prompt: str) -> str:
    if task_in_prompt(prompt) == "t1":  # the replan of the failed lookup; the prompt says what failed
        assert "the primary index is down" in prompt
        return answer(
            ("Look up Paris in the backup index", [], {"tool": "lookup_backup", "arguments": {"city": "Paris"}})
        )
    return answer(
        ("Look up the population of Paris", [], {"tool": "lookup_primary", "arguments": {"city": "Paris"}}),
        ("Report the population found", [1], {"tool": "report", "arguments": {"text": {"from_task": 1}}}),
    )


def make_planner(**config) -> Planner:
    settings = RouteSettings(seed=0)
    cfg = PlannerConfig(
        route="baseline", max_depth=1, tools=TOOLS, argument_references=True, settings=settings, **config
    )
    return Planner(ScriptedLM(city_answers), cfg, routing=RoutingConfig())


def test_planned_calls_with_references_run_and_a_failed_call_is_replanned():
    planner = make_planner()
    dag = planner.decompose("How many people live in Paris? Write a report.")
    assert dag["t2"].arguments == {"text": {"from_task": "t1"}}
    result = Executor(TOOLS, planner=planner, max_replans=1).run_sync(dag)
    assert result.replans == 1 and result.ok
    assert [(c.task_id, c.status, c.replanned) for c in result.calls] == [
        ("t1", "error", True),
        ("t1.1", "ok", False),
        ("t2", "ok", False),
    ]
    # the report took the output of the call that replaced the failed one
    assert result.outputs["t2"] == "REPORT Paris: 2.1 million"
    assert result.dag["t1"].status is TaskStatus.done and result.dag["t1.1"].tool == "lookup_backup"


def test_without_replans_a_failure_stops_its_dependents():
    planner = make_planner()
    dag = planner.decompose("How many people live in Paris? Write a report.")
    result = Executor(TOOLS, planner=planner, max_replans=0).run_sync(dag)
    assert [(c.task_id, c.status) for c in result.calls] == [("t1", "error"), ("t2", "skipped")]
    assert result.replans == 0 and not result.ok


def test_tools_module_gives_its_public_functions_or_its_tools_list(tmp_path):
    module = tmp_path / "mytools.py"
    module.write_text(
        "from math import sqrt\n"
        "def area(width: float, height: float = 1.0) -> float:\n"
        "    '''Area of a rectangle.'''\n"
        "    return width * height\n"
        "def _helper() -> None: ...\n"
    )
    tools = load_tools_module(module)
    assert [t.name for t in tools] == ["area"]  # imported sqrt and private _helper are not tools
    assert tools[0].required == ("width",) and tools[0].function(2.0) == 2.0
    listed = tmp_path / "listed.py"
    listed.write_text("def a(x: int) -> int:\n    return x\ndef b() -> None: ...\nTOOLS = [a]\n")
    assert [t.name for t in load_tools_module(listed)] == ["a"]
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('nope')\n")
    with pytest.raises(ToolsFileError, match="failed to import: RuntimeError: nope"):
        load_tools_module(broken)
    with pytest.raises(ToolsFileError, match="does not exist"):
        load_tools_module(tmp_path / "missing.py")
    assert isinstance(tools[0], ToolSpec)


# streaming: calls start while the plan is still being decoded


class _PausingConstraint:
    """Passes everything to the planner's constraint; once task 1 is decoded, holds the decode until ``resume`` is
    set (by the first tool call) or 20 s pass."""

    def __init__(self, constraint, decode, resume: threading.Event, log: list[str]) -> None:
        self.constraint, self.decode, self.resume, self.log = constraint, decode, resume, log

    def start(self, generated):
        outer = self
        state = self.constraint.start(generated)
        tokens = list(generated)

        class State:
            def allowed_tokens(self):
                return state.allowed_tokens()

            def is_finished(self):
                return state.is_finished()

            def advance(self, token_id):
                state.advance(token_id)
                tokens.append(int(token_id))
                if not {"resumed", "timed out"} & set(outer.log) and '"id": 2' in outer.decode(tokens):
                    outer.log.append("resumed" if outer.resume.wait(20) else "timed out")

        return State()


class PausingLM(ScriptedLM):
    def __init__(self, answer_for, resume: threading.Event, log: list[str]) -> None:
        super().__init__(answer_for)
        self.resume, self.log = resume, log

    def sample(self, requests, temperature, rng, *, deadline=None):
        import dataclasses

        wrapped = [
            dataclasses.replace(
                r, constraint=_PausingConstraint(r.constraint, self.hf_tokenizer.decode, self.resume, self.log)
            )
            for r in requests
        ]
        return super().sample(wrapped, temperature, rng, deadline=deadline)


def test_the_first_call_starts_before_the_plan_is_decoded():
    resume, log = threading.Event(), []

    def lookup_backup(city: str) -> str:
        """Look up a city's population in the backup index."""
        log.append("first call")
        resume.set()
        return f"{city}: 2.1 million"

    script = answer(
        ("Look up the population of Paris", [], {"tool": "lookup_backup", "arguments": {"city": "Paris"}}),
        ("Report the population found", [1], {"tool": "report", "arguments": {"text": {"from_task": 1}}}),
    )
    config = PlannerConfig(
        route="baseline",
        max_depth=1,
        tools=[lookup_backup, report],
        argument_references=True,
        settings=RouteSettings(seed=0),
    )
    planner = Planner(PausingLM(lambda prompt: script, resume, log), config, routing=RoutingConfig())
    result = asyncio.run(Executor([lookup_backup, report]).run_plan(planner, "How many people live in Paris?"))
    # the decode of task 2 waited for the first call, and the call came while it waited
    assert log == ["first call", "resumed"]
    assert result.ok and result.outputs["t2"] == "REPORT Paris: 2.1 million"
    assert result.dag.metadata["route"] == "baseline"  # the finished plan replaced the streamed tasks
    assert result.first_call_started_s < result.elapsed_s


def test_routes_that_resample_do_not_stream_and_still_run():
    script = answer(
        ("Look up the population of Paris", [], {"tool": "lookup_backup", "arguments": {"city": "Paris"}}),
    )
    seen = []
    config = PlannerConfig(
        route="power", max_depth=1, tools=TOOLS, min_children=1, settings=RouteSettings(seed=0, n_mcmc=1, block_size=64)
    )
    planner = Planner(ScriptedLM(lambda prompt: script), config, routing=RoutingConfig())
    dag = planner.decompose("Paris population", on_task=seen.append)
    assert seen == [] and [t.tool for t in dag.tasks] == ["lookup_backup"]
    result = asyncio.run(Executor(TOOLS).run_plan(planner, "Paris population"))
    assert result.ok and result.outputs == {"t1": "Paris: 2.1 million"}
