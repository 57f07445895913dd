"""Lanes: one thread per queue applying that queue's deliveries strictly in order."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from shared.logs import get_logger
from worker.handle import Delivery

log = get_logger(component="worker")


class Lane:
    """Applies one queue's deliveries, in order, on its own thread."""

    def __init__(self, name: str, work: Callable[[Delivery], None]):
        self.name = name
        self._work = work
        self._items: collections.deque[Delivery] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"lane:{name}", daemon=True)
        self._thread.start()

    def put(self, delivery: Delivery) -> None:
        with self._cond:
            self._items.append(delivery)
            self._cond.notify()

    def drop_queued(self) -> int:
        """Forget deliveries not yet started (they stay unacked and come back)."""
        with self._cond:
            dropped = len(self._items)
            self._items.clear()
            return dropped

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._busy and not self._items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
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
                self._work(delivery)
            except Exception:  # a bug must not kill the lane; the message comes back
                log.exception("lane_error", lane=self.name)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
