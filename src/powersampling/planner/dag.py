"""Tasks and the hierarchical task DAG.

Two relations are kept apart:

* hierarchy: ``task.parent`` (a tree; a task with children is *composite*, one without is a *leaf*);
* precedence: ``task.dependencies`` (task B lists A when B may only start after A is done).

Execution semantics, which validation and the waves follow: a composite task is done when all of its children are
done, and a task may start only when its own dependencies and those of all its ancestors are done. So a dependency
on a composite task means "after all of its leaves", and a dependency of a composite task holds for every leaf under
it. A task may not depend on its own ancestor or descendant (it would wait for itself).

A ``TaskDAG`` is immutable: every change returns a new, validated DAG, so a failed change leaves the previous DAG
untouched (that is the rollback) and nothing is shared mutably between them.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import networkx as nx

from ..errors import PowerSamplingError


class DAGValidationError(PowerSamplingError, ValueError):
    """A task graph breaks an invariant (duplicate id, unknown dependency, cycle, budget...)."""


class TaskStatus(str, enum.Enum):
    pending = "pending"
    in_progress = "in_progress"
    done = "done"
    failed = "failed"
    skipped = "skipped"


@dataclass(frozen=True)
class Task:
    """One unit of work. ``dependencies`` are ids of tasks that must finish first (precedence); ``parent`` is the
    task this one refines (hierarchy). ``tool`` and ``arguments`` say what to call, for an agent to execute.
    ``effort`` is an estimate in hours (None when unknown). ``atomic`` says whether the task is meant to be executed
    as is (True) or could still be decomposed (False)."""

    id: str
    description: str
    task_type: str = "generic"
    parent: str | None = None
    dependencies: tuple[str, ...] = ()
    status: TaskStatus = TaskStatus.pending
    agent: str | None = None
    tool: str | None = None
    arguments: Mapping[str, Any] | None = None
    effort: float | None = None
    atomic: bool = True
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise DAGValidationError(f"task id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.description, str) or not self.description.strip():
            raise DAGValidationError(f"task {self.id!r} has an empty description")
        deps = tuple(self.dependencies)
        if any(not isinstance(d, str) for d in deps):
            raise DAGValidationError(f"task {self.id!r}: dependencies must be task ids (strings)")
        if len(set(deps)) != len(deps):
            raise DAGValidationError(f"task {self.id!r} lists a dependency twice: {list(deps)}")
        object.__setattr__(self, "dependencies", deps)
        object.__setattr__(self, "status", TaskStatus(self.status))
        if self.effort is not None and not (self.effort >= 0):
            raise DAGValidationError(f"task {self.id!r}: effort must be >= 0, got {self.effort!r}")
        # private deep copies: a caller mutating its dicts later cannot change this task
        object.__setattr__(self, "metadata", copy.deepcopy(dict(self.metadata)))
        if self.arguments is not None:
            if not isinstance(self.arguments, Mapping) or any(not isinstance(k, str) for k in self.arguments):
                raise DAGValidationError(f"task {self.id!r}: arguments must be an object with string keys")
            object.__setattr__(self, "arguments", copy.deepcopy(dict(self.arguments)))

    def with_changes(self, **changes: Any) -> Task:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description,
            "task_type": self.task_type,
            "parent": self.parent,
            "dependencies": list(self.dependencies),
            "status": self.status.value,
            "agent": self.agent,
            "tool": self.tool,
            "arguments": copy.deepcopy(self.arguments) if self.arguments is not None else None,
            "effort": self.effort,
            "atomic": self.atomic,
            "metadata": copy.deepcopy(dict(self.metadata)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        if not isinstance(data, Mapping):
            raise DAGValidationError(f"a task must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("id", "description") if k not in data]
        if missing:
            raise DAGValidationError(f"task {data.get('id', '?')!r} misses field(s): {', '.join(missing)}")
        known = {
            "id",
            "description",
            "task_type",
            "parent",
            "dependencies",
            "status",
            "agent",
            "tool",
            "arguments",
            "effort",
            "atomic",
            "metadata",
        }
        unknown = set(data) - known
        if unknown:
            raise DAGValidationError(f"task {data['id']!r} has unknown field(s): {', '.join(sorted(unknown))}")
        try:
            status = TaskStatus(data.get("status", "pending"))
        except ValueError:
            raise DAGValidationError(f"task {data['id']!r}: unknown status {data.get('status')!r}") from None
        return cls(
            id=data["id"],
            description=data["description"],
            task_type=data.get("task_type") or "generic",
            parent=data.get("parent"),
            dependencies=tuple(data.get("dependencies") or ()),
            status=status,
            agent=data.get("agent"),
            tool=data.get("tool"),
            arguments=data.get("arguments"),
            effort=data.get("effort"),
            atomic=bool(data.get("atomic", True)),
            metadata=data.get("metadata") or {},
        )


@dataclass(frozen=True)
class DAGLimits:
    """Size budgets every DAG is checked against. Depth 1 is a top-level task."""

    max_tasks: int = 200
    max_depth: int = 4
    max_children: int = 10

    def __post_init__(self) -> None:
        for name in ("max_tasks", "max_depth", "max_children"):
            if getattr(self, name) < 1:
                raise DAGValidationError(f"{name} must be >= 1, got {getattr(self, name)}")


class TaskDAG:
    """An immutable, validated hierarchical task DAG.

    ``metadata`` holds facts about how the plan was produced (route, fallback, quality score, ...).
    """

    def __init__(
        self,
        request: str,
        tasks: Iterable[Task],
        metadata: Mapping[str, Any] | None = None,
        limits: DAGLimits | None = None,
    ) -> None:
        self.request = request
        self.limits = limits or DAGLimits()
        self._tasks: dict[str, Task] = {}
        for task in tasks:
            if not isinstance(task, Task):
                raise DAGValidationError(f"expected Task objects, got {type(task).__name__}")
            if task.id in self._tasks:
                raise DAGValidationError(f"duplicate task id {task.id!r}")
            # each DAG owns its tasks' metadata: an old and a new version never share a mutable object
            self._tasks[task.id] = copy.deepcopy(task)
        # every plan says how it was made; one built by hand is "manual"
        self.metadata: dict[str, Any] = {"route": "manual", "fallback": False, **copy.deepcopy(dict(metadata or {}))}
        self._validate()

    # read access

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __getitem__(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise KeyError(f"no task {task_id!r} in this plan") from None

    @property
    def tasks(self) -> list[Task]:
        """Tasks in insertion order."""
        return list(self._tasks.values())

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TaskDAG)
            and self.request == other.request
            and self.tasks == other.tasks
            and self.metadata == other.metadata
        )

    def __repr__(self) -> str:
        return f"TaskDAG({len(self)} tasks, depth {self.depth()}, request={self.request[:40]!r})"

    def children(self, task_id: str | None) -> list[Task]:
        """Direct children of ``task_id`` (None: the top-level tasks), in insertion order."""
        return [self._tasks[c] for c in self._children[task_id]]

    def roots(self) -> list[Task]:
        return self.children(None)

    def ancestors(self, task_id: str) -> list[str]:
        """Parent, grandparent, ... of ``task_id``."""
        out, current = [], self[task_id].parent
        while current is not None:
            out.append(current)
            current = self._tasks[current].parent
        return out

    def descendants(self, task_id: str) -> list[str]:
        out, stack = [], list(reversed(self._children[task_id]))
        while stack:
            tid = stack.pop()
            out.append(tid)
            stack.extend(reversed(self._children[tid]))
        return out

    def level(self, task_id: str) -> int:
        """1 for a top-level task, 2 for its children, ..."""
        return len(self.ancestors(task_id)) + 1

    def depth(self) -> int:
        return max((self.level(t) for t in self._tasks), default=0)

    def leaves(self) -> list[Task]:
        return [t for t in self._tasks.values() if not self._children[t.id]]

    def is_leaf(self, task_id: str) -> bool:
        return not self._children[task_id]

    def hierarchy_graph(self) -> nx.DiGraph:
        """Edges parent -> child."""
        g = nx.DiGraph()
        g.add_nodes_from(self._tasks)
        g.add_edges_from((t.parent, t.id) for t in self._tasks.values() if t.parent is not None)
        return g

    def dependency_graph(self) -> nx.DiGraph:
        """Edges dependency -> dependent, exactly as declared (no lifting through the hierarchy)."""
        g = nx.DiGraph()
        g.add_nodes_from(self._tasks)
        g.add_edges_from((d, t.id) for t in self._tasks.values() for d in t.dependencies)
        return g

    def execution_graph(self) -> nx.DiGraph:
        """Precedence between leaves (the tasks that are actually executed), dependencies lifted through the
        hierarchy: leaf B waits for leaf A when an ancestor-or-self of B depends on an ancestor-or-self of A."""
        return self._execution_graph.copy()

    def topological_order(self) -> list[str]:
        """All task ids: every task after everything it waits for, each composite task just before its first
        leaf (so it reads top-down). Deterministic: ties follow insertion order."""
        position = {tid: i for i, tid in enumerate(self._tasks)}
        leaf_order = list(nx.lexicographical_topological_sort(self._execution_graph, key=position.__getitem__))
        out, seen = [], set()
        for leaf in leaf_order:
            for tid in reversed([leaf, *self.ancestors(leaf)]):
                if tid not in seen:
                    seen.add(tid)
                    out.append(tid)
        return out

    def parallel_waves(self) -> list[list[str]]:
        """Leaves grouped into waves: every leaf of a wave can run at once, after all earlier waves finished."""
        position = {tid: i for i, tid in enumerate(self._tasks)}
        return [sorted(wave, key=position.__getitem__) for wave in nx.topological_generations(self._execution_graph)]

    # changes (each returns a new validated DAG)

    def with_metadata(self, **updates: Any) -> TaskDAG:
        return TaskDAG(self.request, self.tasks, {**self.metadata, **updates}, self.limits)

    def with_tasks(self, tasks: Iterable[Task]) -> TaskDAG:
        return TaskDAG(self.request, tasks, self.metadata, self.limits)

    def add_tasks(self, tasks: Sequence[Task]) -> TaskDAG:
        return self.with_tasks([*self.tasks, *tasks])

    def replace_subtasks(self, parent_id: str, subtasks: Sequence[Task]) -> TaskDAG:
        """Drop every descendant of ``parent_id`` and put ``subtasks`` (whose parent must be ``parent_id``) in
        their place. Fails (leaving this DAG as it was) if another task depended on a dropped descendant."""
        self[parent_id]
        for task in subtasks:
            if task.parent != parent_id:
                raise DAGValidationError(f"subtask {task.id!r} has parent {task.parent!r}, expected {parent_id!r}")
        dropped = set(self.descendants(parent_id))
        kept = [t for t in self.tasks if t.id not in dropped]
        return self.with_tasks([*kept, *subtasks])

    def update_task(self, task_id: str, **changes: Any) -> TaskDAG:
        self[task_id]
        return self.with_tasks([t.with_changes(**changes) if t.id == task_id else t for t in self.tasks])

    # validation

    def _validate(self) -> None:
        tasks, limits = self._tasks, self.limits
        if not tasks:
            raise DAGValidationError("a plan needs at least one task")
        if len(tasks) > limits.max_tasks:
            raise DAGValidationError(f"{len(tasks)} tasks exceed the budget of {limits.max_tasks}")
        self._children: dict[str | None, list[str]] = {None: [], **{tid: [] for tid in tasks}}
        for task in tasks.values():
            if task.parent is not None and task.parent not in tasks:
                raise DAGValidationError(f"task {task.id!r} has unknown parent {task.parent!r}")
            if task.parent == task.id:
                raise DAGValidationError(f"task {task.id!r} is its own parent")
            self._children[task.parent].append(task.id)
        hierarchy = self.hierarchy_graph()
        if not nx.is_directed_acyclic_graph(hierarchy):
            cycle = [u for u, _ in nx.find_cycle(hierarchy)]
            raise DAGValidationError(f"parent links form a cycle: {' -> '.join(cycle)}")
        for tid, kids in self._children.items():
            if len(kids) > limits.max_children:
                where = f"task {tid!r}" if tid is not None else "the top level"
                raise DAGValidationError(
                    f"{where} has {len(kids)} subtasks, more than the budget of {limits.max_children}"
                )
        for task in tasks.values():
            level = self.level(task.id)
            if level > limits.max_depth:
                raise DAGValidationError(
                    f"task {task.id!r} is at depth {level}, deeper than the budget of {limits.max_depth}"
                )
        for task in tasks.values():
            lineage = set(self.ancestors(task.id)) | set(self.descendants(task.id))
            for dep in task.dependencies:
                if dep == task.id:
                    raise DAGValidationError(f"task {task.id!r} depends on itself")
                if dep not in tasks:
                    raise DAGValidationError(f"task {task.id!r} depends on unknown task {dep!r}")
                if dep in lineage:
                    relation = "ancestor" if dep in self.ancestors(task.id) else "descendant"
                    raise DAGValidationError(
                        f"task {task.id!r} depends on its own {relation} {dep!r}, which can never finish first"
                    )
        self._execution_graph = self._build_execution_graph()
        if not nx.is_directed_acyclic_graph(self._execution_graph):
            cycle = [u for u, _ in nx.find_cycle(self._execution_graph)]
            raise DAGValidationError(f"dependencies form a cycle: {' -> '.join(cycle + cycle[:1])}")

    def _build_execution_graph(self) -> nx.DiGraph:
        leaves_under: dict[str, list[str]] = {}
        for tid in self._tasks:
            if self.is_leaf(tid):
                for owner in [tid, *self.ancestors(tid)]:
                    leaves_under.setdefault(owner, []).append(tid)
        g = nx.DiGraph()
        g.add_nodes_from(t for t in self._tasks if self.is_leaf(t))
        for leaf in list(g.nodes):
            for owner in [leaf, *self.ancestors(leaf)]:
                for dep in self._tasks[owner].dependencies:
                    g.add_edges_from((before, leaf) for before in leaves_under[dep])
        return g
