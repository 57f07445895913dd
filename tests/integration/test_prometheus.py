"""The monitoring under deploy/ checked by the real thing (Debian's prometheus package,
which `make test` installs): promtool accepts the configuration and the alert rules
and passes the rules' unit tests, and a real Prometheus scraping a stack's receiver
and a worker process sees the counts the stack made, loads every alert, and puts the
partition alert in pending once the only worker is gone."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from sandbox.broker import free_port
from sandbox.stack import Stack, wait_for
from shared.topology import Topology

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
WORKER = 'job="bfuslime-worker"'


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `make test` installs Debian's prometheus package (apt-get install "
                    f"prometheus)")
    return found


def promtool(*args: str) -> str:
    done = subprocess.run([tool("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_accepts_the_configuration_and_the_rules_and_their_unit_tests_pass() -> None:
    assert "SUCCESS" in promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 6 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")


class Prometheus:
    """A real Prometheus server scraping ``targets`` (job -> address) every second,
    with the product's alert rules."""

    def __init__(self, targets: dict[str, str], folder: Path):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [address]}]}
                               for job, address in targets.items()],
        }
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(folder / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"
        wait_for(self.ready, 60, "Prometheus to be ready")
        wait_for(lambda: self.health() == dict.fromkeys(targets, "up"), 60, "Prometheus to scrape every target")

    def ready(self) -> bool:
        assert self.process.poll() is None, f"prometheus exited: {self.log.name}"
        try:
            return requests.get(f"{self.url}-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def health(self) -> dict[str, str]:
        """Each job's target's health (up, down, unknown before its first scrape)."""
        return {t["labels"]["job"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def api(self, path: str, **params: str) -> Any:
        answer = requests.get(f"{self.url}api/v1/{path}", params=params, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]

    def value(self, query: str) -> float | None:
        """The single value ``query`` gives now, None when it gives nothing."""
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


@pytest.fixture
def prometheus_and_stack(make_stack: Callable[..., Stack], tmp_path: Path) -> Iterator[tuple[Prometheus, Stack]]:
    worker_port = free_port()
    stack = make_stack(partitions=4, config={"worker": {"metrics_port": worker_port}}).start(workers=0)
    stack.spawn_worker("scraped").wait_log("worker_consuming")
    prometheus = Prometheus({"bfuslime-receiver": f"127.0.0.1:{stack.receiver_port}",
                             "bfuslime-worker": f"127.0.0.1:{worker_port}"}, tmp_path)
    try:
        yield prometheus, stack
    finally:
        prometheus.stop()


def test_a_real_prometheus_sees_the_applied_count_and_the_lag_and_loads_the_alerts(
        prometheus_and_stack: tuple[Prometheus, Stack]) -> None:
    prometheus, stack = prometheus_and_stack
    stack.bfus.feed(200, customers=20, rate=200).join(60)
    wait_for(lambda: not stack.bfus.store.queue_status()["pending"], 60, "BFUS to post its changes")
    exchange = Topology.from_config(stack.config.broker).exchange
    stack.wait_logged(stack.receiver_app.extensions["publisher"].confirmed[exchange], 120)
    processed, _failed = stack.log_records()
    applied = sum(1 for r in processed if (r.get("outcome") or {}).get("key") == "applied")
    assert applied > 0
    # The worker job only: the receiver here runs in the test process, whose registry also
    # holds the counts of earlier tests' in-process workers.
    wait_for(lambda: prometheus.value(f'sum(bfuslime_worker_messages_total{{{WORKER}, outcome="applied"}})')
             == applied, 30, "Prometheus to see every applied message")
    assert prometheus.value(f"sum(bfuslime_worker_lag_seconds_count{{{WORKER}}})") == len(processed)
    assert prometheus.value(f"sum(bfuslime_worker_partitions_owned{{{WORKER}}})") == 4
    posted = 'sum(bfuslime_receiver_requests_total{job="bfuslime-receiver", endpoint="/bfus/messages", status="202"})'
    wait_for(lambda: (prometheus.value(posted) or 0) >= 200, 30,  # the test process's receivers share one count
             "Prometheus to see the receiver's 202 answers")
    assert prometheus.health() == {"bfuslime-receiver": "up", "bfuslime-worker": "up"}
    rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
    assert len(rules) == 6 and {rule["health"] for rule in rules} == {"ok"}, rules
    assert prometheus.value('ALERTS{alertname="BfusLimePartitionWithoutWorker"}') is None

    stack.children[-1].terminate()  # the only worker: its partitions have no owner now
    wait_for(lambda: prometheus.value(
        'ALERTS{alertname="BfusLimePartitionWithoutWorker", alertstate="pending"}') == 1, 30,
        "the partition alert to be pending")
