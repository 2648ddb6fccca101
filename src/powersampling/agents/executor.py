"""Run a plan's tool calls with real Python callables.

Each leaf task of a ``TaskDAG`` that names a tool is one call. A call starts as soon as everything it waits for has
finished (its lifted dependencies, as in ``TaskDAG.execution_graph``, and every task whose output an argument
takes), so independent calls run concurrently, at most ``max_concurrency`` at a time: the task-fetching unit of
LLMCompiler. Synchronous functions run in worker threads, coroutine functions on the event loop.

* An argument ``{"from_task": "t1"}`` is replaced by t1's output (a composite task's output is that of its last
  leaf). Arguments are checked against the function's type hints by pydantic (``validate_call``), so a JSON object
  becomes the declared model and a string the declared enum.
* Each call has a timeout; an exception or a timeout is captured in the call's result, never raised. A thread
  whose call timed out cannot be killed: it finishes in the background and its result is dropped.
* A failed call, when a ``Planner`` is given, is replanned a bounded number of times (``max_replans``): the planner's
  own dynamic update expands the failed task into new calls, told what failed, and execution goes on with them.
  Calls that waited for a failed task that was not replanned are skipped.
* Every call is an OpenTelemetry span (``execute_tool <name>``, GenAI attributes) and a Prometheus observation
  (``powersampling_tool_calls_total``, ``powersampling_tool_call_duration_seconds``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..observability.metrics import record_tool_call
from ..observability.tracing import span
from ..planner.dag import DAGLimits, Task, TaskDAG, TaskStatus
from ..planner.schema import REFERENCE_KEY, reference_of
from ..planner.tools import ToolSpec, as_tool_specs

CallStatus = Literal["ok", "error", "timeout", "skipped"]


@dataclass
class CallResult:
    """One call: what ran with which (resolved) arguments, what came back, and when (seconds from the start of the
    run)."""

    task_id: str
    tool: str
    arguments: dict[str, Any]
    status: CallStatus
    output: Any = None
    error: str | None = None
    started_s: float | None = None
    duration_s: float = 0.0
    replanned: bool = False  # the failure was handed to the planner, which replaced this task with new calls

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "tool": self.tool,
            "arguments": _jsonable(self.arguments),
            "status": self.status,
            "output": _jsonable(self.output),
            "error": self.error,
            "started_s": self.started_s,
            "duration_s": self.duration_s,
            "replanned": self.replanned,
        }


@dataclass
class ExecutionResult:
    """The plan as it ended (statuses set; with any replanned tasks expanded), every call in the order it started,
    and the outputs by task id."""

    dag: TaskDAG
    calls: list[CallResult]
    outputs: dict[str, Any]
    replans: int = 0
    elapsed_s: float = 0.0
    replan_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every leaf call ended ok (a replanned task counts through the calls that replaced it)."""
        return all(self.dag[t.id].status is TaskStatus.done for t in self.dag.leaves() if t.tool is not None)

    @property
    def first_call_started_s(self) -> float | None:
        started = [c.started_s for c in self.calls if c.started_s is not None]
        return min(started) if started else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "replans": self.replans,
            "replan_errors": self.replan_errors,
            "elapsed_s": self.elapsed_s,
            "first_call_started_s": self.first_call_started_s,
            "calls": [c.to_dict() for c in self.calls],
        }


