"""Ordered, scalable, fault-proof delivery: partitions spread over live workers,
hand-overs keep BFUS order, the staleness guard, Lime as the scarce resource."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sandbox.broker import BrokerHandle
from sandbox.check import check_customers
from sandbox.stack import BFUS_LIME, Stack, wait_for


def spread(stack: Stack, workers: int, partitions: int = 16) -> dict[str, int]:
    """Wait until every partition has an owner and each of ``workers`` holds its fair share."""
    fair = -(-partitions // workers)

    def balanced() -> dict[str, int] | None:
        owners = stack.owners()
        if None in owners.values():
            return None
        counts = Counter(owners.values())
        return dict(counts) if len(counts) == workers and max(counts.values()) <= fair else None

    return wait_for(balanced, 30, f"16 partitions spread over {workers} workers")


def customer(mid: int, key: str, operation: str = "updated", **data: Any) -> dict[str, Any]:
    return {"id": mid, "timestamp": "2026-11-24T09:15:02+01:00", "objecttype": "customer", "operation": operation,
            "key": key, "customerno": key, "data": {"customerno": key, "name": "Nils Holm", **data}}


def test_partitions_spread_rebalance_and_fail_over(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=16).start(workers=3)
    assert sum(spread(stack, 3).values()) == 16
    stack.start_worker("worker-4")
    assert sorted(spread(stack, 4).values()) == [4, 4, 4, 4]
    leaving = stack.workers[0]
    leaving.stop()
    assert leaving.join(20)
    counts = spread(stack, 3)
    assert leaving.worker.name not in counts and sum(counts.values()) == 16


def test_killed_worker_partitions_are_taken_over_within_seconds(make_stack: Callable[..., Stack]) -> None:
    # A short Lime timeout: the new owner waits that long for a dead owner's last request.
    stack = make_stack(partitions=16, config={"lime": {"read_timeout": 1.0, "connect_timeout": 0.5}}).start(workers=0)
    first, second = stack.spawn_worker("first"), stack.spawn_worker("second")
    first.wait_log("worker_consuming")
    second.wait_log("worker_consuming")
    spread(stack, 2)
    stack.bfus.changes.make(200, customers=40)
    wait_for(lambda: stack.logged_count() >= 50, 30, "some messages applied")
    first.process.kill()
    killed_at = time.monotonic()
    wait_for(lambda: set(stack.owners().values()) == {"second"}, 30, "the survivor to own every partition")
    assert time.monotonic() - killed_at < 10
    stack.wait_logged(200, 60)
    result = check_customers(stack)
    assert result.ok, result.details()


def test_order_holds_while_workers_join_and_leave(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=16, lime_settings={"faults": _latency(2)}).start(workers=1)
    feed = stack.bfus.feed(1500, customers=120, rate=400)
    wait_for(lambda: stack.logged_count() >= 200, 60, "the stream to start")
    stack.start_worker("joiner-1")
    wait_for(lambda: stack.logged_count() >= 600, 60, "more messages")
    stack.start_worker("joiner-2")
    wait_for(lambda: stack.logged_count() >= 900, 60, "more messages")
    stack.workers[0].stop()
    feed.join(60)
    stack.wait_delivered(60)
    stack.wait_logged(1500, 120)
    result = check_customers(stack)
    assert result.ok, result.details()
    assert (result.processed, result.failed) == (1500, 0)


def _latency(ms: float) -> Any:
    from sandbox.lime.faults import Faults

    return Faults(latency_ms=ms)


def test_staleness_guard_skips_duplicates_and_older_snapshots(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=4).start(workers=1)
    for message in (customer(10, "800001", "created", phone="+4610"), customer(10, "800001", "created", phone="+4610"),
                    customer(5, "800001", phone="+4605"), customer(12, "800001", phone="+4612"),
                    customer(11, "800001", phone="+4611")):
        assert stack.post(message).status_code == 202
    stack.wait_logged(4, 30)
    wait_for(lambda: stack.bfus.store.queue_status()["pending"] == 0, 5, "nothing pending")
    company = stack.lime_objects("company")
    assert len(company) == 1 and company[0]["phone"] == "+4612" and company[0]["bfuslastmessageid"] == 12
    processed, failed = stack.log_records()
    outcomes = sorted((r["messageid"], r["outcome"]["key"]) for r in processed)
    assert outcomes == [(5, "skipped_stale"), (10, "applied"), (11, "skipped_stale"), (12, "applied")]
    assert failed == []


def test_steady_updates_cost_at_most_two_lime_calls_per_message(make_stack: Callable[..., Stack]) -> None:
    """Known companies: one log record per message and at most one write (none for a
    snapshot Lime holds already, or one a newer waiting message covers); no find."""
    stack = make_stack(partitions=4).start(workers=1)
    sent = 0
    while len(stack.lime_objects("company")) < 20:  # warm-up: every customer reaches Lime once
        stack.bfus.changes.make(20, customers=20, mix=_no_deletes())
        sent += 20
        stack.wait_logged(sent, 30)
    stack.lime.faults.reset_stats()
    stack.bfus.changes.make(200, customers=20, mix=_no_deletes())
    stack.wait_logged(sent + 200, 60)
    stats = stack.lime.faults.stats()["requests"]
    assert set(stats) <= {"PUT company", "POST bfusprocessedmessage"}, stats
    assert stats["POST bfusprocessedmessage"] == 200 and 0 < stats.get("PUT company", 0) <= 200


def _no_deletes() -> Any:
    from sandbox.bfus.changes import ChangeMix

    return ChangeMix(update=1.0, delete=0.0)


def test_request_rate_limit_is_kept(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=4, config={"lime": {"rate_limit": 20.0}}).start(workers=1)
    started = time.monotonic()
    stack.bfus.changes.make(30, customers=30)
    stack.wait_logged(30, 60)
    elapsed = time.monotonic() - started
    calls = stack.lime.faults.stats()["total"] - 1  # the start-up metadata read came earlier
    # 20 requests may go at once (the burst), the rest at 20 per second.
    assert calls >= 60 and elapsed >= (calls - 20) / 20.0 * 0.95


def test_rate_limited_by_lime_waits_for_retry_after(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=4).start(workers=1)
    stack.lime.faults.configure({"rate_limit": 30, "rate_window": 2.0})
    stack.bfus.changes.make(60, customers=10)
    stack.wait_logged(60, 60)
    answers = stack.lime.faults.stats()["answers"]
    assert answers.get("429", 0) > 0
    # A client honouring Retry-After makes few 429s: at most a handful per window per partition.
    assert answers["429"] < 40
    assert stack.log_records()[1] == []


def test_lime_outage_stops_taking_messages_then_resumes(make_stack: Callable[..., Stack],
                                                       rabbitmq: BrokerHandle) -> None:
    stack = make_stack(partitions=4).start(workers=1)
    stack.bfus.changes.make(20, customers=10)
    stack.wait_logged(20, 30)
    stack.lime.faults.configure({"down": True})
    stack.lime.faults.reset_stats()
    stack.bfus.changes.make(40, customers=10)
    stack.wait_delivered(30)
    wait_for(lambda: all(rabbitmq.queue_info(stack.config.broker.url, q).get("consumers") == 0
                         for q in stack.receiver_app.extensions["topology"].partition_queues),
             30, "the worker to stop consuming")
    owners = stack.owners()
    assert set(owners.values()) == {"worker-1"}  # it keeps its partitions
    calls_before = stack.lime.faults.stats()["total"]
    time.sleep(3)  # an outage: count what the worker sends meanwhile
    probes = stack.lime.faults.stats()["total"] - calls_before
    assert probes <= 12  # about one probe per backoff interval (0.5 s here by now), not one per waiting message
    stack.lime.faults.configure({"down": False})
    stack.wait_logged(60, 60)
    result = check_customers(stack)
    assert result.ok, result.details()
    assert result.failed == 0


def test_partition_queues_carry_an_unreachable_delivery_limit(make_stack: Callable[..., Stack],
                                                              rabbitmq: BrokerHandle) -> None:
    stack = make_stack(partitions=2).start(workers=1)
    topology = stack.receiver_app.extensions["topology"]
    for queue in topology.partition_queues:
        arguments = rabbitmq.queue_info(stack.config.broker.url, queue)["arguments"]
        assert arguments["x-delivery-limit"] == 2_147_483_647  # RabbitMQ 4 would apply 20 without it
        assert arguments["x-dead-letter-exchange"] == "bfus.dead"
        assert arguments["x-single-active-consumer"] is True


def test_graceful_sigterm_finishes_in_flight_and_exits_0(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=2, lime_settings={"faults": _latency(0)}).start(workers=0)
    child = stack.spawn_worker("graceful")
    child.wait_log("worker_consuming")
    wait_for(lambda: set(stack.owners().values()) == {"graceful"}, 30, "the worker to own the partitions")
    stack.lime.faults.configure({"latency_ms": 1500})
    assert stack.post(customer(1, "810001", "created")).status_code == 202
    wait_for(lambda: stack.lime.faults.stats()["requests"].get("GET company", 0) >= 1, 10, "the message in flight")
    started = time.monotonic()
    assert child.terminate(timeout=30) == 0
    assert time.monotonic() - started < stack.config.worker.shutdown_timeout
    processed, failed = stack.log_records()
    assert [(r["messageid"], r["outcome"]["key"]) for r in processed] == [(1, "applied")]
    assert "worker_stopped" in child.log_text()
    assert set(stack.owners().values()) == {None}  # locks let go


def test_topology_command_shows_owners_and_depths(make_stack: Callable[..., Stack], tmp_path: Any) -> None:
    import os
    import subprocess

    from sandbox.stack import config_environment

    stack = make_stack(partitions=4).start(workers=1)
    spread(stack, 1, partitions=4)
    stack.lime.faults.configure({"down": True})
    stack.bfus.changes.make(10, customers=5)
    stack.wait_delivered(30)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ")}, **config_environment(stack.raw)}

    def topology() -> tuple[str, list[str], int | None]:
        result = subprocess.run([*BFUS_LIME, "topology"], env=env, capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if "bfus.changes.p" in line]
        cells = [[c.strip() for c in line.split("│")] for line in lines]
        counted = all(c[4].isdigit() and c[5].isdigit() for c in cells)
        return result.stdout, lines, sum(int(c[4]) + int(c[5]) for c in cells) if counted else None

    # the management API's counts lag a little behind
    stdout, lines, _ = wait_for(lambda: (t := topology())[2] == 10 and t, 30, "10 messages shown waiting")
    assert len(lines) == 4 and all("worker-1" in line for line in lines)
    assert "workers owning partitions: 1; free partitions: 0" in stdout
    stack.lime.faults.configure({"down": False})


def test_topology_tells_a_migrations_hold_from_a_worker(make_stack: Callable[..., Stack]) -> None:
    import os
    import subprocess
    import threading

    from migration.hold import PartitionHold
    from sandbox.stack import config_environment

    stack = make_stack(partitions=4).start(workers=1)
    spread(stack, 1, partitions=4)
    hold = PartitionHold(stack.config.broker)
    try:
        hold.take([0, 1], threading.Event())  # the worker gives them up
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ")},
               **config_environment(stack.raw)}

        def summary() -> str:
            out = subprocess.run([*BFUS_LIME, "topology"], env=env, capture_output=True, text=True).stdout
            return out if "held by a running migration: 2" in out else ""

        stdout = wait_for(summary, 30, "topology to show the migration's hold")
        assert "workers owning partitions: 1; free partitions: 0; held by a running migration: 2" in stdout
    finally:
        hold.close()
