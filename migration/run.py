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
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration.checkpoint import Checkpoint, identity_flags
from migration.errors import MigrationError, Stopped
from migration.hold import PartitionHold
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


@dataclass
class Indexed:
    id: int
    watermark: int | None
    values: dict[str, Any]


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
        self.index: dict[str, dict[str, Indexed]] = {}
        self.ambiguous: dict[str, set[str]] = defaultdict(set)
        self.stop = stop or threading.Event()  # set: finish the writes in flight, then stop
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def read(self) -> dict[str, list[Item]]:
        """The objects to migrate, by objecttype, filtered as asked."""
        o = self.options
        customers = None
        customer_filter = o.only_active_contract or o.customer_category or o.limit
        if "customer" in self.types or customer_filter:
            customers = [Item("customer", c["customerno"], c["customerno"], c, q) for c, q in self.bfus.list(
                "customer", {"changedsince": o.changed_since, "category": o.customer_category},
                o.bfus_page_size)]
        if o.only_active_contract:
            active = {c["customerno"] for c, _ in self.bfus.list("contract", {"status": "active"}, o.bfus_page_size)}
            customers = [c for c in customers or [] if c.key in active]
        if o.limit is not None and customers is not None:
            customers = customers[: o.limit]
        chosen = {c.key for c in customers} if customer_filter and customers is not None else None
        items: dict[str, list[Item]] = {}
        for objecttype in self.types:
            if objecttype == "customer":
                items[objecttype] = customers or []
                continue
            key_field = BFUS_KEY_FIELDS.get(objecttype, "key")
            found = []
            for data, queueid in self.bfus.list(objecttype, {"changedsince": o.changed_since}, o.bfus_page_size):
                if chosen is not None and data.get("customerno") not in chosen:
                    continue
                found.append(Item(objecttype, str(data[key_field]), data.get("customerno"), data, queueid))
            items[objecttype] = found
        return items

    # ------------------------------------------------------------------ Lime index

    def build_index(self) -> None:
        """Every Lime object of the limetypes involved, by key, with large pages."""
        limetypes = {self.mappers[t].limetype: self.mappers[t] for t in self.types}
        for objecttype in self.types:
            for rule in self.mappers[objecttype].relations.values():
                target = self.mappers[rule.objecttype]
                limetypes.setdefault(target.limetype, target)
        for limetype, mapper in limetypes.items():
            props = set(mapper.properties) - {"_links"} | ({self._link_property(limetype)} - {None})
            entries: dict[str, Indexed] = {}
            for obj in self.lime.iterate(limetype, {"_sort": "_id"}, self.options.lime_page_size, self._retrying):
                key = obj.get(mapper.key_property)
                if key in (None, ""):
                    continue
                key = str(key)
                if key in entries:
                    self.ambiguous[limetype].add(key)
                watermark = obj.get(mapper.spec.watermark) if mapper.spec.watermark else None
                entries[key] = Indexed(obj["_id"], watermark if isinstance(watermark, int) else None,
                                     {p: option_key(v) for p, v in obj.items() if p in props})
            self.index[limetype] = entries

    # ------------------------------------------------------------------ writing

    def _plan(self, item: Item) -> tuple[str, dict[str, Any], Indexed | None]:
        """(outcome, values to write, the Lime object) for one item; raises
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
            values[prop] = known.id
        values[mapper.key_property] = item.key
        with self._lock:
            existing = self.index[mapper.limetype].get(item.key)
        if existing is None:
            return "created", values, None
        if existing.watermark is not None and existing.watermark > item.queueid:
            return "newer_in_lime", {}, existing
        values.update(self._link(mapper.limetype, existing.id))
        changed = {p: v for p, v in values.items() if existing.values.get(p) != v}
        return ("updated", changed, existing) if changed else ("unchanged", {}, existing)

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
                self.index[mapper.limetype][item.key] = Indexed(-1, None, values)
        if outcome in ("created", "updated") and not self.options.dry_run:
            if mapper.spec.watermark:
                values[mapper.spec.watermark] = item.queueid
            try:
                written = self._write(mapper, values, existing)
            except LimeRejected as err:
                return self._failed(item, "lime_rejected", f"Lime refused the {mapper.limetype}: {err.message}",
                                    checkpoint, report)
            with self._lock:
                known = self.index[mapper.limetype].get(item.key) or Indexed(written["_id"], None, {})
                known.values.update(values)
                known.watermark = item.queueid if mapper.spec.watermark else None
                self.index[mapper.limetype][item.key] = known
        checkpoint.record(item, outcome)
        with self._lock:
            report.counts[item.objecttype][outcome] += 1

    def _write(self, mapper: ObjectMapper, values: dict[str, Any], existing: Indexed | None) -> dict[str, Any]:
        """Each call retried through Lime outages on its own (a create is never repeated
        for a lost link write)."""
        limetype = mapper.limetype
        if existing is not None:
            return self._retrying(lambda: self.lime.update(limetype, existing.id, values))
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
        hold: PartitionHold | None = None
        try:
            if self.options.coordinate and not self.options.dry_run:
                hold = PartitionHold(self.broker)
                hold.take(range(self.topology.partitions), self.stop)
            partitions = self._by_partition(self._todo(self.read(), checkpoint, report))
            if hold is not None:
                for idle in set(range(self.topology.partitions)) - set(partitions):
                    hold.give_back(idle)
            self.build_index()
            self._write_all(partitions, checkpoint, report, hold)
        except Stopped:
            report.stopped = True
        finally:
            if hold is not None:
                hold.close()
            checkpoint.close()
            report.lime_calls = self.lime.calls - calls_before
            report.bfus_calls = self.bfus.calls
            report.seconds = time.monotonic() - started
        return report

    def _by_partition(self, todo: dict[str, list[Item]]) -> dict[int, dict[str, list[Item]]]:
        """The items of each partition, by objecttype; the same partitions as the live sync."""
        by_partition: dict[int, dict[str, list[Item]]] = defaultdict(lambda: defaultdict(list))
        for objecttype, found in todo.items():
            for item in found:
                key = partition_key(item.objecttype, item.key, item.customerno)
                by_partition[self.topology.partition_of(key)][objecttype].append(item)
        return by_partition

    def _todo(self, items: dict[str, list[Item]], checkpoint: Checkpoint, report: Report) -> dict[str, list[Item]]:
        todo: dict[str, list[Item]] = {}
        for objecttype, found in items.items():
            keep = []
            for item in found:
                entry = checkpoint.outcomes.get((objecttype, item.key)) or {}
                previous = entry.get("o")
                if self.options.retry_failed:
                    if previous == "failed":
                        keep.append(item)
                elif previous in DONE or previous == "failed":
                    report.resumed += 1
                    report.resumed_counts[objecttype][previous] += 1
                    if previous == "failed":
                        report.failures.append({"objecttype": objecttype, "key": item.key,
                                                "reason": entry.get("r", ""), "error": entry.get("e", "")})
                else:
                    keep.append(item)
            todo[objecttype] = keep
        return todo

    def _write_all(self, by_partition: dict[int, dict[str, list[Item]]], checkpoint: Checkpoint, report: Report,
                   hold: PartitionHold | None) -> None:
        bars = {}
        if self.progress is not None:
            for objecttype in self.types:
                total = sum(len(p.get(objecttype, [])) for p in by_partition.values())
                bars[objecttype] = self.progress.add_task(objecttype, total=total)
        with ThreadPoolExecutor(max_workers=self.options.parallel, thread_name_prefix="migrate") as pool:
            for partition in sorted(by_partition):
                if self.stop.is_set():
                    raise Stopped()
                for objecttype in self.types:
                    self._run_batch(pool, by_partition[partition].get(objecttype, []), checkpoint, report,
                                    bars.get(objecttype))
                if hold is not None:
                    hold.give_back(partition)

    def _run_batch(self, pool: ThreadPoolExecutor, batch: Iterable[Item], checkpoint: Checkpoint, report: Report,
                   bar: Any) -> None:
        def one(item: Item) -> None:
            if self.stop.is_set():
                return
            self._apply(item, checkpoint, report)
            if bar is not None:
                self.progress.advance(bar)

        futures = [pool.submit(one, item) for item in batch]
        for future in futures:
            try:
                future.result()
            except Stopped:
                pass
        if self.stop.is_set():
            raise Stopped()


class _Failure(Exception):
    def __init__(self, reason: str, error: str):
        super().__init__(error)
        self.reason = reason
        self.error = error

