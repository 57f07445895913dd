"""Lime's budget shared by the workers behind one address (worker/budget.py): four
worker processes with lime.rate_limit 40 against a Lime that allows 50 calls a second
from this address keep under it together, where each on its own at 40 would not."""

from __future__ import annotations

from collections.abc import Callable

from sandbox.bfus.changes import ChangeMix
from sandbox.stack import Stack


def test_four_workers_share_the_budget_and_never_see_a_429_storm(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=8, config={"lime": {"rate_limit": 40.0}, "worker": {"retry_max": 2.0}})
    stack.start(workers=4, post=False)
    stack.lime.faults.configure({"rate_limit": 100, "rate_window": 2.0})
    stack.lime.faults.reset_stats()
    stack.bfus.changes.make(240, customers=120, mix=ChangeMix(update=1.0, delete=0.0))
    stack.bfus.poster.resume()
    stack.wait_quiet(timeout=180)
    stats = stack.lime.faults.stats()
    refused = stats["answers"].get("429", 0)
    assert refused <= 0.02 * stats["total"], f"{refused} of {stats['total']} calls answered 429"
    processed, failed = stack.log_records()
    assert len(processed) + len(failed) == 240 and not failed
