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
    # BFUS's 2,000 changes, and one message more for each change BFUS took from Lime (each write, also one
    # whose record a SIGKILL cut off: see below)
    writes = out.bfus_writes["POST"] + out.bfus_writes["PUT"]
    assert result.report.messages == 2000 + writes
    assert (result.report.processed, result.report.failed) == (result.report.messages, 0)
    assert sum(out.user.edits.values()) + len(out.user.created) + out.user.refused == 65
    assert out.bfus_writes["POST"] == len(out.user.created)  # each new company created in BFUS once
    # no ping-pong: at most one BFUS write per Lime-user write; each write leaves its record, but for one
    # a worker was SIGKILLed between BFUS's answer and the record (twice in the plan)
    assert out.sent <= writes <= min(out.sent + 2, 65)
    assert out.webhooks["lost"] > 0 or options.webhook_loss == 0  # the sweep had something to catch
    assert len(result.events) == 11  # start, Lime user, 2 x (kill, restart), join, broker down and up, Lime down, up
