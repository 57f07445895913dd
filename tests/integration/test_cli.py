"""The bfus-lime command: configuration errors, check-config, broker, and `run`."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pika
import pytest
from click.testing import CliRunner

from cli.main import main
from sandbox.broker import BrokerHandle
from sandbox.lime.app import LimeStandIn
from sandbox.stack import BFUS_LIME


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bfus-lime.toml"
    path.write_text(text)
    return path


def test_bad_value_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[lime]\napi_key = "k"\nrate_limit = "fast"\n')
    result = CliRunner().invoke(main, ["--config", str(path), "worker"])
    assert result.exit_code == 2
    assert "lime.rate_limit: Not a valid number." in result.output


def test_missing_secret_stops_start_up(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(write(tmp_path, "")), "receiver"], env={})
    assert result.exit_code == 2
    assert "receiver.api_key: Must be set" in result.output


def test_check_config_against_lime(tmp_path: Path, lime: LimeStandIn) -> None:
    good = write(tmp_path, f'[lime]\nurl = "{lime.api_url}"\napi_key = "{lime.api_key}"\n')
    result = CliRunner().invoke(main, ["--config", str(good), "check-config"])
    assert result.exit_code == 0, result.output
    assert "customer -> company by customerno" in result.output and "mapping fits Lime" in result.output
    bad = write(tmp_path, f'[lime]\nurl = "{lime.api_url}"\napi_key = "{lime.api_key}"\n'
                          '[mapping.objects.customer]\nkey = "customercode"\n')
    result = CliRunner().invoke(main, ["--config", str(bad), "check-config"])
    assert result.exit_code == 2
    assert "mapping.objects.customer.key: limetype 'company' has no property 'customercode'" in result.output


def test_check_config_says_when_lime_is_unreachable(tmp_path: Path) -> None:
    path = write(tmp_path, '[lime]\nurl = "http://127.0.0.1:9/lime/api/v1/"\napi_key = "k"\n')
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 3 and "Lime unreachable" in result.output  # 3: a service unreachable


@pytest.mark.parametrize("nodes", [1, 3])
def test_broker_command_starts_a_private_node_or_cluster_and_removes_it(nodes: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
    child = subprocess.Popen([*BFUS_LIME, "broker", "--nodes", str(nodes)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    folders: list[Path] = []
    try:
        line = ""
        while not line.startswith("RABBITMQ_URL="):
            line = child.stdout.readline()
            assert line, "bfus-lime broker ended without printing its URL"
        urls = line.strip().split("=", 1)[1].split(",")
        assert len(urls) == nodes
        for url in urls:
            pika.BlockingConnection(pika.URLParameters(url)).close()
        while len(folders) < nodes:
            line = child.stdout.readline()
            assert line, "bfus-lime broker did not say where each node's data is"
            if line.startswith("data folder: "):
                folders.append(Path(line.split(": ", 1)[1].split(" (")[0]))
        assert all(folder.is_dir() for folder in folders)
    finally:
        child.send_signal(signal.SIGTERM)
        assert child.wait(60) == 0
    assert not any(folder.exists() for folder in folders)


def test_run_brings_everything_up_and_stops_it(amqp_url: str, rabbitmq: BrokerHandle, tmp_path: Path) -> None:
    env = {**os.environ, "RABBITMQ_URL": amqp_url, "RABBITMQ_MANAGEMENT_URL": rabbitmq.management_url or ""}
    result = subprocess.run(
        [*BFUS_LIME, "run", "--changes", "60", "--customers", "15", "--rate", "200", "--seed-customers", "0",
         "--until-done", "--workdir", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Everything is up. Where to look:" in result.stdout
    assert "X-API-Key: dev-lime-key" in result.stdout
    [metrics] = [line for line in result.stdout.splitlines() if line.startswith("  Metrics")]
    assert metrics.count("/metrics") == 3, metrics  # the receiver's and each worker's
    assert "All 60 changes are in Lime (60 processed, 0 failed)" in result.stdout
    [reached] = [line for line in result.stdout.splitlines() if "reached BFUS after" in line]  # then Lime -> BFUS
    assert "3 companies created" in reached and "refused" not in reached, reached
    assert "Stopped every process `run` started." in result.stdout
    logs = sorted(p.name for p in (tmp_path / "run" / "logs").iterdir())
    assert logs == ["bfus.log", "lime.log", "receiver.log", "webhooks.log", "worker-1.log", "worker-2.log"]
    assert "subscription 1 for http://127.0.0.1:" in (tmp_path / "run" / "logs" / "webhooks.log").read_text()
    stopped = [p for p in logs if "worker_stopped" in (tmp_path / "run" / "logs" / p).read_text()]
    assert stopped == ["worker-1.log", "worker-2.log"]
    served = [p for p in logs if "metrics_served" in (tmp_path / "run" / "logs" / p).read_text()]
    assert served == ["worker-1.log", "worker-2.log"]
