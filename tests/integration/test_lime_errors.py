"""A message Lime keeps answering with 5xx is not an outage (issue 9): it fails with
reason lime_error and the partition moves on, while a real outage, of everything or
of writes only, still fails nothing."""

from __future__ import annotations

from collections.abc import Callable

import pika
import pytest

from builders import message
from sandbox.stack import Stack, wait_for
from shared import headers as h


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack(partitions=2, config={"worker": {"lime_error_attempts": 3}})
    stack.start_receiver()
    stack.start_worker()
    return stack


def records(stack: Stack) -> tuple[dict[int, dict], dict[int, dict]]:
    processed, failed = stack.log_records()
    return {r["messageid"]: r for r in processed}, {r["messageid"]: r for r in failed}


def dead_letters(stack: Stack) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(stack.config.broker.url))
    try:
        queue = stack.receiver_app.extensions["topology"].dead_queue
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def customer(mid: int, name: str, customerno: str = "100234") -> dict:
    return message(mid, customerno, data={"customerno": customerno, "name": name, "customertype": "company"})


def test_a_message_lime_answers_500_fails_as_lime_error_and_the_partition_moves_on(stack: Stack) -> None:
    """Today's code: retried without end, the partition blocked, no failed record."""
    stack.lime.faults.configure({"fail_containing": "POISON", "fail_limetype": "company"})
    assert stack.post(customer(1, "POISON Ltd")).status_code == 202
    assert stack.post(customer(2, "Fine Ltd")).status_code == 202  # same customer, so same partition, behind it
    stack.wait_logged(2, 60)
    processed, failed = records(stack)
    assert set(failed) == {1} and set(processed) == {2}
    assert failed[1]["reason"] == "lime_error" and "Lime answered 500" in failed[1]["error"]
    assert "POISON Ltd" in failed[1]["payload"]  # the whole record: Lime took it
    assert [c["name"] for c in stack.lime_objects("company")] == ["Fine Ltd"]
    assert dead_letters(stack) == 1


def test_when_lime_refuses_the_full_record_too_a_short_one_is_kept(stack: Stack) -> None:
    stack.lime.faults.configure({"fail_containing": "POISON"})  # any write holding it, the record's payload too
    assert stack.post(customer(1, "POISON Ltd")).status_code == 202
    stack.wait_logged(1, 60)
    _processed, failed = records(stack)
    assert failed[1]["reason"] == "lime_error" and failed[1]["payload"] == ""
    assert "refused the whole failed-message record" in failed[1]["error"]
    assert dead_letters(stack) == 1


def test_a_lone_surrogate_already_in_a_partition_fails_without_blocking_it(stack: Stack) -> None:
    """A body the receiver now refuses, queued before it did (or requeued from an old
    payload). Today's code: the stand-in answers 500, retried without end."""
    body = (b'{"id": 7, "timestamp": "2026-11-24T09:15:02+01:00", "objecttype": "customer", "operation": "updated",'
            b' "key": "100234", "customerno": "100234", "data": {"customerno": "100234", "name": "\\ud800"}}')
    topology = stack.receiver_app.extensions["topology"]
    stack.receiver_app.extensions["publisher"].publish(
        topology.exchange, topology.routing_key(topology.partition_of("100234")), body,
        pika.BasicProperties(delivery_mode=2, headers={h.ID: 7}))
    assert stack.post(customer(8, "After")).status_code == 202
    stack.wait_logged(2, 60)
    processed, failed = records(stack)
    assert failed[7]["reason"] == "invalid_envelope" and "data.name" in failed[7]["error"]
    assert set(processed) == {8}


@pytest.mark.parametrize("outage", [
    pytest.param({"error_rate": 1.0}, id="every-request-500"),
    pytest.param({"fail_containing": "{"}, id="every-write-500-reads-fine"),
])
def test_an_outage_of_lime_fails_nothing(stack: Stack, outage: dict) -> None:
    stack.lime.faults.configure(outage)
    for mid in range(1, 5):
        assert stack.post(customer(mid, f"Name {mid}", customerno=str(100 + mid))).status_code == 202
    worker = stack.workers[0].worker
    # Long enough for lime_error_attempts (3) to be reached many times over if it counted.
    wait_for(lambda: stack.lime.faults.stats()["answers"].get("500", 0) >= 12, 60, "Lime to refuse many requests")
    assert stack.logged_count() == 0 and dead_letters(stack) == 0
    stack.lime.faults.configure({"error_rate": 0.0, "fail_containing": ""})
    stack.wait_logged(4, 90)
    processed, failed = records(stack)
    assert set(processed) == {1, 2, 3, 4} and not failed and dead_letters(stack) == 0
    wait_for(lambda: worker.settled >= 4, 10, "the worker to ack the four")  # acks go at its loop's next turn


def test_a_refused_envelope_becomes_a_failed_record_with_the_field_messages(stack: Stack) -> None:
    """Today's code: the record said only 'Envelope invalid: id.'"""
    response = stack.post(message(1) | {"id": "x", "operation": "merged"})
    assert response.status_code == 422
    stack.wait_logged(1, 60)
    [record] = stack.log_records()[1]
    assert record["reason"] == "invalid_envelope"
    assert "id: Not a valid integer." in record["error"] and "operation: Must be one of" in record["error"]
