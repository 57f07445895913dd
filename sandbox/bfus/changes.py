"""Changes in the BFUS stand-in: seeding customers, and making a stream of creates,
updates and deletes, each written to the register with its change message."""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sandbox.bfus.store import BfusStore, now
from sandbox.bfus.swedish import SwedishData, SwedishFacilities

FIRST_CUSTOMERNO = 100001
FIRST_FACILITYNO = 735999100000000001  # Swedish facility ids are 18 digits starting 735999
FIRST_CONTRACTNO = 5000001
FIRST_METERNO = 70000001


@dataclass
class ChangeMix:
    """Relative weights of operations on an existing customer."""

    update: float = 0.9
    delete: float = 0.1


@dataclass
class ChangeReport:
    queued: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    first_id: int | None = None
    last_id: int | None = None
    ids: list[int] = field(default_factory=list)

    def add(self, operation: str, queue_id: int) -> None:
        self.queued += 1
        setattr(self, operation, getattr(self, operation) + 1)
        self.first_id = self.first_id or queue_id
        self.last_id = queue_id
        self.ids.append(queue_id)


class ChangeMaker:
    def __init__(self, store: BfusStore, seed: int | None = None):
        self.store = store
        self.rng = random.Random(seed)
        self.data = SwedishData(self.rng)
        self.facilities = SwedishFacilities(self.rng)
        self._lock = threading.Lock()

    def new_customerno(self) -> str:
        return str(self.store.next_number("customerno", FIRST_CUSTOMERNO))

    def customer_objects(self, customer: dict) -> list[tuple[str, str, dict]]:
        """A new customer's facilities (1-2), a contract per facility and a meter per
        metered facility, as (objecttype, key, data)."""
        today = now().date()
        customerno = customer["customerno"]
        objects: list[tuple[str, str, dict[str, Any]]] = []
        for _ in range(self.rng.choice((1, 1, 1, 2))):
            facilityno = str(self.store.next_number("facilityno", FIRST_FACILITYNO))
            address = {k: customer[k] for k in ("street", "zipcode", "city")} if not objects else self.data.address()
            objects.append(("facility", facilityno, self.facilities.facility(facilityno, customerno, address, today)))
            contractno = str(self.store.next_number("contractno", FIRST_CONTRACTNO))
            contract = self.facilities.contract(contractno, customerno, facilityno, today)
            objects.append(("contract", contractno, contract))
            if contract["product"] != "broadband":
                meterno = str(self.store.next_number("meterno", FIRST_METERNO))
                objects.append(("meter", meterno,
                                self.facilities.meter(meterno, facilityno, customerno, contract["product"], today)))
        return objects

    def seed_customers(self, count: int) -> list[str]:
        """Customers, with their facilities, contracts and meters, that BFUS had
        before the integration started (no change messages)."""
        keys = []
        today = now().date()
        for _ in range(count):
            key = self.new_customerno()
            customer = self.data.customer(key, today)
            self.store.put_silently("customer", key, key, customer)
            for objecttype, okey, data in self.customer_objects(customer):
                self.store.put_silently(objecttype, okey, key, data)
            keys.append(key)
        return keys

    def make(self, count: int, customers: int | None = None, mix: ChangeMix | None = None,
             rate: float | None = None, stop: threading.Event | None = None,
             objecttypes: tuple[str, ...] = ("customer",)) -> ChangeReport:
        """Queue ``count`` change messages about a pool of ``customers`` customer
        numbers (existing ones first, then new ones; default: one per ten changes).
        With more ``objecttypes`` than customer, a new customer brings its
        facilities, contracts and meters, updates touch them too, and a deleted
        customer's objects are deleted first. ``rate`` limits changes per second."""
        mix = mix or ChangeMix()
        report = ChangeReport()
        pending: collections.deque[Change] = collections.deque()
        with self._lock:
            pool = self._pool(customers or max(1, count // 10))
            for _ in range(count):
                if stop is not None and stop.is_set():
                    break
                if rate:
                    time.sleep(max(0.0, 1.0 / rate))
                change = pending.popleft() if pending else self._next_change(pool, mix, objecttypes, pending)
                queue_id = self.store.change(change.objecttype, change.operation, change.key, change.customerno,
                                             change.data)
                report.add(change.operation, queue_id)
        return report

    def _pool(self, size: int) -> list[str]:
        pool = self.store.keys("customer")[:size]
        while len(pool) < size:
            pool.append(self.new_customerno())
        return pool

    def _next_change(self, pool: list[str], mix: ChangeMix, objecttypes: tuple[str, ...],
                     pending: collections.deque[Change]) -> Change:
        today = now().date()
        while True:
            key = self.rng.choice(pool)
            current = self.store.get("customer", key)
            if current is None:
                data = self.data.customer(key, today)
                pending.extend(self._children_created(data, objecttypes))
                return Change("customer", "created", key, key, data)
            if current["deleted"]:
                pool.remove(key)
                if not pool:
                    pool.append(self.new_customerno())
                continue
            children = [c for c in self.store.children(key) if c["objecttype"] in objecttypes]
            if self.rng.random() < mix.delete / (mix.delete + mix.update):
                order = {"meter": 0, "contract": 1, "facility": 2}
                children.sort(key=lambda c: order.get(c["objecttype"], 3))
                deletes = [Change(c["objecttype"], "deleted", c["key"], key, c["data"]) for c in children]
                deletes.append(Change("customer", "deleted", key, key, current["data"]))
                pending.extend(deletes[1:])
                return deletes[0]
            if children and self.rng.random() < 0.5:
                if "facility" in objecttypes and self.rng.random() < 0.15:
                    new = self._children_created(current["data"], objecttypes)
                    pending.extend(new[1:])
                    return new[0]
                child = self.rng.choice(children)
                data = self.facilities.change(child["objecttype"], child["data"], today)
                return Change(child["objecttype"], "updated", child["key"], key, data)
            data = self.data.change_customer(current["data"], today)
            return Change("customer", "updated", key, key, data)

    def _children_created(self, customer: dict, objecttypes: tuple[str, ...]) -> list[Change]:
        if objecttypes == ("customer",):
            return []
        return [Change(t, "created", k, customer["customerno"], d)
                for t, k, d in self.customer_objects(customer) if t in objecttypes]


@dataclass(frozen=True)
class Change:
    objecttype: str
    operation: str
    key: str
    customerno: str
    data: dict
