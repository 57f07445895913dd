"""Migration: bring BFUS into Lime before (or beside) the live sync.

1. Read the objects from the BFUS API (paged), with the filters asked for.
2. Index what Lime already has, by key, with large list pages (not a lookup per object).
3. Partition by partition (the same partitions as the live sync), write each object:
   created when Lime has no object with its key, overwritten (a partial PUT of the
   mapped fields that differ) when it has, left alone when Lime already holds the
   same values or a newer BFUS state. Customers first, then facilities, contracts and
   meters, so relations point at objects that exist.

Every write carries the "last applied BFUS id" watermark the live sync uses: the
queue id of the BFUS page the object was read from (the page holds every change up
to it). While it writes a partition, the migration holds that partition in RabbitMQ
the way a worker does, having asked the workers to give it up, so live changes of
those customers wait in their queue and are applied after it, newest state last.

A checkpoint file records each object's outcome as it happens: a stopped migration
(Ctrl-C, crash, Lime outage) continues where it stopped and never writes an object
twice; failures never stop it and can be retried with ``--retry-failed``.

Memory stays small per object, whatever the size of the utility: the objects read from
BFUS wait in a temporary file until their partition is written (16 bytes each in
memory: where they are in it), and the Lime index keeps per object only its key, id,
watermark and an 8-byte digest of each compared property (``_LimeIndex``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import queue
import struct
import tempfile
import threading
import time
from array import array
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from migration.checkpoint import Checkpoint, identity_flags
from migration.errors import MigrationError, Stopped
from migration.hold import PartitionHold
from migration.metrics import objects
from migration.report import DONE, Report
from shared.bfus import BfusClient
from shared.config import BrokerConfig, WorkerConfig
from shared.envelope import partition_key
from shared.jumplinks import JumpLinks
from shared.lime import LimeClient, LimeRejected, LimeUnavailable, option_key
from shared.logs import get_logger
from shared.mapping import BFUS_KEY_FIELDS, MappingError, ObjectMapper
from shared.retry import Backoff, retry, until
from shared.topology import Topology

log = get_logger(component="migration")

ORDER = ("customer", "facility", "contract", "meter")  # parents before children


FOLDER = Path("bfus-lime-migration")  # where checkpoint and report go by default


@dataclass
class MigrationOptions:
    objecttypes: tuple[str, ...] | None = None  # None: every synced objecttype
    only_active_contract: bool = False
    changed_since: str | None = None
    customer_category: str | None = None
    limit: int | None = None
    dry_run: bool = False
    retry_failed: bool = False
    fresh: bool = False
    parallel: int = 4
    checkpoint: Path = FOLDER / "checkpoint.jsonl"
    report: Path = FOLDER / "report.json"
    lime_page_size: int = 500
    bfus_page_size: int = 1000
    coordinate: bool = True  # hold partitions in RabbitMQ while writing them

    def identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be continued."""
        return {
            "objecttypes": list(self.objecttypes) if self.objecttypes else None,
            "only_active_contract": self.only_active_contract,
            "changed_since": self.changed_since,
            "customer_category": self.customer_category,
            "limit": self.limit,
        }

    def flags(self) -> str:
        """The options that choose what is migrated, as command-line flags."""
        return identity_flags(self.identity()) + (" --dry-run" if self.dry_run else "") + (
            " --retry-failed" if self.retry_failed else "")


@dataclass
class Item:
    objecttype: str
    key: str
    customerno: str | None
    data: dict[str, Any]
    queueid: int


