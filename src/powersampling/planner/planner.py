"""``Planner``: a request in, a validated hierarchical task DAG out.

1. The request (and context) is screened: size limits, prompt-injection flags.
2. The route is chosen: the caller's, else the feature flag and rollout (``RoutingConfig``).
3. The model lists the top-level tasks WITH their dependencies, through a grammar that only admits dependencies on
   earlier tasks; then every task the model marked non-atomic is expanded the same way, breadth first, up to
   ``max_depth``. Budgets (model calls, tasks, depth, deadline) are checked before each model call, and each call's
   allowed number of tasks is cut to what the task budget has left, so nothing is generated only to be thrown away.
4. When the power (or best-of-n / smc) route fails, the baseline route answers that call, and the plan's metadata
   and the log say so and why.

Subtasks inherit their parent's place in the order through the DAG's semantics (a task's dependencies hold for all
of its subtasks), so the model only states precedence between siblings.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import CapabilityError, ConfigError, PowerSamplingError
from ..samplers import method_spec, planner_routes
from ..samplers.registry import BASELINE_ROUTE
from ..samplers.result import ProgressEvent
from .dag import DAGLimits, DAGValidationError, Task, TaskDAG, TaskStatus
from .export import SCHEMA_VERSION
from .generation import GenerationError, RouteSettings, generate_json, route_method
from .prompts import system_prompt, task_prompt
from .quality import PlanQualityEvaluator
from .routing import RoutingConfig
from .safety import InputLimits, PlanInputError, neutralize_control_tokens, screen_input, screen_mapping_values
from .schema import (
    REFERENCE_KEY,
    TaskListSpec,
    max_output_tokens,
    parse_task,
    parse_task_list,
    reference_of,
    task_list_schema,
)
from .streaming import TaskStream
from .tools import ToolsFileError, ToolSpec, as_tool_specs

log = logging.getLogger("powersampling.planner")


class PlanBudgetError(PowerSamplingError):
    """A budget (model calls, tasks, deadline) ran out before the plan had its top-level tasks."""


@dataclass(frozen=True)
class PlannerConfig:
    """Planner settings. ``max_depth`` 1 gives only top-level tasks; each level of expansion adds one."""

    max_depth: int = 2
    max_tasks: int = 40
    max_children: int = 6
    min_children: int = 2
    max_dependencies: int = 4
    max_model_calls: int = 8
    description_max_chars: int = 80
    task_types: tuple[str, ...] | None = None
    tools: tuple[ToolSpec, ...] | None = None  # also accepted: callables, names, OpenAI/MCP/TaskBench dicts
    argument_references: bool = False  # a tool call's argument may be an earlier task's output ({"from_task": j})
    agents: tuple[str, ...] | None = None
    route: str | None = None
    fallback_to_baseline: bool = True
    select_best_by_quality: bool = True
    deadline_s: float | None = None
    settings: RouteSettings | None = None  # None: alpha, n_mcmc, block_size from the routing config (environment)
    input_limits: InputLimits = field(default_factory=InputLimits)

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_tasks", "max_children", "min_children", "max_model_calls"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_children > self.max_children:
            raise ConfigError(f"min_children ({self.min_children}) exceeds max_children ({self.max_children})")
        if self.max_tasks < self.min_children:
            raise ConfigError(f"max_tasks ({self.max_tasks}) is below min_children ({self.min_children})")
        if self.max_dependencies < 0:
            raise ConfigError("max_dependencies must be >= 0")
        if self.description_max_chars < 16:
            raise ConfigError("description_max_chars must be >= 16")
        if self.route is not None:
            route_method(self.route)  # a ConfigError naming the routes
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ConfigError("deadline_s must be > 0")
        if self.tools is not None:
            try:
                object.__setattr__(self, "tools", as_tool_specs(tuple(self.tools)))
            except ToolsFileError as exc:
                raise ConfigError(f"invalid tools: {exc}") from None
        for name in ("task_types", "agents"):
            values = getattr(self, name)
            if values is not None:
                values = tuple(values)
                if not values or any(not isinstance(v, str) or not v.strip() for v in values):
                    raise ConfigError(f"{name} must be a non-empty list of non-empty names")
                object.__setattr__(self, name, values)

    @property
    def limits(self) -> DAGLimits:
        return DAGLimits(max_tasks=self.max_tasks, max_depth=self.max_depth, max_children=self.max_children)


FeedbackOp = Literal["expand", "replace_subtasks", "add_task", "remove_task", "set_status"]


@dataclass
class Feedback:
    """One change to a plan. ``expand``/``replace_subtasks`` without ``subtasks`` ask the model (with ``note`` as
    guidance); with ``subtasks`` (dicts with description and optional task_type/tool/agent/dependencies among
    themselves by local index 1..n or by existing task id) they are used as given."""

    op: FeedbackOp
    task_id: str | None = None
    subtasks: list[dict[str, Any]] | None = None
    task: dict[str, Any] | None = None
    status: str | None = None
    note: str | None = None

    @classmethod
    def coerce(cls, value: Feedback | Mapping[str, Any]) -> Feedback:
        if isinstance(value, Feedback):
            return value
        if not isinstance(value, Mapping):
            raise PlanInputError(f"feedback must be a Feedback or a dict, got {type(value).__name__}")
        unknown = set(value) - {"op", "task_id", "subtasks", "task", "status", "note"}
        if unknown:
            raise PlanInputError(f"unknown feedback field(s): {', '.join(sorted(unknown))}")
        if value.get("op") not in ("expand", "replace_subtasks", "add_task", "remove_task", "set_status"):
            raise PlanInputError(f"unknown feedback op {value.get('op')!r}")
        return cls(**value)


class _Budget:
    """Counts model calls against the limits; ``check`` runs before every call."""

    def __init__(self, config: PlannerConfig) -> None:
        self.config = config
        self.calls = 0
        self.started = time.monotonic()
        self.deadline = self.started + config.deadline_s if config.deadline_s else None

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def refusal(self, tasks_now: int, level: int) -> str | None:
        """Why the next call may not run, or None."""
        cfg = self.config
        if self.calls >= cfg.max_model_calls:
            return f"model call budget of {cfg.max_model_calls} spent"
        if level > cfg.max_depth:
            return f"depth budget of {cfg.max_depth} reached"
        if tasks_now + cfg.min_children > cfg.max_tasks:
            return f"task budget of {cfg.max_tasks} leaves no room for {cfg.min_children} more"
        remaining = self.remaining_s()
        if remaining is not None and remaining <= 0:
            return f"deadline of {cfg.deadline_s} s passed"
        return None

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000.0


class Planner:
    """Decomposes requests into ``TaskDAG``s with a language model.

    ``routing`` defaults to ``RoutingConfig.from_env()`` (read here, so bad environment values fail at start).
    ``evaluator`` scores plans (default ``PlanQualityEvaluator``); ``on_stage`` receives one line per planning
    stage and ``progress`` the samplers' progress events.
    """

    def __init__(
        self,
        model,
        config: PlannerConfig | None = None,
        *,
        routing: RoutingConfig | None = None,
        evaluator: PlanQualityEvaluator | None = None,
        on_stage: Callable[[str], None] | None = None,
        progress: Callable[[ProgressEvent], None] | None = None,
    ) -> None:
        self.model = model
        self.config = config or PlannerConfig()
        self.routing = routing if routing is not None else RoutingConfig.from_env()
        self.evaluator = evaluator or PlanQualityEvaluator()
        self.on_stage = on_stage
        self.progress = progress
        # settings were validated when they were built (RouteSettings checks every route's parameters)
        self.settings = self.config.settings or self.routing.settings
        route = self.config.route
        if (
            route is not None
            and model is not None
            and method_spec(route_method(route)).exact_logprobs
            and not getattr(model, "exact_under_constraints", True)
        ):
            reason = getattr(model, "inexact_constraints_reason", None) or "it cannot give them under a grammar"
            raise CapabilityError(
                f"the {route} route needs exact log-probabilities under the plan's grammar from "
                f"{model.name}, and {reason}. The baseline and best-of-n routes run on it."
            )

    # public API

    def decompose(
        self,
        request: str,
        context: Any = None,
        *,
        request_key: str | None = None,
        on_task: Callable[[Task], None] | None = None,
    ) -> TaskDAG:
        """Plan ``request``. ``request_key`` (default: the request text) decides the rollout bucket.

        ``on_task`` receives each top-level task as soon as the model has decoded it, while the rest of the plan is
        still being decoded (LLMCompiler's streaming): only on the baseline route, whose one sample never takes a
        token back, and only with ``max_depth`` 1, where every top-level task is final. Otherwise it hears
        nothing and the tasks come with the plan."""
        screened = screen_input(request, context, self.config.input_limits)
        budget = _Budget(self.config)
        if self.config.route is not None:
            route, reason = self.config.route, "requested"
        else:
            decision = self.routing.decide(request_key if request_key is not None else request)
            route, reason = decision.route, decision.reason
        run = _PlannerCalls(self, screened.prompt_request, screened.prompt_context, route, budget)
        run.on_task = on_task if self.config.max_depth == 1 else None
        self._stage(f"planning top-level tasks ({route} route)")
        top = run.generate_children(parent=None, plan_so_far=[], note=None, level=1)
        if top is None:
            raise PlanBudgetError(f"no plan: {run.budget_stop}")
        tasks = list(top)
        TaskDAG(request, tasks, limits=self.config.limits)  # validate before spending more calls
        tasks = run.expand_breadth_first(request, tasks)
        dag = TaskDAG(request, tasks, limits=self.config.limits)
        report = self.evaluator.evaluate_dag(dag)
        metadata = {
            "schema_version": SCHEMA_VERSION,
            "route": run.route_used(),
            "requested_route": route,
            "route_reason": reason,
            "fallback": bool(run.fallbacks),
            "fallback_reason": run.fallbacks[0]["reason"] if run.fallbacks else None,
            "fallbacks": run.fallbacks,
            "quality_score": report.score,
            "quality_breakdown": report.breakdown,
            "latency_ms": budget.elapsed_ms(),
            "model_calls": budget.calls,
            "tokens_generated": run.tokens_generated,
            "model": getattr(self.model, "name", None),
            "max_depth": self.config.max_depth,
            "budget_stop": run.budget_stop,
            "expansion_errors": run.expansion_errors,
            "safety_flags": screened.flags,
            "calls": run.call_log,
        }
        if screened.flags:
            metadata["safety_note"] = "input flagged for possible prompt injection; plan produced as usual"
        log.info(
            "plan ready: route=%s fallback=%s quality=%.3f calls=%d tasks=%d latency_ms=%.0f",
            metadata["route"],
            metadata["fallback"],
            report.score,
            budget.calls,
            len(dag),
            metadata["latency_ms"],
        )
        return dag.with_metadata(**metadata)

    def update(self, dag: TaskDAG, feedback: Feedback | Mapping[str, Any] | Sequence[Any]) -> TaskDAG:
        """Apply feedback (one change or a list, all or nothing). On any failure the previous DAG comes back
        unchanged in its tasks, with ``metadata["last_update"]`` saying what failed."""
        items = feedback if isinstance(feedback, Sequence) and not isinstance(feedback, (str, bytes)) else [feedback]
        budget = _Budget(self.config)
        started = time.monotonic()
        try:
            ops = [Feedback.coerce(f) for f in items]
            notes = {f"feedback[{i}].note": op.note for i, op in enumerate(ops) if op.note}
            flags = screen_mapping_values(notes)
            if flags:
                log.warning("possible prompt injection in planner feedback: %s", ", ".join(flags))
            route = self.config.route or dag.metadata.get("route") or BASELINE_ROUTE
            if route not in planner_routes():  # "mixed": some calls of the original plan fell back
                route = BASELINE_ROUTE
            run = _PlannerCalls(self, neutralize_control_tokens(dag.request), "", route, budget)
            current = dag
            for op in ops:
                current = self._apply(run, current, op)
        except (PowerSamplingError, ValueError, KeyError) as exc:
            log.warning("plan update rolled back: %s", exc)
            return dag.with_metadata(
                last_update={"applied": False, "error": str(exc).strip("'\""), "model_calls": budget.calls}
            )
        report = self.evaluator.evaluate_dag(current)
        return current.with_metadata(
            quality_score=report.score,
            quality_breakdown=report.breakdown,
            last_update={
                "applied": True,
                "ops": [op.op for op in ops],
                "model_calls": budget.calls,
                "fallbacks": run.fallbacks,
                "safety_flags": flags,
                "latency_ms": (time.monotonic() - started) * 1000.0,
            },
        )

    # internals

    def _apply(self, run: _PlannerCalls, dag: TaskDAG, op: Feedback) -> TaskDAG:
        if op.op == "add_task":
            if not op.task:
                raise PlanInputError("add_task needs 'task'")
            return dag.add_tasks([Task.from_dict(op.task)])
        if op.task_id is None:
            raise PlanInputError(f"{op.op} needs 'task_id'")
        target = dag[op.task_id]
        if op.op == "set_status":
            try:
                return dag.update_task(target.id, status=TaskStatus(op.status))
            except ValueError:
                raise PlanInputError(f"unknown status {op.status!r}") from None
        if op.op == "remove_task":
            gone = {target.id, *dag.descendants(target.id)}
            return dag.with_tasks([t for t in dag.tasks if t.id not in gone])
        # expand / replace_subtasks
        if op.op == "expand" and not dag.is_leaf(target.id):
            raise PlanInputError(f"task {target.id!r} already has subtasks; use replace_subtasks")
        if op.subtasks is not None:
            children = _subtasks_from_dicts(target.id, op.subtasks, dag)
        else:
            level = dag.level(target.id) + 1
            plan_so_far = [t for t in dag.tasks if t.id not in set(dag.descendants(target.id))]
            children = run.generate_children(parent=target, plan_so_far=plan_so_far, note=op.note, level=level)
            if children is None:
                raise PlanBudgetError(f"cannot expand {target.id!r}: {run.budget_stop}")
        return dag.replace_subtasks(target.id, children).update_task(target.id, atomic=False)

    def _stage(self, message: str) -> None:
        log.info(message)
        if self.on_stage is not None:
            self.on_stage(message)


class _PlannerCalls:
    """The model calls of one decompose or update."""

    def __init__(self, planner: Planner, request_text: str, context_text: str, route: str, budget: _Budget) -> None:
        self.planner = planner
        self.config = planner.config
        self.request_text = request_text
        self.context_text = context_text
        self.route = route
        self.budget = budget
        self.fallbacks: list[dict[str, Any]] = []
        self.call_log: list[dict[str, Any]] = []
        self.routes_used: list[str] = []
        self.tokens_generated = 0
        self.budget_stop: str | None = None
        self.expansion_errors: list[dict[str, str]] = []
        self.on_task: Callable[[Task], None] | None = None
        self.streaming: tuple[TaskListSpec, str, int] | None = None

    def route_used(self) -> str:
        """The route that produced the plan: the requested one unless any call fell back (the baseline route if all
        did)."""
        if not self.routes_used:
            return self.route
        return self.routes_used[0] if len(set(self.routes_used)) == 1 else "mixed"

    def expand_breadth_first(self, request: str, tasks: list[Task]) -> list[Task]:
        # breadth first: every task in the queue knows its level, so no DAG is rebuilt to look it up
        queue = deque((t, 2) for t in tasks if not t.atomic)
        while queue:
            parent, level = queue.popleft()
            task_id = parent.id
            self.planner._stage(f"expanding {task_id}: {parent.description}")
            try:
                children = self.generate_children(parent=parent, plan_so_far=tasks, note=None, level=level)
            except PlanBudgetError as exc:
                self.budget_stop = str(exc)
                break
            except (PowerSamplingError, ValueError) as exc:
                # one failed expansion leaves its task unexpanded; the rest of the plan stands
                log.warning("expansion of %s failed: %s", task_id, exc)
                self.expansion_errors.append({"task_id": task_id, "error": f"{type(exc).__name__}: {exc}"})
                continue
            if children is None:
                # nothing more fits the budget: the remaining tasks stay as they are, marked unexpanded
                self.planner._stage(f"stopped expanding: {self.budget_stop}")
                break
            candidate = [*tasks, *children]
            TaskDAG(request, candidate, limits=self.config.limits)  # validated on every update
            tasks = candidate
            queue.extend((c, level + 1) for c in children if not c.atomic)
        return tasks

    def generate_children(
        self, parent: Task | None, plan_so_far: Sequence[Task], note: str | None, level: int
    ) -> list[Task] | None:
        """Tasks under ``parent`` (None: top level) from one model call, or None when a budget forbids the call."""
        refusal = self.budget.refusal(len(plan_so_far), level)
        if refusal is not None:
            self.budget_stop = refusal
            return None
        cfg = self.config
        room = min(cfg.max_children, cfg.max_tasks - len(plan_so_far))
        spec = TaskListSpec(
            min_tasks=cfg.min_children,
            max_tasks=room,
            max_dependencies=cfg.max_dependencies,
            description_max_chars=cfg.description_max_chars,
            task_types=cfg.task_types,
            tools=cfg.tools,
            agents=cfg.agents,
            ask_atomic=level < cfg.max_depth,
            count_first=cfg.tools is not None,
            references=cfg.argument_references and cfg.tools is not None,
        )
        user_prompt = task_prompt(
            self.request_text,
            spec,
            context=self.context_text,
            tools=cfg.tools,
            agents=cfg.agents,
            task_types=cfg.task_types,
            note=note,
            may_expand=cfg.max_depth > 1,
            parent=(parent.id, parent.description, parent.dependencies) if parent is not None else None,
            plan_so_far=[(t.id, t.description) for t in plan_so_far] if parent is not None else (),
        )
        prefix = f"{parent.id}." if parent is not None else "t"
        parent_id = parent.id if parent is not None else None
        self.streaming = (spec, prefix, level) if parent is None and self.on_task is not None else None
        try:
            items, route = self._call_with_fallback(spec, user_prompt, parent)
        finally:
            self.streaming = None
        return [_task_from_item(item, prefix, parent_id, route, level) for item in items]

    def _call_with_fallback(self, spec: TaskListSpec, user_prompt: str, parent: Task | None):
        schema = task_list_schema(spec)
        max_tokens = max_output_tokens(spec)
        route = self.route
        try:
            return self._call(route, schema, spec, max_tokens, user_prompt), route
        except (GenerationError, PowerSamplingError, ValueError, RuntimeError) as exc:
            if route == BASELINE_ROUTE or not self.config.fallback_to_baseline:
                raise
            where = parent.id if parent is not None else "top level"
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("route %s failed for %s (%s); falling back to baseline", route, where, reason)
            self.fallbacks.append({"from": route, "to": BASELINE_ROUTE, "at": where, "reason": reason})
            refusal = self.budget.refusal(0, 1)
            if refusal is not None:
                self.budget_stop = refusal
                raise PlanBudgetError(
                    f"{route} route failed ({reason}) and the baseline cannot run: {refusal}"
                ) from exc
            return self._call(BASELINE_ROUTE, schema, spec, max_tokens, user_prompt), BASELINE_ROUTE

    def _stream_wrapper(self) -> Callable[[Any], Any] | None:
        """A constraint wrapper handing each top-level task to ``on_task`` as soon as it is decoded (the baseline
        route decodes once, in order; nothing streams on routes that resample)."""
        if self.streaming is None or self.on_task is None:
            return None
        spec, prefix, level = self.streaming
        on_task, tokenizer = self.on_task, self.planner.model.tokenizer

        def on_item(position: int, data: Any) -> None:
            try:
                item = parse_task(data, position, spec)
            except ValueError:  # the finished answer is checked again and reports it
                return
            on_task(_task_from_item(item, prefix, None, BASELINE_ROUTE, level))

        return lambda constraint: TaskStream(constraint, tokenizer.decode, on_item)

    def _call(self, route: str, schema: dict, spec: TaskListSpec, max_tokens: int, user_prompt: str):
        self.budget.calls += 1
        evaluator = None
        if self.config.select_best_by_quality and method_spec(route_method(route)).selects_by_evaluator:
            evaluator = self.planner.evaluator.for_request(self.request_text)
        remaining = self.budget.remaining_s()
        outcome = None
        try:
            settings = self.planner.settings
            outcome = generate_json(
                self.planner.model,
                route_method(route),
                system_prompt(spec),
                user_prompt,
                schema,
                max_new_tokens=max_tokens,
                params={**settings.params_for(route), "seed": settings.seed},
                evaluator=evaluator,
                deadline_s=max(remaining, 0.001) if remaining is not None else None,
                progress=self.planner.progress,
                label=route,
                wrap_constraint=self._stream_wrapper() if route == BASELINE_ROUTE else None,
            )
            items = parse_task_list(outcome.text, spec)
        finally:
            md = outcome.metadata if outcome is not None else {}
            self.tokens_generated += int(md.get("tokens_generated", 0))
            self.call_log.append(
                {
                    "route": route,
                    "ok": outcome is not None,
                    "tokens_generated": md.get("tokens_generated"),
                    "latency_ms": md.get("call_latency_ms"),
                    "acceptance_rate": md.get("acceptance_rate"),
                    "selected_by": md.get("selected_by"),
                    "adaptive_quality": md.get("adaptive_quality"),
                    "max_new_tokens": max_tokens,
                }
            )
        self.routes_used.append(route)
        return items


def _task_from_item(item: Mapping[str, Any], prefix: str, parent_id: str | None, route: str, level: int) -> Task:
    return Task(
        id=f"{prefix}{item['id']}",
        description=" ".join(item["description"].split()),
        task_type=item.get("task_type") or ("tool_call" if item.get("tool") else "generic"),
        parent=parent_id,
        dependencies=tuple(f"{prefix}{d}" for d in item["dependencies"]),
        agent=item.get("agent"),
        tool=item.get("tool"),
        arguments=_with_task_ids(item.get("arguments"), prefix),
        atomic=bool(item.get("atomic", True)),
        metadata={"generated_by": route, "level": level},
    )


def _with_task_ids(arguments: Mapping[str, Any] | None, prefix: str) -> dict[str, Any] | None:
    """Arguments with each ``{"from_task": j}`` (a position in the model's list) naming the task id instead."""
    if arguments is None:
        return None
    return {
        k: {REFERENCE_KEY: f"{prefix}{reference_of(v)}"} if reference_of(v) is not None else v
        for k, v in arguments.items()
    }


def _subtasks_from_dicts(parent_id: str, items: Iterable[Mapping[str, Any]], dag: TaskDAG) -> list[Task]:
    items = list(items)
    if not items:
        raise PlanInputError("subtasks must be a non-empty list")
    ids = [f"{parent_id}.{k}" for k in range(1, len(items) + 1)]
    out = []
    for k, item in enumerate(items, start=1):
        if not isinstance(item, Mapping) or not isinstance(item.get("description"), str):
            raise PlanInputError(f"subtask {k} needs a description")
        deps = []
        for d in item.get("dependencies") or []:
            if isinstance(d, int) and 1 <= d <= len(items):
                deps.append(ids[d - 1])
            elif isinstance(d, str):
                deps.append(d)
            else:
                raise DAGValidationError(f"subtask {k}: dependency {d!r} is neither a local index nor a task id")
        out.append(
            Task(
                id=ids[k - 1],
                description=item["description"],
                task_type=item.get("task_type") or "generic",
                parent=parent_id,
                dependencies=tuple(deps),
                agent=item.get("agent"),
                tool=item.get("tool"),
                effort=item.get("effort"),
                atomic=bool(item.get("atomic", True)),
                metadata=item.get("metadata") or {"generated_by": "feedback"},
            )
        )
    return out
