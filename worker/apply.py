"""Apply one BFUS change to Lime: upsert by the configured key, soft delete on
``deleted`` (never a Lime DELETE). Raises :class:`PermanentFailure` for what will not
succeed by trying again; lets :class:`shared.lime.LimeUnavailable` through for what
will."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from shared.envelope import Envelope
from shared.lime import LimeClient, LimeRejected
from shared.mapping import MappingError, ObjectMapper, is_personal


class PermanentFailure(Exception):
    """``error`` is the readable text for the failed-message record (it may quote BFUS
    values); ``detail`` is what may go into a log line: never a value."""

    def __init__(self, reason: str, error: str, detail: str = "", company_id: int | None = None):
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error
        self.detail = detail
        self.company_id = company_id


@dataclass(frozen=True)
class Outcome:
    outcome: str  # applied | skipped_not_configured | skipped_stale | skipped_duplicate
    limetype: str = ""
    object_id: int | None = None
    company_id: int | None = None


class IdCache:
    """(limetype, key) -> Lime id, bounded, shared by the worker's threads."""

    def __init__(self, size: int = 100_000):
        self.size = size
        self._data: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, limetype: str, key: str) -> int | None:
        with self._lock:
            found = self._data.get((limetype, key))
            if found is not None:
                self._data.move_to_end((limetype, key))
            return found

    def put(self, limetype: str, key: str, object_id: int) -> None:
        with self._lock:
            self._data[(limetype, key)] = object_id
            self._data.move_to_end((limetype, key))
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def drop(self, limetype: str, key: str) -> None:
        with self._lock:
            self._data.pop((limetype, key), None)


class Applier:
    def __init__(self, lime: LimeClient, mappers: dict[str, ObjectMapper], cache: IdCache | None = None,
                 exclude_personal: bool = False):
        self.lime = lime
        self.mappers = mappers
        self.ids = cache or IdCache()
        self.exclude_personal = exclude_personal

    def apply(self, env: Envelope) -> Outcome:
        mapper = self.mappers.get(env.objecttype)
        if mapper is None:
            return Outcome("skipped_not_configured")
        values = self._values(mapper, env)
        company_id = self._company_id(mapper, env, values)
        object_id = self.find_id(mapper, env.key)
        if object_id is None and env.operation == "deleted" and not env.data:
            # Deleted before it ever reached Lime, and no snapshot to keep: nothing to mark.
            return Outcome("applied", mapper.limetype, None, company_id)
        object_id = self._write(mapper, env.key, object_id, values)
        if mapper.limetype == "company":
            company_id = object_id
        return Outcome("applied", mapper.limetype, object_id, company_id)

    def _values(self, mapper: ObjectMapper, env: Envelope) -> dict[str, Any]:
        try:
            values = mapper.map(env.data)
        except MappingError as err:
            detail = f"field '{err.field}': {err.problem}"
            personal = self.exclude_personal and is_personal(env.objecttype, err.field, env.data)
            raise PermanentFailure("mapping_error", detail if personal else str(err), detail) from None
        values.update(self._relations(mapper, env))
        if env.operation == "deleted":
            values.update(mapper.soft_delete_values(env.timestamp.date()))
        values[mapper.key_property] = env.key
        if mapper.spec.watermark:
            values[mapper.spec.watermark] = env.id
        return values

    def _relations(self, mapper: ObjectMapper, env: Envelope) -> dict[str, int | None]:
        """belongsto ids of the related objects, found by their BFUS keys."""
        ids: dict[str, int | None] = {}
        for prop, key in mapper.relation_keys(env.data).items():
            if key is None:
                ids[prop] = None
                continue
            target = self.mappers[mapper.relations[prop].objecttype]
            ids[prop] = self.find_id(target, key)
            if ids[prop] is None:
                raise PermanentFailure(
                    "missing_related",
                    f"{env.objecttype} {env.key} refers to {target.objecttype} {key}, which Lime does not have yet "
                    f"(no {target.limetype} with {target.key_property}={key}); requeue it once that exists.",
                    f"{prop} -> {target.objecttype} not in Lime",
                )
        return ids

    def _company_id(self, mapper: ObjectMapper, env: Envelope, values: dict[str, Any]) -> int | None:
        """The Lime company of the message's customer, when known without a call."""
        for prop, rule in mapper.relations.items():
            if rule.objecttype == "customer" and values.get(prop):
                return values[prop]
        customers = self.mappers.get("customer")
        if customers is not None and env.customerno:
            return self.ids.get(customers.limetype, env.customerno)
        return None

    def find_id(self, mapper: ObjectMapper, key: str) -> int | None:
        cached = self.ids.get(mapper.limetype, key)
        if cached is not None:
            return cached
        found = self.lime.find(mapper.limetype, mapper.key_property, key)
        if len(found) > 1:
            ids = ", ".join(str(o["_id"]) for o in found)
            raise PermanentFailure(
                "ambiguous_key",
                f"Lime has several {mapper.limetype} objects with {mapper.key_property}={key} ({ids})",
                f"{len(found)} {mapper.limetype} objects share the key",
            )
        if not found:
            return None
        self.ids.put(mapper.limetype, key, found[0]["_id"])
        return found[0]["_id"]

    def _write(self, mapper: ObjectMapper, key: str, object_id: int | None, values: dict[str, Any]) -> int:
        try:
            if object_id is not None:
                try:
                    self.lime.update(mapper.limetype, object_id, values)
                    return object_id
                except LimeRejected as err:
                    if err.status != 404:
                        raise
                    self.ids.drop(mapper.limetype, key)  # removed in Lime since we cached it
            created = self.lime.create(mapper.limetype, values)
        except LimeRejected as err:
            raise PermanentFailure(
                "lime_rejected", f"Lime refused the {mapper.limetype}: {err.message}", f"Lime {err.status} {err.code}"
            ) from None
        self.ids.put(mapper.limetype, key, created["_id"])
        return created["_id"]
