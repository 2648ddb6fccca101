"""HTDAG planner: hierarchical task DAGs from a request, over grammar-constrained sampling routes."""

from .dag import DAGLimits, DAGValidationError, Task, TaskDAG, TaskStatus
from .export import (
    DAG_JSON_SCHEMA,
    SCHEMA_VERSION,
    dag_from_dict,
    dag_from_json,
    dag_to_dict,
    dag_to_json,
    to_dot,
    to_mermaid,
    to_tool_calls,
    to_tree,
)
from .generation import GenerationError, RouteSettings, generate_json, power_sample
from .planner import Feedback, PlanBudgetError, Planner, PlannerConfig
from .quality import PlanQualityEvaluator, QualityReport
from .routing import RouteDecision, RoutingConfig, rollout_bucket
from .safety import InputLimits, PlanInputError, screen_input
from .schema import (
    TaskListSpec,
    max_output_tokens,
    task_list_schema,
    tool_calls_from_turn,
    tool_turn_max_tokens,
    tool_turn_schema,
)
from .tools import ToolsFileError, ToolSpec, load_tools, parse_tools

__all__ = [
    "DAG_JSON_SCHEMA",
    "SCHEMA_VERSION",
    "DAGLimits",
    "DAGValidationError",
    "Feedback",
    "GenerationError",
    "InputLimits",
    "PlanBudgetError",
    "PlanInputError",
    "PlanQualityEvaluator",
    "Planner",
    "PlannerConfig",
    "QualityReport",
    "RouteDecision",
    "RouteSettings",
    "RoutingConfig",
    "Task",
    "TaskDAG",
    "TaskListSpec",
    "TaskStatus",
    "ToolSpec",
    "ToolsFileError",
    "dag_from_dict",
    "dag_from_json",
    "dag_to_dict",
    "dag_to_json",
    "generate_json",
    "load_tools",
    "max_output_tokens",
    "parse_tools",
    "power_sample",
    "rollout_bucket",
    "screen_input",
    "task_list_schema",
    "to_dot",
    "to_mermaid",
    "to_tool_calls",
    "to_tree",
    "tool_calls_from_turn",
    "tool_turn_max_tokens",
    "tool_turn_schema",
]