class Executor:
    """Runs plans against ``tools`` (``ToolSpec``s with functions, or typed callables).

    ``timeout_s`` bounds each call; ``max_concurrency`` the calls running at once; ``planner`` (a ``Planner`` with
    the same tools) and ``max_replans`` enable replanning failed calls; ``model_name`` labels the metrics.
    ``validate_arguments`` False calls the functions with the arguments as given, unchecked by their type hints (for
    tools that check their own arguments, as BFCL's environments do).
    ``on_event(kind, call)`` hears ``"start"`` and ``"end"`` of every call (the CLI prints them).
    """

    def __init__(
        self,
        tools: Sequence[Any],
        *,
        timeout_s: float = 30.0,
        max_concurrency: int = 4,
        planner: Any = None,
        max_replans: int = 1,
        model_name: str = "none",
        on_event: Callable[[str, CallResult], None] | None = None,
        validate_arguments: bool = True,
    ) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_replans < 0:
            raise ConfigError(f"max_replans must be >= 0, got {max_replans}")
        self.tools = {t.name: t for t in as_tool_specs(tuple(tools))}
        wrap = _validated if validate_arguments else (lambda function: function)
        self.functions = {name: wrap(t.function) for name, t in self.tools.items() if t.function is not None}
        self.timeout_s = timeout_s
        self.max_concurrency = max_concurrency
        self.planner = planner
        self.max_replans = max_replans if planner is not None else 0
        self.model_name = model_name
        self.on_event = on_event

    def run_sync(self, dag: TaskDAG) -> ExecutionResult:
        """``run`` from synchronous code (not from inside a running event loop)."""
        return asyncio.run(self.run(dag))

    async def run(self, dag: TaskDAG) -> ExecutionResult:
        self._check_functions(dag)
        run = _Execution(self, self._with_room(dag))
        return await run.execute()

    def _with_room(self, dag: TaskDAG) -> TaskDAG:
        """``dag`` with room in its limits for the subtasks replanning adds below failed tasks."""
        if not self.max_replans:
            return dag
        limits = dag.limits
        room = DAGLimits(limits.max_tasks * 2, limits.max_depth + self.max_replans, limits.max_children)
        return TaskDAG(dag.request, dag.tasks, dag.metadata, room)

    async def run_plan(self, planner: Any, request: str, context: Any = None) -> ExecutionResult:
        """Plan ``request`` with ``planner`` and run the calls, each as soon as it is decoded and what it waits for
        has finished: on the baseline route with ``max_depth`` 1 the first call starts while the rest of the plan is
        still being decoded; on other routes the calls start once the plan is complete. Call times
        (``started_s``, ``first_call_started_s``) count from the start of planning. Planning errors propagate
        after the calls already started have finished."""
        loop = asyncio.get_running_loop()
        arrivals: asyncio.Queue = asyncio.Queue()

        def on_task(task: Task) -> None:
            loop.call_soon_threadsafe(arrivals.put_nowait, ("task", task))

        async def plan() -> None:
            try:
                dag = await asyncio.to_thread(planner.decompose, request, context, on_task=on_task)
            except BaseException as exc:  # handed to the run, which re-raises it once its calls are done
                arrivals.put_nowait(("error", exc))
            else:
                arrivals.put_nowait(("plan", dag))

        if self.planner is None:
            self.planner = planner
        run = _Execution(self, None, arrivals, request)
        planning = asyncio.create_task(plan())
        try:
            return await run.execute()
        finally:
            await planning

    def _check_functions(self, dag: TaskDAG) -> None:
        missing = sorted({t.tool for t in dag.leaves() if t.tool is not None and t.tool not in self.functions})
        if missing:
            raise ConfigError(f"no function for the plan's tool(s): {', '.join(missing)}")
        for task in dag.tasks:
            for name, value in (task.arguments or {}).items():
                ref = reference_of(value)
                if ref is not None and (ref not in dag or ref == task.id or ref in dag.descendants(task.id)):
                    raise ConfigError(
                        f"task {task.id}: argument {name} takes the output of {ref!r}, not an earlier task"
                    )

    async def call(self, tool: str, arguments: Mapping[str, Any]) -> Any:
        """Run one tool with ``arguments`` under the timeout (raises what the function raises, or TimeoutError)."""
        function = self.functions[tool]
        if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(self.tools[tool].function):
            work = function(**arguments)
        else:
            work = asyncio.to_thread(function, **arguments)
        return await asyncio.wait_for(work, self.timeout_s)


