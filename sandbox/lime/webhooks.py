"""Webhooks in the Lime stand-in, as Lime has them (contract.md §3):

- subscriptions to ``<limetype>.new | update | delete | restore`` events with a target
  URL and a secret, kept in memory (the stand-in's process is their lifetime);
- a delivery is ``POST target_url`` with ``{"event", "body": {"id", "limetype",
  "values", "original_values"}}`` (``delete``: id and limetype only), signed v1
  (``X-Lime-Signature: sha256=<hex HMAC-SHA256 of the body>``) or v2 (``v2=<hex>``
  over ``v2:{delivery id}:{unix time}:{sha256 hex of the body}``, with
  ``X-Lime-Delivery-Id`` and ``X-Lime-Delivery-Timestamp``);
- a delivery not answered 2xx is tried again after ``retry_base * 2^n`` seconds while
  later ones go ahead (so order is not kept), five tries in all; then it is dropped,
  ``webhook.msg_dropped`` fires, and the subscription is disabled unless it says
  ``dont_disable_on_failed_delivery``;
- faults for tests: a share of deliveries lost (never sent) or sent twice
  (``lose_rate``, ``duplicate_rate``), or, to choose which, the next few deliveries,
  of one object's events or of any (``lose_next``, ``duplicate_next``).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import requests

EVENTS = ("new", "update", "delete", "restore")
SIGNATURES = ("v1", "v2")


def signature_v1(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_v2(secret: str, delivery_id: str, timestamp: int, body: bytes) -> str:
    signed = f"v2:{delivery_id}:{timestamp}:{hashlib.sha256(body).hexdigest()}".encode()
    return "v2=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


@dataclass
class Subscription:
    id: int
    events: list[str]
    target_url: str
    secret: str
    enabled: bool = True
    dont_disable_on_failed_delivery: bool = False
    signature: str = "v2"

    def public(self) -> dict[str, Any]:
        """As the API shows it: never the secret."""
        return {k: v for k, v in asdict(self).items() if k != "secret"}


@dataclass(order=True)
class Delivery:
    due: float
    seq: int
    subscription_id: int = field(compare=False)
    event: str = field(compare=False)
    body: bytes = field(compare=False)
    id: str = field(default_factory=lambda: str(uuid.uuid4()), compare=False)
    tries: int = field(default=0, compare=False)


class Webhooks:
    def __init__(self, retry_base: float = 10.0, tries: int = 5, seed: int | None = None):
        self.retry_base = retry_base
        self.tries = tries
        self.lose_rate = 0.0  # share of deliveries never sent (a test's lost webhook)
        self.duplicate_rate = 0.0  # share sent twice
        # Deliveries still to lose / send twice, by the id of the object the event is
        # about (None: whatever the event); see lose_next and duplicate_next.
        self._lose_next: Counter[int | None] = Counter()
        self._duplicate_next: Counter[int | None] = Counter()
        self._random = random.Random(seed)
        self._subscriptions: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._queue: list[Delivery] = []
        self._sending = 0
        self._cond = threading.Condition()
        self._stop = False
        self.stats = {"delivered": 0, "failed_tries": 0, "dropped": 0, "lost": 0, "duplicated": 0}
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="lime-webhooks", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, events: list[str], target_url: str, secret: str, signature: str = "v2",
                  dont_disable: bool = False) -> Subscription:
        with self._cond:
            sub = Subscription(next(self._ids), events, target_url, secret, True, dont_disable, signature)
            self._subscriptions[sub.id] = sub
            return sub

    def find(self, events: str | None = None, target_url: str | None = None,
             enabled: bool | None = None) -> list[Subscription]:
        with self._cond:
            return [s for s in self._subscriptions.values()
                    if (events is None or set(events.split(",")) <= set(s.events))
                    and (target_url is None or s.target_url == target_url)
                    and (enabled is None or s.enabled == enabled)]

    def get(self, sub_id: int) -> Subscription | None:
        with self._cond:
            return self._subscriptions.get(sub_id)

    def update(self, sub_id: int, changes: dict[str, Any]) -> Subscription | None:
        with self._cond:
            sub = self._subscriptions.get(sub_id)
            if sub is not None:
                for name, value in changes.items():
                    setattr(sub, name, value)
            return sub

    def remove(self, sub_id: int) -> bool:
        with self._cond:
            return self._subscriptions.pop(sub_id, None) is not None

    # ------------------------------------------------------------------ faults

    def lose_next(self, count: int, object_id: int | None = None) -> None:
        """Lose the next ``count`` deliveries of events about the object ``object_id``
        (None: of any event): never sent, as Lime drops one. Replaces what was asked
        before for that object; 0 takes it back."""
        self._set_next(self._lose_next, count, object_id)

    def duplicate_next(self, count: int, object_id: int | None = None) -> None:
        """Send each of the next ``count`` deliveries of events about ``object_id`` (None:
        of any event) twice. Replaces what was asked before for that object."""
        self._set_next(self._duplicate_next, count, object_id)

    def pending_faults(self) -> dict[str, int]:
        """Deliveries still to lose and to send twice, over every object."""
        with self._cond:
            return {"lose_next": sum(self._lose_next.values()), "duplicate_next": sum(self._duplicate_next.values())}

    def _set_next(self, counts: Counter[int | None], count: int, object_id: int | None) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError("count must be a whole number >= 0")
        with self._cond:
            if count:
                counts[object_id] = count
            else:
                counts.pop(object_id, None)

    @staticmethod
    def _take(counts: Counter[int | None], object_id: int | None) -> bool:
        """Use one of the deliveries asked for (the object's own first); under the lock."""
        for key in (object_id, None) if object_id is not None else (None,):
            if counts[key] > 0:
                counts[key] -= 1
                if not counts[key]:
                    del counts[key]
                return True
            counts.pop(key, None)
        return False

    # ------------------------------------------------------------------ events

    def wants(self, event: str) -> bool:
        """Whether an enabled subscription takes ``event`` (else :meth:`fire` would
        queue nothing: the caller need not build the body)."""
        with self._cond:
            return any(sub.enabled and event in sub.events for sub in self._subscriptions.values())

    def fire(self, event: str, body: dict[str, Any]) -> int:
        """Queue a delivery of ``event`` to every enabled subscription of it."""
        payload = json.dumps({"event": event, "body": body}, ensure_ascii=False).encode()
        object_id = body.get("id") if isinstance(body.get("id"), int) else None
        queued = 0
        with self._cond:
            for sub in self._subscriptions.values():
                if not sub.enabled or event not in sub.events:
                    continue
                if self._take(self._lose_next, object_id) or self._random.random() < self.lose_rate:
                    self.stats["lost"] += 1
                    continue
                twice = self._take(self._duplicate_next, object_id) or self._random.random() < self.duplicate_rate
                copies = 2 if twice else 1
                self.stats["duplicated"] += copies - 1
                for _ in range(copies):
                    heapq.heappush(self._queue, Delivery(time.monotonic(), next(self._seq), sub.id, event, payload))
                    queued += 1
            self._cond.notify()
        return queued

    def pending(self) -> int:
        """Deliveries waiting or being sent."""
        with self._cond:
            return len(self._queue) + self._sending

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(5)

    # ------------------------------------------------------------------ delivering

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._queue or self._queue[0].due > time.monotonic()):
                    self._cond.wait(None if not self._queue else max(0.0, self._queue[0].due - time.monotonic()))
                if self._stop:
                    return
                delivery = heapq.heappop(self._queue)
                sub = self._subscriptions.get(delivery.subscription_id)
                self._sending = 1
            try:
                if sub is None or not sub.enabled:
                    continue
                if self._send(sub, delivery):
                    self.stats["delivered"] += 1
                else:
                    self._failed(sub, delivery)
            finally:
                with self._cond:
                    self._sending = 0

    def _send(self, sub: Subscription, delivery: Delivery) -> bool:
        headers = {"Content-Type": "application/json", "User-Agent": "lime-crm-standin-webhooks"}
        if sub.signature == "v1":
            headers["X-Lime-Signature"] = signature_v1(sub.secret, delivery.body)
        else:
            stamp = int(time.time())
            headers.update({"X-Lime-Signature": signature_v2(sub.secret, delivery.id, stamp, delivery.body),
                            "X-Lime-Delivery-Id": delivery.id, "X-Lime-Delivery-Timestamp": str(stamp)})
        try:
            response = self._session.post(sub.target_url, data=delivery.body, headers=headers, timeout=5)
        except requests.RequestException:
            return False
        return response.status_code < 300

    def _failed(self, sub: Subscription, delivery: Delivery) -> None:
        delivery.tries += 1
        self.stats["failed_tries"] += 1
        with self._cond:
            if delivery.tries < self.tries:
                delivery.due = time.monotonic() + self.retry_base * 2 ** (delivery.tries - 1)
                heapq.heappush(self._queue, delivery)
                self._cond.notify()
                return
            self.stats["dropped"] += 1
            if not sub.dont_disable_on_failed_delivery:
                sub.enabled = False
        self.fire("webhook.msg_dropped", {"subscription": sub.id, "event": delivery.event,
                                          "delivery_id": delivery.id})
