"""The short soak: the full soak's faults on a smaller stream (make soak runs 20,000
changes over 2,000 customers with a 30 s Lime outage and 300 Lime-user edits)."""

from __future__ import annotations

from pathlib import Path

from sandbox.broker import BrokerHandle
from sandbox.soak import SoakOptions, run_soak


def test_short_soak_loses_doubles_and_reorders_nothing(stoppable_broker: BrokerHandle, tmp_path: Path) -> None:
    options = SoakOptions(changes=2000, customers=300, workers=3, outage=5.0, timeout=600, lime_edits=60,
                          lime_creates=5)
    result = run_soak(stoppable_broker, options, tmp_path)
    print("\n" + result.summary())
    assert result.ok, result.report.details()
    out = result.outbound
    assert out is not None
    # BFUS's 2,000 changes, and one message more for each write BFUS took from Lime that changed something.
    # A write a SIGKILL cut off before its record is sent again, and changes nothing the second time. Two
    # kills in the plan, each cutting at most the writes its worker had in flight (worker.concurrency, 4).
    writes = out.bfus_writes["POST"] + out.bfus_writes["PUT"]
    from_lime = result.report.messages - 2000
    assert from_lime <= writes <= from_lime + 2 * 4
    assert (result.report.processed, result.report.failed) == (result.report.messages, 0)
    assert sum(out.user.edits.values()) + len(out.user.created) + out.user.refused == 65
    assert out.bfus_writes["POST"] == len(out.user.created)  # each new company created in BFUS once
    # no ping-pong: BFUS's writes are the Lime user's (65 actions), each leaving its record, and the repeats
    assert out.sent <= writes <= 65 + 2 * 4
    assert out.webhooks["lost"] > 0 or options.webhook_loss == 0  # the sweep had something to catch
    assert len(result.events) == 11  # start, Lime user, 2 x (kill, restart), join, broker down and up, Lime down, up
