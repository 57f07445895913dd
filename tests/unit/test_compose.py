"""The compose files (not run here: no Docker engine) stay valid configuration: every
BFUSLIME_ variable they set is a setting the services accept, their logs are JSON,
and the worker's metrics port is the one deploy/prometheus scrapes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import build_config

ROOT = Path(__file__).resolve().parents[2]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's variables, ${NAME:?...} / ${NAME:-...} filled in as a user would."""
    return {k: re.sub(r"\$\{[A-Z_]+:[?-][^}]*\}", "secret", str(v)) for k, v in service["environment"].items()}


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.single.yml"])
def test_each_service_gets_valid_configuration_json_logs_and_the_scraped_metrics_port(name: str) -> None:
    services = yaml.safe_load((ROOT / name).read_text())["services"]
    for service in ("receiver", "worker"):
        config = build_config({}, environ=environment(services[service]))
        assert config.log.format == "json", service
    worker = build_config({}, environ=environment(services["worker"]))
    scraped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in scraped["scrape_configs"] if j["job_name"] == "bfuslime-worker"]
    assert worker.worker.metrics_port == job["dns_sd_configs"][0]["port"]
