"""The alert rules and the Grafana dashboard under deploy/ name only metrics the
product makes (bfuslime_*) or RabbitMQ's plugin does (rabbitmq_*): a renamed metric
must not leave an alert that can never fire or a panel that stays empty."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from receiver.metrics import metrics as receiver_metrics
from shared.metrics import lime_metrics
from worker.metrics import metrics as worker_metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NAME = re.compile(r"\b(bfuslime_[a-z0-9_]+|rabbitmq_[a-z0-9_]+)")


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def known_names() -> set[str]:
    """The series names of every metric the receiver, the worker and the Lime client make."""
    receiver_metrics(), worker_metrics(), lime_metrics()
    return {metric.name + suffix for metric in REGISTRY.collect() for suffix in SUFFIXES.get(metric.type, ())}


def used_in(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in NAME.findall(expr)}


def test_every_alert_names_metrics_that_exist() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {n for n in used_in(exprs) if n.startswith("bfuslime_")}
    assert used and used <= known_names(), used - known_names()


def test_every_dashboard_panel_names_metrics_that_exist() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "bfus-lime.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = used_in(exprs)
    ours = {n for n in used if n.startswith("bfuslime_")}
    assert ours <= known_names(), ours - known_names()
    assert {n for n in used if n.startswith("rabbitmq_")} <= {"rabbitmq_queue_messages"}  # per-object metrics
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Waiting per partition", "Settled per minute", "Lag: BFUS change to Lime",
            "Lime calls per second against the budget"} <= titles
