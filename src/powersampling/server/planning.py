"""``/v1/plan``: the HTDAG planner behind the same queue, deadline and cancellation as sampling."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import CapabilityError, ConfigError, ContextLengthError, PowerSamplingError
from ..observability.metrics import record_plan
from ..samplers.registry import BASELINE_ROUTE
from .errors import APIError
from .executor import Job
from .schemas import PlanRequest
from .scope import check_limits
from .settings import ServerSettings


@dataclass
class PlanOutcome:
    body: dict[str, Any]
    route: str
    method: str
    quality_score: float | None
    fallback_reason: str | None


class PlanService:
    """Holds the routing configuration (feature flag, rollout percentage, MH knobs) read once from the
    environment, so a bad value fails at start, not at the first request."""

    def __init__(self, model, model_name: str) -> None:
        from ..planner import RoutingConfig

        self.model, self.model_name = model, model_name
        self.routing = RoutingConfig.from_env()

    def prepare(self, body: PlanRequest, settings: ServerSettings) -> PreparedPlanRequest:
        from ..planner import Planner, PlannerConfig
        from ..planner.generation import route_method

        route = None if body.route in (None, "auto") else body.route
        base = self.routing.settings
        ps = body.power_sampling
        check_limits(ps, settings)
        changes: dict[str, Any] = {}
        if body.seed is not None:
            changes["seed"] = body.seed
        if ps is not None:
            mapped = {
                "alpha": "alpha",
                "n_mcmc": "n_mcmc",
                "block_size": "block_size",
                "n": "best_of_n",
                "chains": "n_particles",
                "seed": "seed",
            }
            for src, dst in mapped.items():
                if getattr(ps, src) is not None:
                    changes[dst] = getattr(ps, src)
            # every other power_sampling field is refused, so a field added to the schema cannot be silently dropped
            unused = [f for f in type(ps).model_fields if f not in mapped and getattr(ps, f) is not None]
            if unused:
                raise APIError(
                    400,
                    f"power_sampling.{unused[0]} is not used by the planner",
                    param=f"power_sampling.{unused[0]}",
                    code="unsupported_parameter",
                )
        limits = {k: v for k, v in (("max_tasks", body.max_tasks), ("max_depth", body.max_depth)) if v is not None}
        if body.tools is not None:
            from ..planner.tools import ToolsFileError, parse_tools

            # any format parse_tools reads (OpenAI, MCP, TaskBench, names), as far as the request schema admits it
            items = [t.model_dump(exclude_none=True) if hasattr(t, "model_dump") else t for t in body.tools]
            try:
                limits["tools"] = parse_tools(items, source="tools")
            except ToolsFileError as exc:
                raise APIError(400, str(exc), param="tools", code="invalid_value") from None
        try:
            config = PlannerConfig(route=route, settings=dataclasses.replace(base, **changes), **limits)
            Planner(self.model, config, routing=self.routing)  # checks the route is available and its settings
        except (ConfigError, CapabilityError, ValueError) as exc:
            raise APIError(
                400, str(exc), param="power_sampling" if changes else "route", code="invalid_value"
            ) from None
        method = route_method(route) if route else "none"
        return PreparedPlanRequest(self, body, config, route or BASELINE_ROUTE, method)

    def record(self, outcome: PlanOutcome, latency_s: float) -> None:
        record_plan(
            model_name=self.model_name,
            route=outcome.route,
            quality_score=outcome.quality_score,
            fallback_reason=outcome.fallback_reason,
            method=outcome.method,
            endpoint="plan",
            latency_s=latency_s,
            count_request=False,
        )


@dataclass
class PreparedPlanRequest:
    """A validated /v1/plan request with its planner config, run on a worker by ``execute``."""

    service: PlanService
    body: PlanRequest
    config: Any
    requested_route: str
    method: str

    def execute(self, job: Job) -> PlanOutcome:
        """Runs in a worker thread."""
        from ..planner import PlanBudgetError, PlanInputError, Planner, dag_to_dict
        from ..samplers import planner_routes

        service = self.service
        config = dataclasses.replace(self.config, deadline_s=max(job.remaining_s(), 1e-3))
        planner = Planner(service.model, config, routing=service.routing, progress=lambda event: job.check_cancelled())
        try:
            dag = planner.decompose(self.body.request)
        except PlanInputError as exc:
            raise APIError(400, str(exc), param="request", code="invalid_value") from None
        except ContextLengthError as exc:
            raise APIError(
                400,
                f"the planner's prompt does not fit the model: {exc}",
                param="request",
                code="context_length_exceeded",
            ) from None
        except (ConfigError, CapabilityError) as exc:
            raise APIError(400, str(exc), code="unsupported") from None
        except (PlanBudgetError, PowerSamplingError, ValueError) as exc:
            if job.remaining_s() <= 0:
                raise APIError(
                    504, f"the plan was not ready by the server's deadline: {exc}", code="deadline_exceeded"
                ) from None
            raise APIError(422, f"no plan could be produced: {exc}", code="plan_failed") from None
        md = dag.metadata
        route = str(md.get("route") or self.requested_route)
        fallbacks = md.get("fallbacks") or []
        # the label keeps only the exception type: the full reason is unbounded text
        reason = str(fallbacks[0].get("reason", "unknown")).split(":")[0] if fallbacks else None
        body = {
            "id": f"plan-{uuid.uuid4().hex[:24]}",
            "object": "plan",
            "model": service.model_name,
            "route": route,
            "requested_route": md.get("requested_route"),
            "route_reason": md.get("route_reason"),
            "fallback": {"reason": md.get("fallback_reason"), "details": fallbacks} if fallbacks else None,
            "quality_score": md.get("quality_score"),
            "usage": {"model_calls": md.get("model_calls"), "tokens_generated": md.get("tokens_generated")},
            "plan": dag_to_dict(dag),
        }
        return PlanOutcome(body, route, planner_routes().get(route, "none"), md.get("quality_score"), reason)
