"""Retention: old log records are deleted, unresolved failed messages never."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from click.testing import CliRunner

from cli.main import main
from sandbox.stack import Stack, config_environment, wait_for

OLD = (dt.datetime.now(dt.UTC) - dt.timedelta(days=40)).isoformat()
NEW = (dt.datetime.now(dt.UTC) - dt.timedelta(days=5)).isoformat()


def seed(stack: Stack) -> dict[str, list[int]]:
    store = stack.lime.store
    ids: dict[str, list[int]] = {}

    def add(kind: str, limetype: str, values: dict[str, Any]) -> None:
        ids.setdefault(kind, []).append(store.create(limetype, values)["_id"])

    for i in range(230):  # more than one page
        add("old processed", "bfusprocessedmessage", {"messageid": i, "processedtime": OLD, "outcome": "applied"})
    for i in range(5):
        add("new processed", "bfusprocessedmessage", {"messageid": 1000 + i, "processedtime": NEW,
                                                      "outcome": "applied"})
    for status in ("resolved", "discarded"):
        add(f"old {status}", "bfusfailedmessage", {"messageid": 2000, "failedtime": OLD, "status": status})
        add(f"new {status}", "bfusfailedmessage", {"messageid": 2001, "failedtime": NEW, "status": status})
    for status in ("failed", "requeued"):
        add(f"old {status}", "bfusfailedmessage", {"messageid": 3000, "failedtime": OLD, "status": status})
    return ids


def remaining(stack: Stack, ids: dict[str, list[int]]) -> dict[str, int]:
    alive = {o["_id"] for lt in ("bfusprocessedmessage", "bfusfailedmessage") for o in stack.lime_objects(lt)}
    return {kind: sum(1 for i in group if i in alive) for kind, group in ids.items()}


def test_purge_logs_deletes_old_records_and_keeps_unresolved(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=2).start(workers=0)
    ids = seed(stack)
    stack.lime.faults.reset_stats()
    result = CliRunner().invoke(main, ["purge-logs", "--older-than", "30"], env=config_environment(stack.raw))
    assert result.exit_code == 0, result.output
    assert "deleted 230 processed and 2 resolved or discarded failed-message records" in result.output
    assert "kept 2 unresolved failed ones that old" in result.output
    assert remaining(stack, ids) == {
        "old processed": 0, "new processed": 5, "old resolved": 0, "new resolved": 1, "old discarded": 0,
        "new discarded": 1, "old failed": 1, "old requeued": 1}
    assert stack.lime.faults.stats()["requests"]["DELETE bfusprocessedmessage"] == 230


def test_a_worker_purges_on_schedule(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=2, config={"retention": {"days": 30, "interval_hours": 0.001}})
    ids = seed(stack)
    stack.start(workers=1)
    wait_for(lambda: remaining(stack, ids)["old processed"] == 0, 60, "the scheduled purge")
    assert remaining(stack, ids)["old failed"] == 1 and remaining(stack, ids)["new processed"] == 5
