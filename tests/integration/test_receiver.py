"""POST /bfus/messages answers exactly as contract.md §1, against a real broker."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import requests

from builders import message, take_all
from sandbox.broker import BrokerHandle
from sandbox.stack import Stack, wait_for


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack(partitions=4, config={"receiver": {"max_body_bytes": 2048}})
    stack.start_receiver()
    return stack


def test_accepted_message_is_202_and_durably_in_its_partition(stack: Stack) -> None:
    body = json.dumps(message(184467), ensure_ascii=False).encode()
    response = stack.post(None, raw=body)
    assert response.status_code == 202
    assert response.json() == {"status": "queued", "id": 184467}
    topology = stack.receiver_app.extensions["topology"]
    partition = topology.partition_of("100234")
    stored = take_all(stack, topology.partition_queue(partition))
    assert len(stored) == 1
    props, stored_body = stored[0]
    assert stored_body == body
    assert props.delivery_mode == 2 and props.message_id == "184467"
    for other in set(range(4)) - {partition}:
        assert take_all(stack, topology.partition_queue(other)) == []


def test_one_customer_always_lands_in_one_partition_and_customers_spread(stack: Stack) -> None:
    topology = stack.receiver_app.extensions["topology"]
    for i in range(40):
        assert stack.post(message(i + 1, customerno=str(100000 + i % 20))).status_code == 202
    seen: dict[str, set[int]] = {}
    for partition in range(4):
        for _props, body in take_all(stack, topology.partition_queue(partition)):
            seen.setdefault(json.loads(body)["customerno"], set()).add(partition)
    assert len(seen) == 20 and all(len(p) == 1 for p in seen.values())
    assert len(set().union(*seen.values())) == 4


@pytest.mark.parametrize("headers", [{"X-API-Key": ""}, {"X-API-Key": "guess"}])
def test_missing_or_wrong_key_is_401_without_saying_which(stack: Stack, headers: dict) -> None:
    response = stack.post(message(), headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized", "message": "Missing or invalid API key."}


def test_not_json_content_type_is_415(stack: Stack) -> None:
    response = stack.post(None, headers={"Content-Type": "text/plain"}, raw=b"id=1")
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_media_type"


def test_body_over_the_limit_is_413(stack: Stack) -> None:
    big = message(data={"customerno": "1", "name": "x" * 4000})
    response = stack.post(big)
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"
    assert "2048" in response.json()["message"]


def test_not_json_is_400_and_kept_raw_for_the_failed_log(stack: Stack) -> None:
    response = stack.post(None, raw=b'{"id": 5, "objecttype": ')
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json" and response.json()["message"]
    kept = take_all(stack, stack.receiver_app.extensions["topology"].invalid_queue)
    assert [body for _p, body in kept] == [b'{"id": 5, "objecttype": ']
    assert kept[0][0].headers["x-bfus-reason"] == "invalid_json"


def test_invalid_envelope_is_422_with_fields_and_kept(stack: Stack) -> None:
    response = stack.post(message(operation="merged", key=""))
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_envelope"
    assert set(body["fields"]) == {"operation", "key"}
    assert "Must be one of" in body["fields"]["operation"][0]
    kept = take_all(stack, stack.receiver_app.extensions["topology"].invalid_queue)
    assert len(kept) == 1 and json.loads(kept[0][1])["operation"] == "merged"
    assert kept[0][0].headers["x-bfus-reason"] == "invalid_envelope"


def test_health_and_readiness(stack: Stack) -> None:
    assert requests.get(f"{stack.receiver_url}healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{stack.receiver_url}readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["broker"] == "connected"


def test_broker_down_is_503_with_retry_after_then_recovers(stack: Stack, stoppable_broker: BrokerHandle) -> None:
    stoppable_broker.stop_app()
    try:
        response = stack.post(message(7))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert response.json()["error"] == "unavailable"
        assert requests.get(f"{stack.receiver_url}readyz", timeout=5).status_code == 503
    finally:
        stoppable_broker.start_app()
    wait_for(lambda: requests.get(f"{stack.receiver_url}readyz", timeout=5).status_code == 200, 30, "readiness")
    assert stack.post(message(7)).status_code == 202


def test_no_confirm_in_time_is_503(make_stack: Callable[..., Stack], amqp_url: str, rabbitmq: BrokerHandle) -> None:
    """The network to the broker stalls after the publish: no confirm comes within
    broker.confirm_timeout, so BFUS is told to come back (and keeps the message)."""
    from urllib.parse import urlsplit

    from sandbox.tcpproxy import FreezableProxy

    broker = urlsplit(amqp_url)
    proxy = FreezableProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    try:
        stalled_url = amqp_url.replace(f":{broker.port}/", f":{proxy.port}/")
        stack = make_stack(partitions=2, config={"broker": {"url": stalled_url, "confirm_timeout": 1.0}})
        stack.start_receiver()
        assert stack.post(message(8)).status_code == 202
        proxy.freeze()
        started = time.monotonic()
        response = stack.post(message(9))
        assert response.status_code == 503
        assert 1.0 <= time.monotonic() - started < 5
        assert "did not confirm the message in time" in response.json()["message"]
        assert response.headers["Retry-After"] == "1"
        proxy.thaw()
        wait_for(lambda: stack.post(message(10)).status_code == 202, 30, "the receiver to accept again")
    finally:
        proxy.close()
