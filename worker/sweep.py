"""The sweep: Lime may drop a webhook (five failed tries) and never sends it again, so
every ``outbound.sweep_interval`` seconds the worker that owns partition 0 lists the
companies Lime changed since the last sweep (``min-_timestamp``, Lime's own advice for
polling; Lime's clock, so no skew) and queues an event for each one whose values show
something to send, to its partition, like a webhook. Companies whose values match
their fingerprint (every company the integration itself wrote) cost nothing beyond
the list: one Lime call per 50 changed companies (a few more when companies change
during the sweep: they are met again), and one per sweep when none changed."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Mapping

from shared.lime import LimeClient, LimeUnavailable
from shared.limeevents import LimeEvent, queue_properties
from shared.logs import get_logger
from shared.publisher import BrokerUnavailable, ConfirmedPublisher
from shared.topology import Topology
from worker.outbound import Outbound

log = get_logger(component="sweep")
PAGE = 50
# How much further back than two intervals a worker's first sweep looks: partition 0
# passes to it only after its last owner is gone, which for a killed worker takes the
# broker's heartbeat timeout (2 x broker.heartbeat) and a rebalance; this covers that.
TAKEOVER = 300.0


class Sweep:
    def __init__(self, lime: LimeClient, publisher: ConfirmedPublisher, topology: Topology, outbound: Outbound,
                 customer_keys: Mapping[str, str]):
        """``customer_keys``: where a company's events go (shared.limeevents.customer_keys),
        as the receiver routes its webhooks."""
        self.lime = lime
        self.publisher = publisher
        self.topology = topology
        self.outbound = outbound
        self.customer_keys = dict(customer_keys)
        self.since: str | None = None  # Lime's _timestamp of the newest change seen

    def start_point(self, lookback: float) -> None:
        """The first sweep starts ``lookback`` seconds before Lime's newest change (one call)."""
        newest, _ = self.lime.list_page(self.outbound.limetype, {"_sort": "-_timestamp", "_limit": 1})
        if newest and newest[0].get("_timestamp"):
            stamp = dt.datetime.fromisoformat(str(newest[0]["_timestamp"]))
            self.since = (stamp - dt.timedelta(seconds=lookback)).isoformat(timespec="microseconds")

    def once(self) -> int:
        """One sweep; the number of events queued.

        It pages by Lime's clock, not by offset: each page asks for the companies
        changed at or after the newest ``_timestamp`` seen (``min-_timestamp``, in
        ``_timestamp, _id`` order), so a company changed while the sweep runs moves
        ahead and is met again, and none slides past a page boundary unseen, as it
        would under offset paging while BFUS's stream rewrites companies. The ones
        met twice (their stamp equals the boundary) are skipped the second time."""
        queued = listed = 0
        at_since: set[int] = set()  # ids met whose _timestamp equals self.since
        while True:
            params: dict[str, object] = {"_sort": "_timestamp,_id", "_limit": PAGE}
            if self.since is not None:
                params["min-_timestamp"] = self.since
            if len(at_since) >= PAGE:  # a page's worth of companies of one stamp: step over them
                params["_offset"] = len(at_since)
            page, _ = self.lime.list_page(self.outbound.limetype, params)
            fresh = [c for c in page if not (self._stamp(c) == self.since and c["_id"] in at_since)]
            for company in fresh:
                listed += 1
                if self._stamp(company) != self.since:
                    self.since, at_since = self._stamp(company), set()
                at_since.add(company["_id"])
                if not self.outbound.nothing_to_send(company):
                    self._queue(LimeEvent(self.outbound.limetype, "update", company["_id"], company))
                    queued += 1
            if len(page) < PAGE or not fresh:
                break
        log.info("sweep_done", listed=listed, queued=queued)
        return queued

    @staticmethod
    def _stamp(company: dict[str, object]) -> str:
        return str(company.get("_timestamp") or "")

    def _queue(self, event: LimeEvent) -> None:
        """To the partition a webhook of the company goes to (its customer's, when it
        is linked); the body names the company only: the worker reads it."""
        body = json.dumps({"event": f"{event.limetype}.update",
                           "body": {"id": event.id, "limetype": event.limetype}}).encode()
        key = event.partition_key(self.customer_keys)
        self.publisher.publish(self.topology.exchange, self.topology.route(key), body,
                               queue_properties(f"sweep:{event.id}"))

def sweep_on_schedule(sweep: Sweep, interval: float, is_owner: Callable[[], bool], stopping: threading.Event) -> None:
    """The first sweep looks back two intervals and :data:`TAKEOVER` from Lime's newest
    change (so a worker taking over finds what its predecessor had not swept yet);
    later ones at what changed since. Lime or the broker away: the next interval
    tries again from the same point."""
    while not stopping.wait(interval):
        if not is_owner():
            continue
        try:
            if sweep.since is None:
                sweep.start_point(2 * interval + TAKEOVER)
            sweep.once()
        except (LimeUnavailable, BrokerUnavailable) as err:
            log.warning("sweep_postponed", error=str(err))
