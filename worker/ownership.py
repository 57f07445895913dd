"""Which partitions a worker holds, and its part in sharing them with the other
workers, decided once per tick on the connection's thread:

- **Lime down** (the Lime client's circuit breaker is open): close every owned
  partition's channel, so no delivery waits in this process (no consumer timeout, no
  growing delivery count), keep the locks, and probe Lime once per backoff; when a
  probe finds Lime back, subscribe again.
- **Reserved by a migration**: let the partition go.
- **Fair share** ceil(P / N), N the workers consuming the presence queue: take free
  partitions below it, let the excess go above it.

Letting go is the hand-over of shared/partitions.py: stop taking messages, let the
lane finish the one in flight, close the channel (unacked messages return to the
queue, in order), leave the marker, delete the lock."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pika.adapters.blocking_connection import BlockingChannel

from shared.lime import LimeClient
from shared.logs import get_logger
from shared.partitions import PartitionLocks
from shared.topology import Topology
from worker.apply import IdCache
from worker.lanes import Lane

log = get_logger(component="worker")


@dataclass
class Owned:
    """A partition this worker holds the lock of."""

    index: int
    channel: BlockingChannel | None  # None while Lime is down or after the broker closed it
    cache: IdCache
    releasing: bool = False
    # Taken over from a worker that may have died mid-request: the first message waits
    # until that request can no longer land (see Worker._on_message).
    needs_grace: bool = True


class Ownership:
    """The partitions held on one connection (a new connection starts with none: the
    broker dropped the locks with the old one)."""

    def __init__(self, name: str, topology: Topology, locks: PartitionLocks, lime: LimeClient | None,
                 subscribe: Callable[[Owned], BlockingChannel], lane: Callable[[int], Lane], probe_limetype: str,
                 send_acks: Callable[[], None] = lambda: None):
        """``send_acks()`` sends the acks lanes have queued: called before a channel
        closes, so that a message its lane finished is not redelivered."""
        self.name = name
        self.topology = topology
        self.locks = locks
        self.lime = lime
        self.subscribe = subscribe
        self.lane = lane
        self.probe_limetype = probe_limetype
        self.send_acks = send_acks
        self.owned: dict[int, Owned] = {}
        self.lime_down = False
        self._lock = threading.Lock()

    def partitions(self) -> list[int]:
        """The partitions held and not being let go (any thread)."""
        with self._lock:
            return sorted(p for p, o in self.owned.items() if not o.releasing)

    # ------------------------------------------------------------------ the tick

    def tick(self) -> None:
        breaker = self.lime.breaker if self.lime is not None else None
        lime_down = breaker is not None and breaker.is_open
        if breaker is not None and lime_down and breaker.probe_due():
            self._probe_lime()
        reserved = self.locks.reserved()
        for owned in list(self.owned.values()):
            if owned.channel is not None and not owned.channel.is_open:
                log.warning("partition_channel_closed", partition=owned.index, worker=self.name)
                owned.channel = None
            if owned.index in reserved and not owned.releasing:
                log.info("partition_reserved_by_migration", partition=owned.index, worker=self.name)
                self.release(owned)
            if owned.releasing and self.lane(owned.index).idle:
                self.let_go(owned)
        self._follow_lime(lime_down)
        if not lime_down:
            self._rebalance(reserved)

    def _follow_lime(self, lime_down: bool) -> None:
        if lime_down and not self.lime_down:
            log.warning("lime_down_pausing", worker=self.name, partitions=len(self.owned))
        elif not lime_down and self.lime_down:
            log.info("lime_back_resuming", worker=self.name, partitions=len(self.owned))
        self.lime_down = lime_down
        for owned in self.owned.values():
            if lime_down and owned.channel is not None:
                self.close_channel(owned)
            elif not lime_down and owned.channel is None and not owned.releasing:
                owned.channel = self.subscribe(owned)

    def _rebalance(self, reserved: set[int]) -> None:
        workers = max(1, self.locks.consumers(self.topology.presence_queue) or 1)
        fair = math.ceil(self.topology.partitions / workers)
        holding = [o for o in self.owned.values() if not o.releasing]
        if len(holding) > fair:
            for owned in sorted(holding, key=lambda o: o.index)[fair:]:
                log.info("partition_handover", partition=owned.index, worker=self.name, fair_share=fair)
                self.release(owned)
            return
        wanted = fair - len(holding)
        candidates = [p for p in range(self.topology.partitions) if p not in self.owned and p not in reserved]
        random.shuffle(candidates)
        for partition in candidates:
            if wanted <= 0:
                break
            if self._take(partition):
                wanted -= 1

    def _take(self, partition: int) -> bool:
        if not self.locks.take(partition):
            return False  # another worker holds it
        owned = Owned(partition, None, IdCache(), needs_grace=not self.locks.handed_over_cleanly(partition))
        with self._lock:
            self.owned[partition] = owned
        owned.channel = self.subscribe(owned)
        log.info("partition_taken", partition=partition, worker=self.name)
        return True

    # ------------------------------------------------------------------ letting go

    def release(self, owned: Owned) -> None:
        """Stop taking its messages; it is let go once its lane is idle."""
        owned.releasing = True
        self.lane(owned.index).drop_queued()

    def let_go(self, owned: Owned) -> None:
        """The hand-over: channel closed (unacked messages return in order), then the
        marker and the lock."""
        self.close_channel(owned)
        self.locks.hand_over(owned.index)
        with self._lock:
            self.owned.pop(owned.index, None)
        log.info("partition_released", partition=owned.index, worker=self.name)

    def close_channel(self, owned: Owned) -> None:
        self.send_acks()  # a lane seen idle has queued its last ack: it goes before the channel closes
        channel, owned.channel = owned.channel, None
        self.lane(owned.index).drop_queued()
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except Exception:
                pass

    def release_all(self) -> None:
        for owned in list(self.owned.values()):
            self.release(owned)

    def let_go_idle(self) -> bool:
        """Let go of every released partition whose lane is idle; True when none is left."""
        for owned in list(self.owned.values()):
            if owned.releasing and self.lane(owned.index).idle:
                self.let_go(owned)
        return not self.owned

    def _probe_lime(self) -> None:
        """Ask Lime whether it is back, without blocking the connection's thread."""
        lime = self.lime
        assert lime is not None

        def probe() -> None:
            try:
                lime.probe(self.probe_limetype)
            except Exception:
                pass

        threading.Thread(target=probe, name="lime-probe", daemon=True).start()