class _Execution:
    """The state of one execution: which leaves are done, running, failed or skipped."""

    def __init__(
        self, executor: Executor, dag: TaskDAG | None, arrivals: asyncio.Queue | None = None, request: str = ""
    ) -> None:
        self.executor = executor
        self.dag = dag  # None until the first streamed task arrives
        self.request = request
        self.deferred: list[CallResult] = []  # failed while the plan was still streaming
        self.arrivals = arrivals  # streamed tasks, then the finished plan (or its error)
        self.planning_error: BaseException | None = None
        self.streamed: list[Task] = []
        self.started = time.monotonic()
        self.outputs: dict[str, Any] = {}
        self.calls: list[CallResult] = []
        self.status: dict[str, TaskStatus] = {}
        self.replans = 0
        self.replan_errors: list[str] = []
        self.semaphore = asyncio.Semaphore(executor.max_concurrency)

    async def execute(self) -> ExecutionResult:
        running: dict[asyncio.Task, str] = {}
        arrival = asyncio.create_task(self.arrivals.get()) if self.arrivals is not None else None
        while True:
            for task_id in self._ready(set(running.values())):
                running[asyncio.create_task(self._call(self.dag[task_id]))] = task_id
            if not running and arrival is None:
                break
            waiting = set(running) | ({arrival} if arrival is not None else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if arrival in done:
                arrival = await self._arrived(arrival.result())
            for finished in done:
                if finished not in running:
                    continue
                task_id = running.pop(finished)
                result = finished.result()
                if result.status == "ok":
                    self.status[task_id] = TaskStatus.done
                    self.outputs[task_id] = result.output
                elif arrival is not None and self.executor.max_replans:
                    self.deferred.append(result)  # replanned once the plan it belongs to is complete
                elif not await self._replan(result):
                    self.status[task_id] = TaskStatus.failed
            self._skip_blocked(set(running.values()))
        if self.planning_error is not None:
            raise self.planning_error
        final = self.dag.with_tasks(self._composite_statuses())
        return ExecutionResult(
            final,
            self.calls,
            self.outputs,
            self.replans,
            time.monotonic() - self.started,
            self.replan_errors,
        )

    async def _arrived(self, message: tuple[str, Any]) -> asyncio.Task | None:
        """Take in a streamed task or the finished plan; the next wait for an arrival, or None after the plan."""
        kind, value = message
        if kind == "task":
            self.streamed.append(value)
            self.dag = TaskDAG(self.request, self.streamed)
            return asyncio.create_task(self.arrivals.get())
        if kind == "error":
            self.planning_error = value
            if self.dag is None:
                raise value
        else:
            dag = self.executor._with_room(value)
            self.executor._check_functions(dag)
            self.dag = dag
        deferred, self.deferred = self.deferred, []
        for result in deferred:
            if kind == "error" or not await self._replan(result):
                self.status[result.task_id] = TaskStatus.failed
        return None

    # scheduling

    def _waits_for(self, task: Task) -> set[str]:
        graph = self.dag.execution_graph()
        before = set(graph.predecessors(task.id))
        for value in (task.arguments or {}).values():
            ref = reference_of(value)
            if ref is not None and ref in self.dag:
                before |= set(self._leaves_under(ref))
        return before

    def _leaves_under(self, task_id: str) -> list[str]:
        if self.dag.is_leaf(task_id):
            return [task_id]
        return [t for t in self.dag.descendants(task_id) if self.dag.is_leaf(t)]

    def _ready(self, running: set[str]) -> list[str]:
        if self.dag is None:
            return []
        ready = []
        held = {r.task_id for r in self.deferred}
        for task in self.dag.leaves():
            if task.id in self.status or task.id in running or task.id in held:
                continue
            if all(self.status.get(d) is TaskStatus.done for d in self._waits_for(task)):
                ready.append(task.id)
        return ready

    def _skip_blocked(self, running: set[str]) -> None:
        """Leaves that wait (transitively) on a failed one can never run."""
        if self.dag is None:
            return
        changed = True
        while changed:
            changed = False
            for task in self.dag.leaves():
                if task.id in self.status or task.id in running:
                    continue
                blocked = [
                    d for d in self._waits_for(task) if self.status.get(d) in (TaskStatus.failed, TaskStatus.skipped)
                ]
                if blocked:
                    self.status[task.id] = TaskStatus.skipped
                    if task.tool is not None:
                        self.calls.append(
                            CallResult(
                                task.id,
                                task.tool,
                                dict(task.arguments or {}),
                                "skipped",
                                error=f"waits for {', '.join(sorted(blocked))}, which did not finish",
                            )
                        )
                        self._event("end", self.calls[-1])
                    changed = True

    def _composite_statuses(self) -> list[Task]:
        tasks = []
        for task in self.dag.tasks:
            status = self.status.get(task.id, task.status)
            if not self.dag.is_leaf(task.id):
                leaves = [self.status.get(t, TaskStatus.pending) for t in self._leaves_under(task.id)]
                if all(s is TaskStatus.done for s in leaves):
                    status = TaskStatus.done
                elif any(s is TaskStatus.failed for s in leaves):
                    status = TaskStatus.failed
                elif any(s is TaskStatus.skipped for s in leaves):
                    status = TaskStatus.skipped
            tasks.append(self.dag[task.id].with_changes(status=status))
        return tasks

    # one call

    async def _call(self, task: Task) -> CallResult:
        if task.tool is None:  # a leaf without a tool has nothing to run: it is done once it may start
            return CallResult(task.id, "", {}, "ok", started_s=time.monotonic() - self.started)
        arguments = {k: self._resolve(v) for k, v in (task.arguments or {}).items()}
        result = CallResult(task.id, task.tool, arguments, "ok")
        async with self.semaphore:
            result.started_s = time.monotonic() - self.started
            self._event("start", result)
            attributes = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": task.tool,
                "gen_ai.tool.call.id": f"call_{task.id}",
                "powersampling.task_id": task.id,
            }
            began = time.monotonic()
            with span(f"execute_tool {task.tool}", attributes) as current:
                try:
                    result.output = await self.executor.call(task.tool, arguments)
                except TimeoutError:
                    result.status = "timeout"
                    result.error = f"no result within {self.executor.timeout_s:g} s"
                except Exception as exc:  # the tool's own failure is the call's result
                    result.status = "error"
                    result.error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]
                if current is not None and hasattr(current, "set_attribute"):
                    current.set_attribute("powersampling.tool.status", result.status)
                    if result.error:
                        current.set_attribute("error.type", result.error.split(":")[0])
            result.duration_s = time.monotonic() - began
        record_tool_call(
            model_name=self.executor.model_name,
            tool=task.tool,
            status=result.status,
            duration_s=result.duration_s,
        )
        self.calls.append(result)
        self._event("end", result)
        return result

    def _resolve(self, value: Any) -> Any:
        ref = reference_of(value)
        if ref is None:
            return value
        leaves = self._leaves_under(ref)
        order = [t for t in self.dag.topological_order() if t in set(leaves)]
        return self.outputs.get(order[-1]) if order else None

    def _event(self, kind: str, result: CallResult) -> None:
        if self.executor.on_event is not None:
            self.executor.on_event(kind, result)

    # replanning

    async def _replan(self, failed: CallResult) -> bool:
        """Hand a failed call to the planner; True when the plan now has new calls in its place."""
        planner = self.executor.planner
        if planner is None or self.replans >= self.executor.max_replans:
            return False
        self.replans += 1
        note = (
            f"The call {failed.tool}({json.dumps(_jsonable(failed.arguments))[:200]}) failed: {failed.error}. "
            "Plan calls that do this task another way."
        )
        config = dataclasses.replace(
            planner.config,
            max_depth=self.dag.limits.max_depth,
            max_tasks=self.dag.limits.max_tasks,
            min_children=1,
            argument_references=True,
        )
        replanner = type(planner)(planner.model, config, routing=planner.routing, evaluator=planner.evaluator)
        updated = await asyncio.to_thread(
            replanner.update, self.dag, {"op": "expand", "task_id": failed.task_id, "note": note}
        )
        outcome = updated.metadata.get("last_update", {})
        if not outcome.get("applied"):
            self.replan_errors.append(f"{failed.task_id}: {outcome.get('error')}")
            return False
        # the replanned task is a composite now; the calls below it are new leaves
        failed.replanned = True
        self.dag = updated
        return True


def _validated(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with its arguments checked and converted by its type hints (a plain call when pydantic cannot
    wrap it)."""
    import pydantic

    try:
        return pydantic.validate_call(function)
    except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError, TypeError):
        return function


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (pydantic's serializer: models, enums, dates), or its repr."""
    import pydantic

    try:
        return pydantic.TypeAdapter(Any).dump_python(value, mode="json")
    except Exception:  # an output of a type pydantic cannot serialize
        return repr(value)


__all__ = ["REFERENCE_KEY", "CallResult", "ExecutionResult", "Executor", "ToolSpec"]
