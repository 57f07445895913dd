"""Dead letters from a terminal: list, show, requeue, discard, reconcile, through the
real broker, a running worker and the Lime stand-in."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pika
import pytest
from click.testing import CliRunner, Result

from cli.main import main
from sandbox.stack import BFUS_LIME, Stack, config_environment, wait_for
from shared.topology import Topology


def customer(mid: int, key: str, **data: Any) -> dict[str, Any]:
    return {"id": mid, "timestamp": "2026-11-24T09:15:02+01:00", "objecttype": "customer", "operation": "updated",
            "key": key, "customerno": key, "data": {"customerno": key, "name": "Ebba Lund", **data}}


def contract(mid: int, contractno: str, customerno: str, status: str = "active") -> dict[str, Any]:
    return {"id": mid, "timestamp": "2026-11-24T09:15:02+01:00", "objecttype": "contract", "operation": "updated",
            "key": contractno, "customerno": customerno,
            "data": {"contractno": contractno, "customerno": customerno, "product": "water", "status": status}}


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(partitions=2).start(workers=1)


def cli(stack: Stack, *args: str) -> Result:
    result = CliRunner().invoke(main, list(args), env=config_environment(stack.raw), catch_exceptions=False)
    return result


def failed(stack: Stack) -> dict[int, dict[str, Any]]:
    return {r["_id"]: r for r in stack.log_records()[1]}


def dead_letters(stack: Stack) -> int:
    topology = Topology.from_config(stack.config.broker)
    connection = pika.BlockingConnection(pika.URLParameters(stack.config.broker.url))
    try:
        return connection.channel().queue_declare(topology.dead_queue, passive=True).method.message_count
    finally:
        connection.close()


def fail_three(stack: Stack) -> list[int]:
    """Three failed messages: two contracts of a customer Lime lacks (messages 10 and
    11), one not JSON. Their record ids, in that order."""
    assert stack.post(contract(10, "5000010", "300001")).status_code == 202
    assert stack.post(contract(11, "5000010", "300001", status="ended")).status_code == 202
    assert stack.post(None, raw=b"{not json").status_code == 400
    wait_for(lambda: len(failed(stack)) == 3, 30, "three failed records")
    wait_for(lambda: dead_letters(stack) == 3, 10, "three dead letters")
    by_message = {r["messageid"]: r["_id"] for r in failed(stack).values()}
    return [by_message[10], by_message[11], by_message[None]]


def test_list_filters_and_counts(stack: Stack) -> None:
    ids = fail_three(stack)
    result = cli(stack, "dlq", "list")
    assert result.exit_code == 0, result.output
    assert "3 message(s), status failed" in result.output
    assert "by reason: invalid_json 1, missing_related 2" in result.output
    for record_id in ids:
        assert f"│ {record_id} │" in result.output or f" {record_id} " in result.output
    only = cli(stack, "dlq", "list", "--reason", "missing_related", "--customerno", "300001")
    assert "2 message(s)" in only.output and "invalid_json" not in only.output
    assert "0 message(s)" in cli(stack, "dlq", "list", "--older-than", "1d").output
    assert "3 message(s)" in cli(stack, "dlq", "list", "--older-than", "0m").output


def test_show_explains_one_message(stack: Stack) -> None:
    first = fail_three(stack)[0]
    result = cli(stack, "dlq", "show", str(first))
    assert result.exit_code == 0, result.output
    assert "messageid:      10" in result.output and "reason:         missing_related" in result.output
    assert "refers to customer 300001" in result.output
    assert "attempts:       1" in result.output and "status:         failed" in result.output
    assert "dead letters in the queue: 1" in result.output
    assert '"contractno": "5000010"' in result.output  # the payload, pretty-printed
    missing = cli(stack, "dlq", "show", "999999")
    assert missing.exit_code == 1


def test_requeue_before_the_cause_is_fixed_fails_again_on_the_same_record(stack: Stack) -> None:
    first = fail_three(stack)[0]
    result = cli(stack, "dlq", "requeue", str(first))
    assert "requeued to" in result.output and "1 requeued" in result.output
    wait_for(lambda: failed(stack)[first]["attempts"] == 2, 30, "the second attempt")
    record = failed(stack)[first]
    assert record["status"]["key"] == "failed" and record["reason"] == "missing_related"
    assert len(failed(stack)) == 3  # no new record
    wait_for(lambda: dead_letters(stack) == 3, 10, "its dead letter back")
    assert stack.log_records()[0] == []


def test_requeue_after_the_fix_resolves_in_bfus_order(stack: Stack) -> None:
    ids = fail_three(stack)
    assert stack.post(customer(12, "300001")).status_code == 202  # the missing parent arrives
    stack.wait_logged(4, 30)
    result = cli(stack, "dlq", "requeue", "--reason", "missing_related")
    assert "2 requeued" in result.output
    wait_for(lambda: [r["status"]["key"] for r in failed(stack).values()].count("resolved") == 2, 30, "resolved")
    processed = {r["messageid"]: r for r in stack.log_records()[0]}
    for record_id in ids[:2]:
        record = failed(stack)[record_id]
        assert record["processedmessage"] == processed[record["messageid"]]["_id"]
        assert "after requeue" in record["resolution"]
    assert processed[11]["_id"] > processed[10]["_id"]  # applied in BFUS order
    agreement = stack.lime_objects("agreement")
    assert len(agreement) == 1 and agreement[0]["status"]["key"] == "ended"  # the newest state
    assert dead_letters(stack) == 1  # only the invalid one left
    again = cli(stack, "dlq", "requeue", str(ids[0]))
    assert "not a failed message" in again.output


def test_discard_keeps_the_record_and_empties_the_queue(stack: Stack) -> None:
    invalid = fail_three(stack)[2]
    result = cli(stack, "dlq", "discard", str(invalid), "--why", "BFUS sent garbage; ticket 4711")
    assert "1 discarded" in result.output
    record = failed(stack)[invalid]
    assert record["status"]["key"] == "discarded" and "ticket 4711" in record["resolution"]
    assert dead_letters(stack) == 2
    assert "left as it is: discarded" in cli(stack, "dlq", "discard", str(invalid), "--why", "again").output
    assert cli(stack, "dlq", "discard", str(invalid)).exit_code != 0  # --why is required


def test_requeue_all(stack: Stack) -> None:
    fail_three(stack)
    result = cli(stack, "dlq", "requeue", "--all")
    assert "3 requeued" in result.output
    wait_for(lambda: all(r["attempts"] == 2 for r in failed(stack).values()), 30, "all tried again")


def test_reconcile_repairs_drift(stack: Stack) -> None:
    ids = fail_three(stack)
    topology = Topology.from_config(stack.config.broker)
    # 1. a resolved record whose dead letter is still queued; 2. a duplicate dead letter;
    # 3. a dead letter without a record; 4. a failed record whose dead letter is gone.
    stack.lime.store.update("bfusfailedmessage", ids[2], {"status": "resolved"})
    connection = pika.BlockingConnection(pika.URLParameters(stack.config.broker.url))
    channel = connection.channel()
    channel.confirm_delivery()
    letters = []
    for method, props, body in channel.consume(topology.dead_queue, inactivity_timeout=5):
        letters.append((method, props, body))
        if len(letters) == 3:
            break
    by_record = {p.headers["x-bfus-failed-record"]: (m, p, b) for m, p, b in letters}
    method, props, body = by_record[ids[1]]
    channel.basic_publish(topology.dead_exchange, "x", body, props)  # duplicate of record 2
    orphan = pika.BasicProperties(headers={"x-bfus-reason": "invalid_envelope", "x-bfus-id": 77})
    channel.basic_publish(topology.dead_exchange, "x", b'{"id": 77}', orphan)
    channel.basic_ack(by_record[ids[0]][0].delivery_tag)  # record 1 loses its dead letter
    connection.close()
    result = cli(stack, "dlq", "reconcile")
    assert result.exit_code == 0, result.output
    output = result.output
    assert f"record {ids[2]} (message without id): removed 1 dead letter(s) of a resolved message" in output
    assert f"record {ids[1]} (message 11): removed 1 duplicate dead letter(s)" in output
    assert "(message 77): recorded a dead letter that had no record" in output
    assert f"record {ids[0]} (message 10): put back its missing dead letter" in output
    assert "4 fix(es)" in output
    assert dead_letters(stack) == 3  # records 1 and 2, and the recorded orphan
    assert "agree" in cli(stack, "dlq", "reconcile").output


def test_requeue_killed_midway_is_finished_by_reconcile(stack: Stack) -> None:
    ids = fail_three(stack)
    assert stack.post(customer(12, "300001")).status_code == 202
    stack.wait_logged(4, 30)
    stack.lime.faults.reset_stats()
    stack.lime.faults.configure({"latency_ms": 1500})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ", "BFUSLIME"))},
           **config_environment(stack.raw)}
    child = subprocess.Popen([*BFUS_LIME, "dlq", "requeue", str(ids[0]), str(ids[1])],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Killed while Lime is marking the first record requeued, before the message moves.
    wait_for(lambda: stack.lime.faults.stats()["requests"].get("PUT bfusfailedmessage", 0) >= 1, 60,
             "the requeue under way")
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    stack.lime.faults.configure({"latency_ms": 0})
    wait_for(lambda: failed(stack)[ids[0]]["status"]["key"] == "requeued", 10, "the record marked")
    assert dead_letters(stack) == 3  # nothing moved
    assert failed(stack)[ids[1]]["status"]["key"] == "failed"
    result = cli(stack, "dlq", "reconcile")
    assert f"record {ids[0]} (message 10): finished an interrupted requeue" in result.output
    wait_for(lambda: failed(stack)[ids[0]]["status"]["key"] == "resolved", 30, "the requeued message applied")
    assert "1 requeued" in cli(stack, "dlq", "requeue", str(ids[1])).output
    wait_for(lambda: failed(stack)[ids[1]]["status"]["key"] == "resolved", 30, "the second one applied")
    assert dead_letters(stack) == 1
    assert len(failed(stack)) == 3 and len(stack.log_records()[0]) == 3


def test_discard_while_lime_is_down_says_so_and_keeps_the_message(stack: Stack) -> None:
    """Before: 'no such failed-message record' when Lime was merely down."""
    ids = fail_three(stack)
    stack.lime.faults.configure({"down": True})
    try:
        result = cli(stack, "dlq", "discard", str(ids[0]), "--why", "test")
    finally:
        stack.lime.faults.configure({"down": False})
    assert "Lime did not answer" in result.output and "no such" not in result.output
    assert "0 discarded" in result.output
    assert failed(stack)[ids[0]]["status"]["key"] == "failed" and dead_letters(stack) == 3
    assert "no such failed-message record (404)" in cli(stack, "dlq", "discard", "999999", "--why", "x").output


def test_requeue_of_an_unknown_id_says_so_and_exits_1(stack: Stack) -> None:
    ids = fail_three(stack)
    result = CliRunner().invoke(main, ["dlq", "requeue", "99999", str(ids[0])], env=config_environment(stack.raw))
    assert result.exit_code == 1
    assert "record 99999: not a failed message" in result.output and "1 requeued" in result.output
    nothing = CliRunner().invoke(main, ["dlq", "requeue", "--reason", "no_such_reason"],
                                 env=config_environment(stack.raw))
    assert nothing.exit_code == 0 and "no failed message with reason no_such_reason" in nothing.output


def test_list_takes_all_statuses(stack: Stack) -> None:
    fail_three(stack)
    result = cli(stack, "dlq", "list", "--status", "all")
    assert result.exit_code == 0 and "3 message(s), status failed,requeued,resolved,discarded" in result.output
