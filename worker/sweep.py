"""The sweep: Lime may drop a webhook (five failed tries) and never sends it again, so
every ``outbound.sweep_interval`` seconds the worker that owns partition 0 lists the
companies Lime changed since the last sweep (``min-_timestamp``, Lime's own advice for
polling; Lime's clock, so no skew) and queues an event for each one whose values show
something to send, to its partition, like a webhook. Companies whose values match
their fingerprint (every company the integration itself wrote) cost nothing beyond
the list: one Lime call per 50 changed companies, and one per sweep when none
changed."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable

from shared.lime import LimeClient, LimeUnavailable
from shared.limeevents import LimeEvent, queue_properties
from shared.logs import get_logger
from shared.publisher import BrokerUnavailable, ConfirmedPublisher
from shared.topology import Topology
from worker.outbound import Outbound

log = get_logger(component="sweep")
PAGE = 50


class Sweep:
    def __init__(self, lime: LimeClient, publisher: ConfirmedPublisher, topology: Topology, outbound: Outbound):
        self.lime = lime
        self.publisher = publisher
        self.topology = topology
        self.outbound = outbound
        self.since: str | None = None  # Lime's _timestamp of the newest change seen

    def start_point(self, lookback: float) -> None:
        """The first sweep starts ``lookback`` seconds before Lime's newest change (one call)."""
        newest, _ = self.lime.list_page(self.outbound.limetype, {"_sort": "-_timestamp", "_limit": 1})
        if newest and newest[0].get("_timestamp"):
            stamp = dt.datetime.fromisoformat(str(newest[0]["_timestamp"]))
            self.since = (stamp - dt.timedelta(seconds=lookback)).isoformat(timespec="microseconds")

    def once(self) -> int:
        """One sweep; the number of events queued."""
        params = {"_sort": "_timestamp"}
        if self.since is not None:
            params["min-_timestamp"] = self.since
        queued = listed = 0
        for company in self.lime.iterate(self.outbound.limetype, params, page_size=PAGE):
            listed += 1
            self.since = max(self.since or "", str(company.get("_timestamp") or ""))
            if self.outbound.nothing_to_send(company):
                continue
            self._queue(LimeEvent(self.outbound.limetype, "update", company["_id"]))
            queued += 1
        log.info("sweep_done", listed=listed, queued=queued)
        return queued

    def _queue(self, event: LimeEvent) -> None:
        body = json.dumps({"event": f"{event.limetype}.update",
                           "body": {"id": event.id, "limetype": event.limetype}}).encode()
        self.publisher.publish(self.topology.exchange, self.topology.route(event.partition_key), body,
                               queue_properties(f"sweep:{event.id}"))

def sweep_on_schedule(sweep: Sweep, interval: float, is_owner: Callable[[], bool], stopping: threading.Event) -> None:
    """The first sweep looks back two intervals from Lime's newest change (so a worker
    taking over finds what its predecessor had not swept yet); later ones at what
    changed since. Lime or the broker away: the next interval tries again from the
    same point."""
    while not stopping.wait(interval):
        if not is_owner():
            continue
        try:
            if sweep.since is None:
                sweep.start_point(2 * interval)
            sweep.once()
        except (LimeUnavailable, BrokerUnavailable) as err:
            log.warning("sweep_postponed", error=str(err))