class _Spill:
    """The objects read from BFUS, by partition and objecttype, waiting in a temporary
    file (gone when closed, or with the process) until their partition is written.
    Memory keeps where each one is: 16 bytes an object."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile()
        self._size = 0
        self._at: dict[tuple[int, str], array] = {}  # (partition, objecttype) -> offset, length, offset, ...
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, partition: int, item: Item) -> None:
        line = json.dumps([item.objecttype, item.key, item.customerno, item.queueid, item.data],
                          ensure_ascii=False, separators=(",", ":")).encode()
        self._file.write(line)
        places = self._at.get((partition, item.objecttype))
        if places is None:
            places = self._at[(partition, item.objecttype)] = array("q")
        places.extend((self._size, len(line)))
        self._size += len(line)
        self.counts[item.objecttype] += 1

    def partitions(self) -> set[int]:
        return {partition for partition, _ in self._at}

    def items(self, partition: int, objecttype: str) -> Iterator[Item]:
        """The objects of ``objecttype`` in ``partition``, in the order BFUS listed them."""
        places = self._at.get((partition, objecttype))
        if places is None:
            return
        self._file.flush()
        fd = self._file.fileno()
        for i in range(0, len(places), 2):
            objecttype, key, customerno, queueid, data = json.loads(os.pread(fd, places[i + 1], places[i]))
            yield Item(objecttype, key, customerno, data, queueid)

    def close(self) -> None:
        self._file.close()


NO_WATERMARK = -(2**63)
_ENTRY = struct.Struct("<qq")  # id, watermark (NO_WATERMARK for none)
DIGEST = 8  # bytes per property: two different values share a digest with odds of 1 in 2**64


def _canonical(value: Any) -> str:
    """``value`` as text that is the same for two values exactly when they compare equal
    (``1 == 1.0 == True``; a dict's order does not count), the normalisation ``==``
    gave when the index kept the values themselves."""
    if value is None:
        return "n"
    if isinstance(value, bool | int):
        return f"i{int(value)}"
    if isinstance(value, float):
        return f"i{int(value)}" if value.is_integer() else f"f{value!r}"
    if isinstance(value, str):
        return "s" + value
    if isinstance(value, list | tuple):
        return "l" + json.dumps([_canonical(v) for v in value])
    if isinstance(value, dict):
        return "d" + json.dumps(sorted((str(k), _canonical(v)) for k, v in value.items()))
    return "r" + repr(value)


def _digest(value: Any) -> bytes:
    return hashlib.blake2b(_canonical(value).encode(), digest_size=DIGEST).digest()


class _LimeIndex:
    """The Lime objects of one limetype by key: per object its id, watermark and a
    digest of each property the migration compares (``layout``, in that order; a
    property the object lacks as None), packed in one bytes object. What ``_plan``
    compares is the same as comparing the values: an option as its key, a missing
    property as None."""

    def __init__(self, layout: Iterable[str]):
        self.layout = tuple(sorted(set(layout)))
        self._position = {p: i for i, p in enumerate(self.layout)}
        self._entries: dict[str, bytes] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: str, object_id: int, watermark: int | None, values: Mapping[str, Any]) -> None:
        """Index an object holding ``values`` (an option as its key, missing ones as None)."""
        self._entries[key] = (_ENTRY.pack(object_id, NO_WATERMARK if watermark is None else watermark)
                              + b"".join(_digest(values.get(p)) for p in self.layout))

    def get(self, key: str) -> tuple[int, int | None] | None:
        """(id, watermark) of the object with ``key``, None when Lime has none."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        object_id, watermark = _ENTRY.unpack_from(entry)
        return object_id, None if watermark == NO_WATERMARK else watermark

    def differing(self, key: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """Those of ``values`` the object with ``key`` does not hold (a property outside
        the layout counts as differing: written rather than missed)."""
        entry = self._entries[key]
        changed = {}
        for prop, value in values.items():
            i = self._position.get(prop)
            at = _ENTRY.size + DIGEST * i if i is not None else 0
            if i is None or entry[at:at + DIGEST] != _digest(value):
                changed[prop] = value
        return changed

    def written(self, key: str, object_id: int, watermark: int | None, values: Mapping[str, Any]) -> None:
        """The object with ``key`` now holds ``values`` (a new object: only them) and ``watermark``."""
        entry = self._entries.get(key)
        if entry is None:
            return self.put(key, object_id, watermark, values)
        digests = bytearray(entry[_ENTRY.size:])
        for prop, value in values.items():
            i = self._position.get(prop)
            if i is not None:
                digests[DIGEST * i:DIGEST * (i + 1)] = _digest(value)
        object_id, _ = _ENTRY.unpack_from(entry)
        self._entries[key] = _ENTRY.pack(object_id, NO_WATERMARK if watermark is None else watermark) + digests


class Migration:
    def __init__(self, broker: BrokerConfig, retries: WorkerConfig, options: MigrationOptions, lime: LimeClient,
                 bfus: BfusClient, mappers: dict[str, ObjectMapper], progress: Any = None,
                 stop: threading.Event | None = None, links: JumpLinks | None = None):
        """``retries``: the worker's backoff settings, used through Lime outages.
        ``links``: the jump links every write sets (docs/jump.md), None for none."""
        self.broker = broker
        self.retries = retries
        self.options = options
        self.lime = lime
        self.bfus = bfus
        self.mappers = mappers
        self.progress = progress
        self.links = links
        self.topology = Topology.from_config(broker)
        types = options.objecttypes or tuple(t for t in ORDER if t in mappers)
        unknown = [t for t in types if t not in mappers]
        if unknown:
            raise MigrationError(f"not synced by the mapping configuration: {', '.join(unknown)}")
        self.types = tuple(t for t in ORDER if t in types) + tuple(t for t in types if t not in ORDER)
        self.index: dict[str, _LimeIndex] = {}
        self.ambiguous: dict[str, set[str]] = defaultdict(set)
        self.stop = stop or threading.Event()  # set: finish the writes in flight, then stop
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def read(self) -> Iterator[Item]:
        """The objects to migrate, objecttype by objecttype, filtered as asked, as BFUS
        lists them (page by page: only the customer numbers a customer filter chose
        stay in memory)."""
        o = self.options
        customer_filter = o.only_active_contract or o.customer_category or o.limit
        chosen: set[str] | None = set() if customer_filter else None
        if "customer" in self.types or customer_filter:
            active = ({c["customerno"] for c, _ in self.bfus.list("contract", {"status": "active"}, o.bfus_page_size)}
                      if o.only_active_contract else None)
            taken = 0
            for c, q in self.bfus.list("customer", {"changedsince": o.changed_since, "category": o.customer_category},
                                       o.bfus_page_size):
                if active is not None and c["customerno"] not in active:
                    continue
                if o.limit is not None and taken >= o.limit:
                    break
                taken += 1
                if chosen is not None:
                    chosen.add(c["customerno"])
                if "customer" in self.types:
                    yield Item("customer", c["customerno"], c["customerno"], c, q)
        for objecttype in self.types:
            if objecttype == "customer":
                continue
            key_field = BFUS_KEY_FIELDS.get(objecttype, "key")
            for data, queueid in self.bfus.list(objecttype, {"changedsince": o.changed_since}, o.bfus_page_size):
                if chosen is not None and data.get("customerno") not in chosen:
                    continue
                yield Item(objecttype, str(data[key_field]), data.get("customerno"), data, queueid)

    # ------------------------------------------------------------------ Lime index

    def build_index(self) -> None:
        """Every Lime object of the limetypes involved, by key, with large pages."""
        limetypes = {self.mappers[t].limetype: self.mappers[t] for t in self.types}
        for objecttype in self.types:
            for rule in self.mappers[objecttype].relations.values():
                target = self.mappers[rule.objecttype]
                limetypes.setdefault(target.limetype, target)
        written = {self.mappers[t].limetype for t in self.types}
        for limetype, mapper in limetypes.items():
            props = set(mapper.properties) - {"_links"} | ({self._link_property(limetype)} - {None})
            # What _plan may compare: every property a write of this limetype sets (a
            # limetype only related to needs ids alone).
            extra = (mapper.key_property, mapper.fingerprint_property, self._link_property(limetype))
            layout = ({rule.property for rule in mapper.fields.values()} | set(mapper.relations)
                      | {p for p in extra if p is not None} if limetype in written else set())
            entries = _LimeIndex(layout)
            for obj in self.lime.iterate(limetype, {"_sort": "_id"}, self.options.lime_page_size, self._retrying):
                key = obj.get(mapper.key_property)
                if key in (None, ""):
                    continue
                key = str(key)
                if key in entries:
                    self.ambiguous[limetype].add(key)
                watermark = obj.get(mapper.spec.watermark) if mapper.spec.watermark else None
                entries.put(key, obj["_id"], watermark if isinstance(watermark, int) else None,
                            {p: option_key(v) for p, v in obj.items() if p in props})
            self.index[limetype] = entries

    # ------------------------------------------------------------------ writing

    def _plan(self, item: Item) -> tuple[str, dict[str, Any], int | None]:
        """(outcome, values to write, the Lime object's id) for one item; raises
        MappingError or a _Failure (reason, error) for a failure."""
        mapper = self.mappers[item.objecttype]
        if item.key in self.ambiguous[mapper.limetype]:
            raise _Failure("ambiguous_key", f"Lime has several {mapper.limetype} objects with "
                                            f"{mapper.key_property}={item.key}")
        values = mapper.map(item.data)
        for prop, key in mapper.relation_keys(item.data).items():
            if key is None:
                values[prop] = None
                continue
            target = self.mappers[mapper.relations[prop].objecttype]
            with self._lock:
                known = self.index[target.limetype].get(key)
            if known is None:
                raise _Failure("missing_related", f"{item.objecttype} {item.key} refers to {target.objecttype} "
                                                  f"{key}, which Lime does not have")
            values[prop] = known[0]
        values[mapper.key_property] = item.key
        index = self.index[mapper.limetype]
        with self._lock:
            existing = index.get(item.key)
        if existing is None:
            return "created", values, None
        object_id, watermark = existing
        if watermark is not None and watermark > item.queueid:
            return "newer_in_lime", {}, object_id
        values.update(self._link(mapper.limetype, object_id))
        with self._lock:
            changed = index.differing(item.key, values)
        return ("updated", changed, object_id) if changed else ("unchanged", {}, object_id)

    def _apply(self, item: Item, checkpoint: Checkpoint, report: Report) -> None:
        mapper = self.mappers[item.objecttype]
        try:
            outcome, values, existing = self._plan(item)
        except MappingError as err:
            return self._failed(item, "mapping_error", str(err), checkpoint, report)
        except _Failure as err:
            return self._failed(item, err.reason, err.error, checkpoint, report)
        if outcome == "created" and self.options.dry_run:
            with self._lock:  # children planned later in the dry run find their parent
                self.index[mapper.limetype].put(item.key, -1, None, values)
        if outcome in ("created", "updated") and not self.options.dry_run:
            if mapper.spec.watermark:
                values[mapper.spec.watermark] = item.queueid
            try:
                written = self._write(mapper, values, existing)
            except LimeRejected as err:
                return self._failed(item, "lime_rejected", f"Lime refused the {mapper.limetype}: {err.message}",
                                    checkpoint, report)
            with self._lock:
                self.index[mapper.limetype].written(item.key, written["_id"] if existing is None else existing,
                                                    item.queueid if mapper.spec.watermark else None, values)
        checkpoint.record(item, outcome)
        with self._lock:
            report.counts[item.objecttype][outcome] += 1
        objects().labels(item.objecttype, outcome).inc()

    def _write(self, mapper: ObjectMapper, values: dict[str, Any], existing: int | None) -> dict[str, Any]:
        """Each call retried through Lime outages on its own (a create is never repeated
        for a lost link write)."""
        limetype = mapper.limetype
        if existing is not None:
            return self._retrying(lambda: self.lime.update(limetype, existing, values))
        if not self._link_property(limetype):
            return self._retrying(lambda: self.lime.create(limetype, values))
        # The jump link names the Lime id, known once the object exists: a second call,
        # with the watermark, so that a stop between the two leaves an object without
        # one, which the next run finds and overwrites with its link.
        watermark = mapper.spec.watermark
        created = self._retrying(lambda: self.lime.create(limetype, {p: v for p, v in values.items()
                                                                     if p != watermark}))
        second = {**self._link(limetype, created["_id"]), **({watermark: values[watermark]} if watermark else {})}
        self._retrying(lambda: self.lime.update(limetype, created["_id"], second))
        values.update(second)
        return created

    def _link_property(self, limetype: str) -> str | None:
        return self.links.property_of(limetype) if self.links is not None else None

    def _link(self, limetype: str, object_id: int) -> dict[str, str]:
        """``{link property: jump address}`` for an object of ``limetype`` (``{}`` when none)."""
        return self.links.values(limetype, object_id) if self.links is not None else {}

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """``call`` through Lime outages and 429s; Stopped when the migration is asked to stop."""
        if self.stop.is_set():
            raise Stopped()
        backoff = Backoff(self.retries.retry_initial, self.retries.retry_max)

        def on_retry(err: Exception, pause: float) -> None:
            log.warning("lime_unavailable_waiting", attempt=backoff.attempt, pause=round(pause, 2), error=str(err))

        try:
            return retry(call, (LimeUnavailable,), backoff, until(self.stop), on_retry)
        except LimeUnavailable:
            raise Stopped() from None

    def _failed(self, item: Item, reason: str, error: str, checkpoint: Checkpoint, report: Report) -> None:
        checkpoint.record(item, "failed", reason, error)
        with self._lock:
            report.counts[item.objecttype]["failed"] += 1
            report.failures.append({"objecttype": item.objecttype, "key": item.key, "reason": reason, "error": error})
        objects().labels(item.objecttype, "failed").inc()

    # ------------------------------------------------------------------ the run

    def run(self) -> Report:
        """Hold every partition (live changes wait in their queues from here on, so none
        lands between what the migration reads and what it writes); read BFUS; give
        back the partitions with nothing to migrate; index Lime; then write partition by
        partition, giving each back as soon as it is done."""
        started = time.monotonic()
        report = Report(started=dt.datetime.now(dt.UTC).isoformat(), dry_run=self.options.dry_run,
                        options=self.options.flags())
        calls_before = self.lime.calls
        checkpoint = Checkpoint(self.options.checkpoint, self.options.identity(), self.options.fresh,
                                self.options.dry_run)
        hold: _HeldPartitions | None = None
        spill = _Spill()
        try:
            if self.options.coordinate and not self.options.dry_run:
                hold = _HeldPartitions(self.broker)
                hold.take(range(self.topology.partitions), self.stop)
            for item in self._todo(self.read(), checkpoint, report):
                spill.add(self.topology.partition_of(partition_key(item.objecttype, item.key, item.customerno)), item)
            if hold is not None:
                for idle in set(range(self.topology.partitions)) - spill.partitions():
                    hold.give_back(idle)
            self.build_index()
            self._write_all(spill, checkpoint, report, hold)
        except Stopped:
            report.stopped = True
        finally:
            if hold is not None:
                hold.close()
            checkpoint.close()
            spill.close()
            report.lime_calls = self.lime.calls - calls_before
            report.bfus_calls = self.bfus.calls
            report.seconds = time.monotonic() - started
        return report

    def _todo(self, items: Iterable[Item], checkpoint: Checkpoint, report: Report) -> Iterator[Item]:
        """``items`` but those the checkpoint has done (with --retry-failed: only those that failed)."""
        for item in items:
            previous = checkpoint.outcome(item.objecttype, item.key)
            if self.options.retry_failed:
                if previous == "failed":
                    yield item
            elif previous in DONE or previous == "failed":
                report.resumed += 1
                report.resumed_counts[item.objecttype][previous] += 1
                if previous == "failed":
                    reason, error = checkpoint.failure(item.objecttype, item.key)
                    report.failures.append({"objecttype": item.objecttype, "key": item.key, "reason": reason,
                                            "error": error})
            else:
                yield item

    def _write_all(self, spill: _Spill, checkpoint: Checkpoint, report: Report,
                   hold: _HeldPartitions | None) -> None:
        bars = {}
        if self.progress is not None:
            for objecttype in self.types:
                bars[objecttype] = self.progress.add_task(objecttype, total=spill.counts.get(objecttype, 0))
        with ThreadPoolExecutor(max_workers=self.options.parallel, thread_name_prefix="migrate") as pool:
            for partition in sorted(spill.partitions()):
                if self.stop.is_set():
                    raise Stopped()
                for objecttype in self.types:
                    self._run_batch(pool, spill.items(partition, objecttype), checkpoint, report,
                                    bars.get(objecttype))
                if hold is not None:
                    hold.give_back(partition)

    def _run_batch(self, pool: ThreadPoolExecutor, batch: Iterable[Item], checkpoint: Checkpoint, report: Report,
                   bar: Any) -> None:
        """``batch`` through the pool, a few times ``parallel`` objects in hand at once."""
        def one(item: Item) -> None:
            if self.stop.is_set():
                return
            self._apply(item, checkpoint, report)
            if bar is not None:
                self.progress.advance(bar)

        def settle(future: Future[None]) -> None:
            try:
                future.result()
            except Stopped:
                pass

        pending: deque[Future[None]] = deque()
        for item in batch:
            if self.stop.is_set():
                break
            if len(pending) >= 4 * self.options.parallel:
                settle(pending.popleft())
            pending.append(pool.submit(one, item))
        while pending:
            settle(pending.popleft())
        if self.stop.is_set():
            raise Stopped()


class _HeldPartitions:
    """The hold on partitions (``PartitionHold``) in a thread of its own, which answers
    RabbitMQ's heartbeats while the migration reads and writes: RabbitMQ drops a
    connection silent for two heartbeats, and reading a large utility, writing one of
    its partitions or waiting out a Lime outage takes minutes. The connection belongs
    to that thread alone (pika's are for one thread); the calls are handed to it."""

    def __init__(self, broker: BrokerConfig):
        self._calls: queue.Queue[tuple[Callable[[PartitionHold], Any], Future[Any]] | None] = queue.Queue()
        started: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, args=(broker, started), name="migration-hold",
                                        daemon=True)
        self._thread.start()
        started.result()  # what PartitionHold() raised (another migration, RabbitMQ unreachable)

    def take(self, partitions: Iterable[int], stop: threading.Event) -> None:
        self._call(lambda hold: hold.take(partitions, stop))

    def give_back(self, partition: int) -> None:
        self._call(lambda hold: hold.give_back(partition))

    def close(self) -> None:
        try:
            self._call(lambda hold: hold.close())
        finally:
            self._calls.put(None)
            self._thread.join(30)

    def _call(self, call: Callable[[PartitionHold], Any]) -> Any:
        if not self._thread.is_alive():
            raise MigrationError("the hold on the partitions has ended")
        done: Future[Any] = Future()
        self._calls.put((call, done))
        return done.result()

    def _serve(self, broker: BrokerConfig, started: Future[None]) -> None:
        try:
            hold = PartitionHold(broker)
        except BaseException as err:
            started.set_exception(err)
            return
        started.set_result(None)
        alive = True
        while True:
            try:
                handed = self._calls.get_nowait()
            except queue.Empty:
                if alive:
                    try:
                        hold.connection.process_data_events(time_limit=0.1)  # heartbeats
                    except Exception:  # the connection is lost: the next call on it says so
                        alive = False
                    continue
                handed = self._calls.get()
            if handed is None:
                return
            call, done = handed
            try:
                done.set_result(call(hold))
            except BaseException as err:
                done.set_exception(err)


class _Failure(Exception):
    def __init__(self, reason: str, error: str):
        super().__init__(error)
        self.reason = reason
        self.error = error

