"""Prometheus metrics (issue 16, docs/operations.md "Metrics"): the receiver's under
gunicorn, summed over its processes, and a worker process's on its own port, each
equal to what was sent and settled."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from builders import message
from sandbox.broker import free_port
from sandbox.stack import RECEIVER_KEY, Stack, wait_for
from shared.lime import option_key
from shared.topology import Topology

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page: (name, labels) -> value."""
    text = requests.get(url, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` that has ``labels`` (and any others)."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def post(stack: Stack, body: bytes, key: str = RECEIVER_KEY) -> int:
    return requests.post(f"{stack.receiver_url}bfus/messages", data=body, timeout=10,
                         headers={"Content-Type": "application/json", "X-API-Key": key}).status_code


def test_the_receivers_metrics_under_gunicorn_count_every_request_of_every_process(
        make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """Two gunicorn processes: messages are posted until both have counted some (their
    metric files name their pids); /metrics, answered by either, shows the sum."""
    stack = make_stack(partitions=4)
    folder = tmp_path / "metrics"
    receiver = stack.spawn_receiver(processes=2, threads=2, metrics_dir=str(folder))
    pids = receiver.processes()
    sent = {202: 0, 400: 0, 401: 0}
    while {p for p in pids if list(folder.glob(f"*_{p}.db"))} != pids and sent[202] < 500:
        for _ in range(10):  # a new connection each: the processes take turns accepting
            assert post(stack, json.dumps(message(1000 + sent[202])).encode()) == 202
            sent[202] += 1
    assert {p for p in pids if list(folder.glob(f"*_{p}.db"))} == pids, "one process took every request"
    for _ in range(3):
        assert post(stack, b"{not json") == 400
        assert post(stack, json.dumps(message(1)).encode(), key="wrong") == 401
        sent[400] += 1
        sent[401] += 1
    for _ in range(4):  # whichever process answers, the same sums
        samples = scrape(f"{stack.receiver_url}metrics")
        for status, count in sent.items():
            assert value(samples, "bfuslime_receiver_requests_total", endpoint="/bfus/messages",
                         status=str(status)) == count, status
        assert value(samples, "bfuslime_receiver_answer_seconds_count", endpoint="/bfus/messages") == sum(
            sent.values())
        assert value(samples, "bfuslime_receiver_confirm_seconds_count") == sent[202] + sent[400]  # kept invalid
        assert value(samples, "bfuslime_receiver_invalid_messages_total", reason="invalid_json") == sent[400]


def test_the_receiver_without_metrics_has_no_metrics_page(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=2, config={"receiver": {"metrics": False}}).start(workers=0)
    assert post(stack, json.dumps(message(1)).encode()) == 202
    assert requests.get(f"{stack.receiver_url}metrics", timeout=10).status_code == 404


def test_a_worker_process_shows_what_it_settled_called_and_owns(make_stack: Callable[..., Stack]) -> None:
    """300 changes over 30 customers through a `bfus-lime worker` process serving
    worker.metrics_port: its messages by outcome equal the log records in Lime, the
    lag is observed for each, its Lime calls are counted by method and status, and it
    owns every partition."""
    port = free_port()
    stack = make_stack(partitions=4, config={"worker": {"metrics_port": port}}).start(workers=0)
    stack.spawn_worker("metered").wait_log("worker_consuming")
    stack.bfus.feed(300, customers=30, rate=200).join(60)
    wait_for(lambda: not stack.bfus.store.queue_status()["pending"], 60, "BFUS to post its changes")
    exchange = Topology.from_config(stack.config.broker).exchange
    stack.wait_logged(stack.receiver_app.extensions["publisher"].confirmed[exchange], 120)
    processed, failed = stack.log_records()
    outcomes: dict[tuple[str, str], int] = {}
    for record in processed:
        found = (str(option_key(record.get("objecttype"))), str(option_key(record.get("outcome"))))
        outcomes[found] = outcomes.get(found, 0) + 1
    url = f"http://127.0.0.1:{port}/metrics"
    settled = len(processed) + len(failed)
    wait_for(lambda: total(scrape(url), "bfuslime_worker_messages_total") == settled, 30,
             "the worker's counts to reach the log records")
    samples = scrape(url)
    for (objecttype, outcome), count in outcomes.items():
        assert value(samples, "bfuslime_worker_messages_total", objecttype=objecttype, outcome=outcome) == count
    assert total(samples, "bfuslime_worker_messages_total", outcome="failed") == len(failed)
    assert total(samples, "bfuslime_worker_failures_total") == len(failed)
    assert value(samples, "bfuslime_worker_lag_seconds_count") == len(processed)
    assert value(samples, "bfuslime_lime_requests_total", method="POST", status="201") >= len(processed)
    assert total(samples, "bfuslime_lime_request_seconds_count") == total(samples, "bfuslime_lime_requests_total")
    assert value(samples, "bfuslime_worker_partitions_owned") == 4
    assert value(samples, "bfuslime_worker_partitions") == 4
    assert value(samples, "bfuslime_worker_circuit_open") == 0
