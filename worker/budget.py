"""Lime's request budget shared by the worker processes behind one address
(``lime.rate_limit``: the calls per second Lime allows that address, docs/operations.md).

Lime Cloud counts requests per client address, so N worker processes on one host must
not each send ``rate_limit`` calls a second. Each worker consumes the ``<prefix>.busy``
queue while it has messages in the works (no message ever goes there; it starts at its
first delivery and stops after a few looks without work), so that queue's consumer
count is the number of workers wanting Lime now, B, and each busy worker sends at most
``rate_limit / B``: an idle worker takes no share, and the busy ones never wait while
budget is left. A worker that starts working does so at ``rate_limit / N`` (N the
live workers, the presence queue's consumers) until its next look, so that the others,
who see it only at their next look (every ``worker.rebalance_interval``), and it
together exceed the budget by at most that one small share meanwhile; Lime's 429 with
Retry-After covers the rest."""

from __future__ import annotations

from collections.abc import Callable

import pika

from shared.logs import get_logger
from shared.ratelimit import TokenBucket
from worker.counted import Counted

log = get_logger(component="worker")

IDLE_LOOKS = 3  # looks without work before a worker stops counting as busy


class Budget:
    def __init__(self, bucket: TokenBucket, total: float, queue: str, presence: str,
                 connection: pika.BlockingConnection, consumers: Callable[[str], int | None]):
        """``bucket``: this worker's Lime client's; ``total``: lime.rate_limit;
        ``queue``: the busy queue, ``presence``: the one every live worker consumes;
        ``consumers(queue)``: the broker's consumer count of a queue."""
        self.bucket = bucket
        self.total = total
        self.queue = queue
        self.presence = presence
        self.consumers = consumers
        self._busy = Counted(connection, queue)
        self._idle_looks = 0
        self.sharing = 1  # busy workers at the last look

    @property
    def busy(self) -> bool:
        return self._busy.joined

    def look(self, working: bool) -> float:
        """Called each tick with whether this worker has messages in the works; sets
        and returns its share of the budget (calls per second)."""
        if working:
            self._idle_looks = 0
            self._busy.join()
        elif self.busy:
            self._idle_looks += 1
            if self._idle_looks >= IDLE_LOOKS:
                self._busy.leave()
        counted = self.consumers(self.queue if self.busy else self.presence)
        if counted is not None:
            sharing = max(1, counted)
            if sharing != self.sharing and self.busy:
                log.info("lime_budget_shared", workers=sharing, share=round(self.total / sharing, 2))
            self.sharing = sharing
        share = self.total / self.sharing
        # No burst: what one worker saved while waiting is not its to spend when the others
        # are busy too (a Retry-After pause would end in all of them spending it at once).
        self.bucket.set_rate(share, burst=1.0)
        return share
