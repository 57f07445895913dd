"""Lanes: one thread per queue applying that queue's deliveries strictly in order.

Coalescing (worker.coalesce): when the delivery at the head of a lane is about an
object a later delivery in the lane is also about (with a newer message id), and the
handler lets it wait (``may_defer``: the object is in Lime already), it is set aside
unacked instead of applied. When the newest of the object reaches the head, it is
applied with the ones set aside: they are logged as superseded once its write has
landed, and all are acked together. A lane that loses its deliveries (the connection
or the partition went) forgets the set-aside ones too: the broker redelivers them."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Protocol

from shared.logs import get_logger
from worker.handle import Delivery

log = get_logger(component="worker")


class Folding(Protocol):
    """What a lane asks the message handler when it coalesces."""

    def object_of(self, delivery: Delivery) -> tuple[str, str, int] | None: ...

    def may_defer(self, delivery: Delivery) -> bool: ...


class Lane:
    """Applies one queue's deliveries, in order, on its own thread. ``work(delivery,
    superseded)`` gets each delivery with the older ones of its object that waited
    for it (empty unless ``folding`` is given)."""

    def __init__(self, name: str, work: Callable[[Delivery, list[Delivery]], None], folding: Folding | None = None,
                 on_drop: Callable[[int], None] = lambda count: None):
        """``on_drop(count)``: deliveries forgotten unstarted (they will not be worked)."""
        self.name = name
        self._work = work
        self._folding = folding
        self._on_drop = on_drop
        self._items: collections.deque[Delivery] = collections.deque()
        self._waiting: dict[tuple[str, str], list[Delivery]] = {}  # set aside for a newer one of their object
        # Per object in the queue (when folding): how many of its deliveries wait, and the newest message id.
        self._queued: dict[tuple[str, str], list[int]] = {}
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"lane:{name}", daemon=True)
        self._thread.start()

    def put(self, delivery: Delivery) -> None:
        found = self._folding.object_of(delivery) if self._folding is not None else None
        with self._cond:
            self._items.append(delivery)
            if found is not None:
                entry = self._queued.setdefault(found[:2], [0, found[2]])
                entry[0] += 1
                entry[1] = max(entry[1], found[2])
            self._cond.notify()

    def drop_queued(self) -> int:
        """Forget deliveries not yet started (they stay unacked and come back)."""
        with self._cond:
            dropped = len(self._items) + sum(len(w) for w in self._waiting.values())
            self._items.clear()
            self._waiting.clear()
            self._queued.clear()
        if dropped:
            self._on_drop(dropped)
        return dropped

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._busy and not self._items and not self._waiting

    def close(self) -> None:
        self.drop_queued()
        with self._cond:
            self._closed = True
            self._cond.notify()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                delivery = self._items.popleft()
                self._busy = True
            try:
                superseded = self._fold(delivery)
                if superseded is not None:
                    self._work(delivery, superseded)
            except Exception:  # a bug must not kill the lane; the message comes back
                log.exception("lane_error", lane=self.name)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _fold(self, delivery: Delivery) -> list[Delivery] | None:
        """The older deliveries ``delivery`` covers, or None when it waits itself for a
        newer delivery of its object queued behind it (set aside)."""
        folding = self._folding
        found = folding.object_of(delivery) if folding is not None else None
        if folding is None or found is None:
            return []
        key, message_id = found[:2], found[2]
        with self._cond:  # one look: a drop_queued meanwhile would strand a delivery set aside after it
            entry = self._queued.get(key)
            if entry is not None:
                entry[0] -= 1
                if entry[0] <= 0:
                    del self._queued[key]
            if entry is not None and entry[0] > 0 and entry[1] > message_id and folding.may_defer(delivery):
                self._waiting.setdefault(key, []).append(delivery)
                return None
            return self._waiting.pop(key, [])
