"""A partition's channel closes only after the acks its lane queued are sent
(worker/consumer.py sends acks at its loop's turn; worker/ownership.py closes channels):
a message its lane finished must not return to the queue with the channel."""

from __future__ import annotations

from typing import Any

from worker.apply import IdCache
from worker.ownership import Owned, Ownership


class _Channel:
    def __init__(self, events: list[str]):
        self.events = events
        self.is_open = True

    def close(self) -> None:
        self.events.append("channel closed")
        self.is_open = False


class _Lane:
    def drop_queued(self) -> int:
        return 0


def test_a_partitions_channel_closes_after_the_queued_acks_are_sent() -> None:
    events: list[str] = []
    ownership = Ownership("w", topology=None, locks=None, lime=None,  # type: ignore[arg-type]
                          subscribe=lambda owned: None, lane=lambda index: _Lane(),  # type: ignore[arg-type,return-value]
                          probe_limetype="bfusprocessedmessage", send_acks=lambda: events.append("acks sent"))
    owned = Owned(index=3, channel=_Channel(events), cache=IdCache(size=1))  # type: ignore[arg-type]
    ownership.close_channel(owned)
    assert events == ["acks sent", "channel closed"] and owned.channel is None


def test_lime_going_down_sends_the_acks_before_closing_every_channel() -> None:
    events: list[str] = []

    class _Breaker:
        is_open = True

        def probe_due(self) -> bool:
            return False

    class _Lime:
        breaker = _Breaker()

    ownership = Ownership("w", topology=None, locks=None, lime=_Lime(),  # type: ignore[arg-type]
                          subscribe=lambda owned: None, lane=lambda index: _Lane(),  # type: ignore[arg-type,return-value]
                          probe_limetype="bfusprocessedmessage", send_acks=lambda: events.append("acks sent"))
    channels: list[Any] = [_Channel(events), _Channel(events)]
    ownership.owned = {i: Owned(index=i, channel=c, cache=IdCache(size=1)) for i, c in enumerate(channels)}
    ownership._follow_lime(True)
    assert events == ["acks sent", "channel closed", "acks sent", "channel closed"]
