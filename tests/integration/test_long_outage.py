"""Long Lime outages are not failures: the worker, not the broker, owns retries.

A private node with a consumer timeout of 1 s (RabbitMQ's default is 30 min) and a
policy delivery limit of 20 (RabbitMQ 4's default for quorum queues; the smaller of
policy and argument wins). A Lime outage 25 times longer than the consumer timeout
must not push any message over that limit: nothing dead-lettered, nothing dropped,
everything applied in order once Lime is back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.broker import BrokerHandle, PrivateNode, find_server_binary
from sandbox.check import CheckReport, check_log, check_objects
from sandbox.stack import Stack
from shared.lime import LimeClient
from shared.limemeta import check_against_lime

OUTAGE = 25.0
CONSUMER_TIMEOUT_MS = 1000


@pytest.fixture(scope="module")
def strict_broker() -> Iterator[BrokerHandle]:
    if find_server_binary() is None:
        pytest.skip("needs the Debian rabbitmq-server package to run a node with a 1 s consumer timeout")
    node = PrivateNode(
        extra_conf={"consumer_timeout": str(CONSUMER_TIMEOUT_MS)},
        rabbit_env={"channel_tick_interval": "200"},  # check consumer timeouts every 0.2 s, not every 60 s
    ).start()
    handle = BrokerHandle(url=node.url, management_url=node.management_url, kind="private", node=node)
    node.ctl("set_policy", "--apply-to", "queues", "rabbitmq4-default-delivery-limit", r"^bfus\.changes\.",
             '{"delivery-limit": 20}')
    try:
        yield handle
    finally:
        handle.close()


def test_outage_far_longer_than_the_consumer_timeout_loses_nothing(strict_broker: BrokerHandle,
                                                                   tmp_path: Path) -> None:
    stack = Stack(strict_broker.url, tmp_path, partitions=4, management_url=strict_broker.management_url or "")
    try:
        stack.start(workers=1)
        stack.bfus.changes.make(40, customers=10)
        stack.wait_logged(40, 30)
        stack.lime.stop()  # Lime unreachable
        stack.bfus.changes.make(60, customers=10)
        stack.wait_delivered(30)
        time.sleep(OUTAGE)  # the outage itself: nothing to wait for but time
        assert stack.logged_count() == 40
        stack.lime.start()
        stack.wait_logged(100, 60)
        worker = stack.workers[0].worker
        dead = strict_broker.queue_info(stack.config.broker.url, "bfus.dead")
        assert dead.get("messages", 0) == 0
        mappers = check_against_lime(stack.config, LimeClient(stack.config.lime).limetypes())
        report = CheckReport()
        check_objects(report, mappers["customer"], stack.bfus.store.snapshots("customer"),
                      stack.lime_objects("company"))
        processed, failed = stack.log_records()
        check_log(report, stack.bfus.store.delivered_ids(), processed, failed)
        assert report.ok, report.details()
        assert (report.processed, report.failed) == (100, 0)
        # The outage cost each waiting message a redelivery or two, not one per consumer timeout.
        assert worker.max_delivery_count < 5, worker.max_delivery_count
    finally:
        stack.stop()
