"""The operations files (ops/) agree with the metrics the code exports, and Prometheus's own tool accepts them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from powersampling.observability import metrics
from powersampling.samplers import planner_routes

OPS = Path(__file__).resolve().parents[1] / "ops"
ALERTS = OPS / "prometheus" / "alerts.yml"
DASHBOARD = OPS / "grafana" / "powersampling-dashboard.json"
PROMTOOL = shutil.which("promtool")


def exported_names() -> set[str]:
    names = set()
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def referenced(expr: str) -> set[str]:
    return set(re.findall(r"\b(powersampling_[a-z0-9_]+|process_[a-z0-9_]+)\b", expr))


def label_values(expr: str, label: str) -> set[str]:
    values = set()
    for match in re.findall(rf'\b{label}\s*[=!]~?\s*"([^"]*)"', expr):
        values.update(v for v in match.split("|") if v and "$" not in v and v != ".*")
    return values


def test_the_rollback_triggers_exist():
    assert {"PowerSamplingQualityDeltaLow", "PowerSamplingErrorRateHigh", "PowerSamplingP95LatencyHigh"} <= set(
        alert_exprs()
    )


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_and_label_value_used_is_exported(source):
    exprs = list(alert_exprs().values()) if source == "alerts" else dashboard_exprs()
    names = exported_names()
    for expr in exprs:
        assert referenced(expr), expr
        assert referenced(expr) <= names, (referenced(expr) - names, expr)
        assert label_values(expr, "status") <= set(metrics.STATUSES), expr
        assert label_values(expr, "route") <= set(planner_routes()) | {"mixed"}, expr
        assert label_values(expr, "endpoint") <= {"completions", "chat", "plan", "library"}, expr


def test_dashboard_panels_cover_the_rollout_signals():
    titles = " ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for word in ("requests", "quality", "cost multiplier", "latency", "acceptance", "fallbacks"):
        assert word in titles


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")
def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
    subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], check=True, capture_output=True)
    test = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts.test.yml"], cwd=ALERTS.parent, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")
def test_promtool_parses_every_dashboard_query(tmp_path):
    rules = [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$model_name", ".*")}
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
