"""Coalescing (worker.coalesce, worker/lanes.py) and no-op skipping over the real stack:
several waiting messages of one object in a partition's window are written once, as
the newest, and each still ends as exactly one log record, also when the worker dies
in the middle of a group. One partition, so every message shares one lane; Lime made
slow while the messages arrive, so that they wait in the worker's window together."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import pika
import pytest

from sandbox.check import CheckReport, check_log
from sandbox.stack import Stack, wait_for
from shared.lime import option_key
from shared.topology import Topology


def customer(mid: int, key: str, name: str, operation: str = "updated", **data: Any) -> dict[str, Any]:
    return {"id": mid, "timestamp": f"2026-11-24T09:{mid // 60:02d}:{mid % 60:02d}+01:00", "objecttype": "customer",
            "operation": operation, "key": key, "customerno": key,
            "data": {"customerno": key, "name": name, "customertype": "company", **data}}


def waiting(stack: Stack) -> int:
    """Messages ready in the partition queue (not yet delivered to a worker)."""
    connection = pika.BlockingConnection(pika.URLParameters(stack.config.broker.url))
    try:
        queue = Topology.from_config(stack.config.broker).partition_queue(0)
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def outcomes(stack: Stack) -> dict[int, tuple[str, str]]:
    processed, failed = stack.log_records()
    out = {r["messageid"]: (str(option_key(r.get("outcome"))), r.get("detail") or "") for r in processed}
    out.update({r["messageid"]: ("failed", r["reason"]) for r in failed})
    return out


def one_record_each(stack: Stack, count: int) -> CheckReport:
    report = CheckReport()
    processed, failed = stack.log_records()
    check_log(report, range(1, count + 1), processed, failed)
    return report


def held_in_window(stack: Stack, first: dict[str, Any], rest: list[dict[str, Any]]) -> None:
    """``first`` applied (the worker now knows its object); then Lime slowed down while
    ``rest`` is posted, until all of it is in the worker's window (nothing ready in the
    queue), then Lime fast again."""
    assert stack.post(first).status_code == 202
    stack.wait_logged(1, 30)
    stack.lime.faults.configure({"latency_ms": 1500})
    try:
        assert stack.post(rest[0]).status_code == 202  # the worker takes it and waits for Lime
        for body in rest[1:]:
            assert stack.post(body).status_code == 202
        wait_for(lambda: waiting(stack) == 0, 30, "every message in the worker's window")
    finally:
        stack.lime.faults.configure({"latency_ms": 0})


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(partitions=1).start(workers=1)


def test_waiting_messages_of_one_object_are_written_once_as_the_newest(stack: Stack) -> None:
    held_in_window(stack, customer(1, "700001", "Första AB", "created"),
                   [customer(2, "700001", "Andra AB"), customer(3, "700002", "Annan Kund AB", "created"),
                    customer(4, "700001", "Tredje AB"), customer(5, "700001", "Fjärde AB", phone="+4681234567"),
                    customer(6, "700002", "Annan Kund AB")])
    stack.lime.faults.reset_stats()
    stack.wait_logged(6, 30)
    stack.wait_quiet()
    assert one_record_each(stack, 6).ok
    found = outcomes(stack)
    # 2 waited behind the others of 700001 (and 3 is a create, never held back: 6 has its company to need it)
    assert found[3][0] == "applied" and found[6][0] == "unchanged"
    superseded = {mid for mid, (outcome, _) in found.items() if outcome == "skipped_superseded"}
    assert superseded and superseded <= {2, 4}
    assert all(found[mid][1] == "superseded by message 5" for mid in superseded)
    assert found[5][0] == "applied"
    [first] = [c for c in stack.lime_objects("company") if c["customerno"] == "700001"]
    assert (first["name"], first["phone"], first["bfuslastmessageid"]) == ("Fjärde AB", "+4681234567", 5)


def test_a_delete_then_a_re_create_coalesce_to_the_re_create_and_revive_the_object(stack: Stack) -> None:
    held_in_window(stack, customer(1, "700001", "Första AB", "created"),
                   [customer(2, "700001", "Andra AB"), customer(3, "700001", "Andra AB", "deleted"),
                    customer(4, "700001", "Återkommen AB", "created")])
    stack.wait_logged(4, 30)
    found = outcomes(stack)
    assert found[4][0] == "applied" and found[3] == ("skipped_superseded", "superseded by message 4")
    [company] = stack.lime_objects("company")
    assert company["name"] == "Återkommen AB" and option_key(company["bfusstatus"]) != "deleted"


def test_a_worker_killed_inside_a_coalesced_group_loses_and_doubles_nothing(make_stack: Callable[..., Stack]) -> None:
    """The newest of a group is written and the older ones logged as superseded; its
    own record does not get written (Lime refuses it) when the worker is SIGKILLed.
    The next worker gets the group again: the superseded ones find their records, the
    newest is logged as applied. One record per message."""
    stack = make_stack(partitions=1, config={"worker": {"lime_error_attempts": 10_000}}).start(workers=0)
    first = stack.spawn_worker("doomed")
    first.wait_log("worker_consuming")
    held_in_window(stack, customer(1, "700001", "Första AB", "created"),
                   [customer(2, "700001", "Andra AB"), customer(3, "700001", "Tredje AB"),
                    customer(4, "700001", "Fjärde AB")])
    stack.lime.faults.configure({"fail_containing": '"messageid": 4,', "fail_limetype": "bfusprocessedmessage"})
    stack.lime.faults.reset_stats()
    wait_for(lambda: {2, 3} <= set(outcomes(stack)), 30, "the superseded ones' records")
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    assert set(outcomes(stack)) == {1, 2, 3} and stack.lime_objects("company")[0]["name"] == "Fjärde AB"
    stack.lime.faults.configure({"fail_containing": ""})
    stack.spawn_worker("next").wait_log("worker_consuming")
    stack.wait_logged(4, 60)
    report = one_record_each(stack, 4)
    assert report.ok, report.details()
    found = outcomes(stack)
    assert found[3][0] == "skipped_superseded" and found[4][0] == "applied"
    assert found[2][0] in ("applied", "skipped_superseded")  # the worker may have taken 2 before 3 and 4 came


def test_with_coalescing_off_each_message_is_written(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=1, config={"worker": {"coalesce": False}}).start(workers=1)
    held_in_window(stack, customer(1, "700001", "Första AB", "created"),
                   [customer(2, "700001", "Andra AB"), customer(3, "700001", "Tredje AB")])
    stack.wait_logged(3, 30)
    assert {mid: o for mid, (o, _) in outcomes(stack).items()} == {1: "applied", 2: "applied", 3: "applied"}
