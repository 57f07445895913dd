"""The short soak: the full soak's faults on a smaller stream (make soak runs 20,000
changes over 2,000 customers with a 30 s Lime outage)."""

from __future__ import annotations

from pathlib import Path

from sandbox.broker import BrokerHandle
from sandbox.soak import SoakOptions, run_soak


def test_short_soak_loses_doubles_and_reorders_nothing(stoppable_broker: BrokerHandle, tmp_path: Path) -> None:
    options = SoakOptions(changes=2000, customers=300, workers=3, outage=5.0, timeout=600)
    result = run_soak(stoppable_broker, options, tmp_path)
    print("\n" + result.summary())
    assert result.report.ok, result.report.details()
    assert result.report.messages == 2000
    assert (result.report.processed, result.report.failed) == (2000, 0)
    assert len(result.events) == 10  # start, 2 x (kill, restart), join, broker down and up, Lime down and up
