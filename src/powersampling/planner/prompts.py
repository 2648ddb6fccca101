"""What the planner tells the model: the system prompt with one worked example in the answer format, and the user
prompt for one call (the request, the tools, the plan so far).

Two formats share one grammar family (``schema.task_list_schema``): free tasks with a ``task_type``, and tool
plans, where every task carries a ``call`` of a listed tool with its arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

from .safety import neutralize_control_tokens
from .schema import TaskListSpec
from .tools import ToolSpec, tool_catalog

_PLANNER = (
    "You are a project planner. Break the user's request into a short list of concrete tasks that together "
    "complete it. Describe each task in a few plain words (an action and its object). For each task, list in "
    "'dependencies' the ids of earlier tasks that must finish before it can start; leave it empty when the task can "
    "start right away, so that independent work can run in parallel. Answer in JSON."
)
_PLANNER_EXAMPLE = (
    'Example for "organize a team dinner": {"tasks": [{"id": 1, "description": "Choose a date with the team", '
    '"dependencies": []}, {"id": 2, "description": "Book a restaurant", "dependencies": [1]}, {"id": 3, '
    '"description": "Send the invitations", "dependencies": [1, 2]}]}'
)
# The answer states its task count first: on 10 TaskBench records (ids from 80020033 on) Qwen2.5-0.5B planned 8
# tasks for one-task requests far less often that way (node F1 0.33 -> 0.60 at low temperature), and it copies any
# maximum the prompt names, so the user prompt names none.
_TOOL_PLANNER = (
    "You plan tool calls for an assistant. Turn the user's request into the tool calls that carry it out, one task "
    "per call, in the order they should run. Use only the listed tools, each for what its description says, and "
    "take the argument values from the request. Describe each task in a few plain words. For each task, list in "
    "'dependencies' the ids of earlier tasks that must finish before it can start. Use as few tasks as the request "
    "needs: one task per thing the user asks for. Answer in JSON."
)
# tools that no real catalog is likely to contain, so the example shows the format without suggesting a choice
_TOOL_EXAMPLE = (
    'Example with the tools find_recipe(dish) and order_groceries(items, store), for "Find me a lasagna recipe and '
    'order what I need from FreshMart": {"count": 2, "tasks": [{"id": 1, "description": "Find a lasagna recipe", '
    '"call": {"tool": "find_recipe", "arguments": {"dish": "lasagna"}}, "dependencies": []}, {"id": 2, "description": '
    '"Order the ingredients from FreshMart", "call": {"tool": "order_groceries", "arguments": {"items": "lasagna '
    'ingredients", "store": "FreshMart"}}, "dependencies": [1]}]}'
)


_REFERENCES = (
    'An argument that needs the result of an earlier task is written {"from_task": <its id>}.\n'
    'Example with the tools find_recipe(dish) and order_groceries(items, store), for "Find me a lasagna recipe and '
    'order what I need from FreshMart": {"count": 2, "tasks": [{"id": 1, "description": "Find a lasagna recipe", '
    '"call": {"tool": "find_recipe", "arguments": {"dish": "lasagna"}}, "dependencies": []}, {"id": 2, "description": '
    '"Order the ingredients from FreshMart", "call": {"tool": "order_groceries", "arguments": {"items": {"from_task": '
    '1}, "store": "FreshMart"}}, "dependencies": [1]}]}'
)


def system_prompt(spec: TaskListSpec) -> str:
    """The system prompt for one call in ``spec``'s answer format."""
    if spec.tools and spec.references:
        return f"{_TOOL_PLANNER}\n{_REFERENCES}"
    if spec.tools:
        return f"{_TOOL_PLANNER}\n{_TOOL_EXAMPLE}"
    return f"{_PLANNER}\n{_PLANNER_EXAMPLE}"


def task_prompt(
    request: str,
    spec: TaskListSpec,
    *,
    context: str = "",
    tools: Sequence[ToolSpec] | None = None,
    agents: Sequence[str] | None = None,
    task_types: Sequence[str] | None = None,
    parent: tuple[str, str, Sequence[str]] | None = None,
    plan_so_far: Sequence[tuple[str, str]] = (),
    note: str | None = None,
    may_expand: bool = False,
) -> str:
    """The user prompt of one call. ``parent`` is (id, description, dependencies) of the task being broken down
    (None: the top level); ``plan_so_far`` the (id, description) of the tasks planned already."""
    lines = []
    if tools:
        lines += ["Tools:", tool_catalog(tools)]
    lines.append(f"Request: {request}")
    if context:
        lines.append(f"Context: {context}")
    if task_types:
        lines.append("Task types: " + ", ".join(task_types) + ".")
    if agents:
        lines.append("Agents: " + ", ".join(agents) + ".")
    count = f"{spec.min_tasks} to {spec.max_tasks}" if spec.min_tasks < spec.max_tasks else str(spec.max_tasks)
    if parent is None and tools:  # no upper count here: small models copy the number they are shown
        lines.append("Plan the tool calls this request needs, no more.")
    elif parent is None:
        lines.append(f"List {count} top-level tasks.")
    else:
        parent_id, parent_description, parent_dependencies = parent
        lines.append("Plan so far:")
        lines.extend(f"- {task_id}: {description}" for task_id, description in plan_so_far)
        after = f" It starts after: {', '.join(parent_dependencies)}." if parent_dependencies else ""
        lines.append(f"Break task {parent_id} ({parent_description}) into {count} smaller steps.{after}")
    if may_expand:
        lines.append("Set 'atomic' to false only for a task that is still too big to do in one step.")
    if note:
        lines.append(f"Feedback: {neutralize_control_tokens(note)}")
    return "\n".join(lines)
