"""Apply one BFUS change to Lime: upsert by the configured key, soft delete on
``deleted`` (never a Lime DELETE). Raises :class:`PermanentFailure` for what will not
succeed by trying again; lets :class:`shared.lime.LimeUnavailable` through for what
will."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from shared.envelope import Envelope
from shared.jumplinks import JumpLinks
from shared.lime import LimeClient, LimeRejected, option_key
from shared.mapping import MappingError, ObjectMapper, is_personal

IDENTITY_FIELDS = ("orgno", "socialsecurityno")  # BFUS fields that name who a customer is


class PermanentFailure(Exception):
    """``error`` is the readable text for the failed-message record (it may quote BFUS
    values); ``detail`` is what may go into a log line: never a value."""

    def __init__(self, reason: str, error: str, detail: str = "", company_id: int | None = None,
                 customerno: str = ""):
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error
        self.detail = detail
        self.company_id = company_id
        self.customerno = customerno  # the customer it concerns, when the message did not say (a swept event)


@dataclass(frozen=True)
class Outcome:
    outcome: str  # applied | unchanged | skipped_not_configured | skipped_stale | skipped_duplicate
    limetype: str = ""
    object_id: int | None = None
    company_id: int | None = None
    read: bool = False  # "unchanged" judged from Lime's object as read, not from the worker's own write


@dataclass(frozen=True)
class Known:
    """What the worker knows of a Lime object: its id, the id of the last BFUS message
    applied to it (the watermark, when the mapping keeps one), and a digest of the
    values it holds, when the worker wrote them itself. ``seen``: the object as just
    read from Lime (never kept in the cache)."""

    id: int
    watermark: int | None
    digest: bytes | None = None
    seen: dict[str, Any] | None = field(default=None, compare=False, repr=False)


def digest(values: dict[str, Any], leave_out: str | None = None) -> bytes:
    """A short fingerprint of the values a write sends (``leave_out``: the watermark,
    which changes with every message)."""
    items = sorted((k, v) for k, v in values.items() if k != leave_out)
    return hashlib.blake2b(json.dumps(items, default=str, ensure_ascii=False).encode(), digest_size=16).digest()


class IdCache:
    """(limetype, BFUS key) -> Known, bounded. One per partition: the partition's
    owner is the only writer of its objects, so what it wrote stays true until it lets
    the partition go (a new owner starts with an empty cache)."""

    def __init__(self, size: int = 50_000):
        self.size = size
        self._data: OrderedDict[tuple[str, str], Known] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, limetype: str, key: str) -> Known | None:
        with self._lock:
            found = self._data.get((limetype, key))
            if found is not None:
                self._data.move_to_end((limetype, key))
            return found

    def put(self, limetype: str, key: str, known: Known) -> None:
        if known.seen is not None:
            known = replace(known, seen=None)
        with self._lock:
            self._data[(limetype, key)] = known
            self._data.move_to_end((limetype, key))
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def drop(self, limetype: str, key: str) -> None:
        with self._lock:
            self._data.pop((limetype, key), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)


class Applier:
    """Stateless but for the Lime client: the caller passes the partition's cache."""

    def __init__(self, lime: LimeClient, mappers: dict[str, ObjectMapper], exclude_personal: bool = False,
                 link_by_identity: bool = False, links: JumpLinks | None = None, skip_unchanged: bool = False):
        """``link_by_identity`` (companies are created in BFUS from Lime): a customer
        Lime has no company for by number may be one just created from Lime whose
        number is not written back yet; see :meth:`_unlinked`. ``links``: the jump
        links every write sets (docs/jump.md), None for none. ``skip_unchanged``: no
        write when Lime already holds the message's values (outcome ``unchanged``)."""
        self.lime = lime
        self.mappers = mappers
        self.exclude_personal = exclude_personal
        self.link_by_identity = link_by_identity
        self.links = links
        self.skip_unchanged = skip_unchanged

    def apply(self, env: Envelope, cache: IdCache) -> Outcome:
        mapper = self.mappers.get(env.objecttype)
        if mapper is None:
            return Outcome("skipped_not_configured")
        known = self.lookup(mapper, env.key, cache)
        if known is None and self.link_by_identity and env.objecttype == "customer" and env.operation != "deleted":
            known = self._unlinked(mapper, env, cache)
        company_id = known.id if known is not None and mapper.limetype == "company" else None
        if known is not None and known.watermark is not None and env.id <= known.watermark:
            # Staleness guard: Lime already has this message's state or a newer one.
            outcome = "skipped_duplicate" if env.id == known.watermark else "skipped_stale"
            return Outcome(outcome, mapper.limetype, known.id, company_id)
        values = self._values(mapper, env, cache)
        company_id = company_id or self._company_id(mapper, env, values, cache)
        if known is None and env.operation == "deleted" and not env.data:
            # Deleted before it ever reached Lime, and no snapshot to keep: nothing to mark.
            return Outcome("applied", mapper.limetype, None, company_id)
        if known is not None and self.skip_unchanged and self._holds(mapper, known, values):
            # Lime has these values already: the watermark moves on in the cache only.
            cache.put(mapper.limetype, env.key, Known(known.id, env.id if mapper.spec.watermark else None,
                                                      self._digest(mapper, known.id, values)))
            return Outcome("unchanged", mapper.limetype, known.id, company_id, read=known.seen is not None)
        object_id = self._write(mapper, env, known, values, cache)
        if mapper.limetype == "company":
            company_id = object_id
        return Outcome("applied", mapper.limetype, object_id, company_id)

    def _digest(self, mapper: ObjectMapper, object_id: int, values: dict[str, Any]) -> bytes:
        """The digest of what a write of ``values`` leaves in Lime (the link included)."""
        return digest({**values, **self._link(mapper, object_id)}, mapper.spec.watermark)

    def _holds(self, mapper: ObjectMapper, known: Known, values: dict[str, Any]) -> bool:
        """Whether Lime holds ``values`` (and the link) already: by the digest of the
        worker's own last write, or by the object as just read."""
        if known.digest is not None:
            return known.digest == self._digest(mapper, known.id, values)
        if known.seen is None:
            return False
        wanted = {**values, **self._link(mapper, known.id)}
        return all(option_key(known.seen.get(p)) == v for p, v in wanted.items() if p != mapper.spec.watermark)

    def _values(self, mapper: ObjectMapper, env: Envelope, cache: IdCache) -> dict[str, Any]:
        try:
            values = mapper.map(env.data)
        except MappingError as err:
            detail = f"field '{err.field}': {err.problem}"
            personal = self.exclude_personal and is_personal(env.objecttype, err.field, env.data)
            raise PermanentFailure("mapping_error", detail if personal else str(err), detail) from None
        values.update(self._relations(mapper, env, cache))
        if env.operation == "deleted":
            values.update(mapper.soft_delete_values(env.timestamp.date()))
        values[mapper.key_property] = env.key
        if mapper.spec.watermark:
            values[mapper.spec.watermark] = env.id
        return values

    def _relations(self, mapper: ObjectMapper, env: Envelope, cache: IdCache) -> dict[str, int | None]:
        """belongsto ids of the related objects, found by their BFUS keys (a deleted
        object whose parent Lime lacks keeps the relation empty)."""
        ids: dict[str, int | None] = {}
        for prop, key in mapper.relation_keys(env.data).items():
            if key is None:
                ids[prop] = None
                continue
            target = self.mappers[mapper.relations[prop].objecttype]
            known = self.lookup(target, key, cache)
            if known is None and env.operation == "deleted":
                # Its parent never reached Lime or went with it: the mark needs no relation.
                ids[prop] = None
                continue
            if known is None:
                raise PermanentFailure(
                    "missing_related",
                    f"{env.objecttype} {env.key} refers to {target.objecttype} {key}, which Lime does not have yet "
                    f"(no {target.limetype} with {target.key_property}={key}); requeue it once that exists.",
                    f"{prop} -> {target.objecttype} not in Lime",
                )
            ids[prop] = known.id
        return ids

    def _company_id(self, mapper: ObjectMapper, env: Envelope, values: dict[str, Any], cache: IdCache) -> int | None:
        """The Lime company of the message's customer, when known without a call."""
        for prop, rule in mapper.relations.items():
            if rule.objecttype == "customer" and values.get(prop):
                return values[prop]
        customers = self.mappers.get("customer")
        if customers is not None and env.customerno:
            known = cache.get(customers.limetype, env.customerno)
            return known.id if known else None
        return None

    def lookup(self, mapper: ObjectMapper, key: str, cache: IdCache) -> Known | None:
        """The Lime object with this BFUS key: from the cache, else one list call."""
        known = cache.get(mapper.limetype, key)
        if known is not None:
            return known
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
        watermark = found[0].get(mapper.spec.watermark) if mapper.spec.watermark else None
        known = Known(found[0]["_id"], watermark if isinstance(watermark, int) else None, seen=found[0])
        cache.put(mapper.limetype, key, known)
        return known

    def _unlinked(self, mapper: ObjectMapper, env: Envelope, cache: IdCache) -> Known | None:
        """The one company without a customer number whose organisation or personal
        identity number is this customer's: BFUS's own message about a customer the
        integration created from that company, overtaking the write-back of its
        number. Linking it here keeps Lime from getting a second company. The
        write-back may land between the look-up by number and this one, so a company
        that has this very number by now is the one too."""
        for bfus_field in IDENTITY_FIELDS:
            value = env.data.get(bfus_field)
            rule = mapper.fields.get(bfus_field)
            if not value or rule is None:
                continue
            found = [o for o in self.lime.find(mapper.limetype, rule.property, value)
                     if o.get(mapper.key_property) in (None, "", env.key)]
            if len(found) == 1:
                watermark = found[0].get(mapper.spec.watermark) if mapper.spec.watermark else None
                known = Known(found[0]["_id"], watermark if isinstance(watermark, int) else None, seen=found[0])
                cache.put(mapper.limetype, env.key, known)
                return known
        return None

    def _write(self, mapper: ObjectMapper, env: Envelope, known: Known | None, values: dict[str, Any],
               cache: IdCache) -> int:
        watermark = env.id if mapper.spec.watermark else None
        try:
            if known is not None:
                try:
                    self.lime.update(mapper.limetype, known.id, {**values, **self._link(mapper, known.id)})
                    cache.put(mapper.limetype, env.key, Known(known.id, watermark,
                                                              self._digest(mapper, known.id, values)))
                    return known.id
                except LimeRejected as err:
                    if err.status != 404:
                        raise
                    cache.drop(mapper.limetype, env.key)  # removed in Lime since we cached it
            return self._create(mapper, env, values, cache)
        except LimeRejected as err:
            raise PermanentFailure(
                "lime_rejected", f"Lime refused the {mapper.limetype}: {err.message}", f"Lime {err.status} {err.code}"
            ) from None

    def _link(self, mapper: ObjectMapper, object_id: int) -> dict[str, str]:
        return self.links.values(mapper.limetype, object_id) if self.links is not None else {}

    def _create(self, mapper: ObjectMapper, env: Envelope, values: dict[str, Any], cache: IdCache) -> int:
        """Create the object. Its jump link names its Lime id, known only once it
        exists, so a linked limetype takes a second call: the link together with the
        watermark. Until that lands the object has no watermark, so a retry or a
        redelivery after a crash between the two calls finds it unmarked and writes
        the message again, link included."""
        watermark = env.id if mapper.spec.watermark else None
        if self.links is None or not self.links.property_of(mapper.limetype):
            created = self.lime.create(mapper.limetype, values)
            cache.put(mapper.limetype, env.key, Known(created["_id"], watermark,
                                                      self._digest(mapper, created["_id"], values)))
            return created["_id"]
        created = self.lime.create(mapper.limetype, {k: v for k, v in values.items() if k != mapper.spec.watermark})
        cache.put(mapper.limetype, env.key, Known(created["_id"], None))
        second: dict[str, Any] = dict(self._link(mapper, created["_id"]))
        if mapper.spec.watermark:
            second[mapper.spec.watermark] = env.id
        self.lime.update(mapper.limetype, created["_id"], second)
        cache.put(mapper.limetype, env.key, Known(created["_id"], watermark,
                                                  self._digest(mapper, created["_id"], values)))
        return created["_id"]
