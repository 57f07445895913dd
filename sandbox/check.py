"""The checker: does Lime hold what BFUS sent? Compares the BFUS stand-in's last
snapshot of every object with the Lime stand-in's data, and the messages BFUS
delivered with the log records in Lime."""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.fingerprint import normal
from shared.lime import option_key
from shared.mapping import ObjectMapper


@dataclass
class CheckReport:
    objects: int = 0
    mismatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    messages: int = 0
    processed: int = 0
    failed: int = 0
    unlogged: list[int] = field(default_factory=list)
    logged_twice: list[int] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    # Lime -> BFUS on: companies whose fields that flow to BFUS differ from BFUS's
    # customer, and companies marked for BFUS that never got a customer number.
    disagreeing: list[str] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)
    # Jump links on: synced objects whose link property is not their jump address.
    unlinked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.mismatched or self.missing or self.duplicated or self.unlogged or self.logged_twice
                    or self.out_of_order or self.disagreeing or self.unsent or self.unlinked)

    def summary(self) -> str:
        return (
            f"objects {self.objects} (mismatched {len(self.mismatched)}, missing {len(self.missing)}, "
            f"duplicated {len(self.duplicated)}); messages {self.messages}: processed {self.processed}, "
            f"failed {self.failed}, unlogged (lost) {len(self.unlogged)}, logged twice {len(self.logged_twice)}, "
            f"applied out of order {len(self.out_of_order)}; disagreeing with BFUS {len(self.disagreeing)}, "
            f"marked for BFUS but not sent {len(self.unsent)}; without their jump link {len(self.unlinked)}"
        )

    def details(self, limit: int = 10) -> str:
        lines = [self.summary()]
        for name in ("mismatched", "missing", "duplicated", "unlogged", "logged_twice", "out_of_order", "disagreeing",
                     "unsent", "unlinked"):
            items = getattr(self, name)
            if items:
                lines.append(f"  {name}: {items[:limit]}{' ...' if len(items) > limit else ''}")
        return "\n".join(lines)


def expected_values(mapper: ObjectMapper, snapshot: dict[str, Any]) -> dict[str, Any]:
    """What Lime should hold for a BFUS object's last snapshot."""
    values = mapper.map(snapshot["data"])
    if snapshot["deleted"]:
        changed = dt.date.fromisoformat(snapshot["changed"])
        values.update(mapper.soft_delete_values(changed))
    values[mapper.key_property] = snapshot["key"]
    return values


def check_objects(report: CheckReport, mapper: ObjectMapper, snapshots: Iterable[dict[str, Any]],
                  lime_objects: Iterable[dict[str, Any]], sent_keys: set[str] | None = None,
                  mappers: dict[str, ObjectMapper] | None = None,
                  lime_by_id: dict[int, dict[str, Any]] | None = None, refused: Collection[str] = ()) -> None:
    """Every BFUS object (that had a change message, when ``sent_keys`` is given)
    is in Lime once, with the mapped values of its last snapshot, and each relation
    (given ``mappers`` and ``lime_by_id``, every Lime object by id) points at the
    Lime object of the related BFUS key. For the keys in ``refused`` (a person's edit
    in Lime came after BFUS's last message and BFUS refused it: an open failed record
    says so) the fields that flow to BFUS keep the person's values and are not compared."""
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for obj in lime_objects:
        by_key[str(obj.get(mapper.key_property))].append(obj)
    for snapshot in snapshots:
        key = snapshot["key"]
        if sent_keys is not None and key not in sent_keys:
            continue
        report.objects += 1
        found = by_key.get(key, [])
        if not found:
            report.missing.append(f"{mapper.objecttype} {key}")
            continue
        if len(found) > 1:
            report.duplicated.append(f"{mapper.objecttype} {key} x{len(found)}")
        expected = expected_values(mapper, snapshot)
        if key in refused:
            for prop in (*mapper.flowing_properties, mapper.fingerprint_property):
                expected.pop(prop or "", None)
        diffs = [f"{p}: lime={option_key(found[0].get(p))!r} bfus={v!r}" for p, v in expected.items()
                 if option_key(found[0].get(p)) != v]
        if mappers is not None and lime_by_id is not None:
            diffs += _relation_diffs(mapper, snapshot, found[0], mappers, lime_by_id)
        if diffs:
            report.mismatched.append(f"{mapper.objecttype} {key}: " + "; ".join(diffs))


def _relation_diffs(mapper: ObjectMapper, snapshot: dict[str, Any], obj: dict[str, Any],
                    mappers: dict[str, ObjectMapper], lime_by_id: dict[int, dict[str, Any]]) -> list[str]:
    diffs = []
    for prop, key in mapper.relation_keys(snapshot["data"]).items():
        target = mappers[mapper.relations[prop].objecttype]
        related_id = obj.get(prop)
        related = lime_by_id.get(related_id) if isinstance(related_id, int) else None
        actual = None if related is None else str(related.get(target.key_property))
        if actual != key:
            diffs.append(f"{prop}: points at {target.objecttype} {actual}, bfus says {key}")
    return diffs


def check_log(report: CheckReport, delivered_ids: Iterable[int], processed: list[dict[str, Any]],
              failed: list[dict[str, Any]]) -> None:
    """Each delivered message has exactly one log record; one object's messages were
    applied in increasing id order (record creation order)."""
    ids = list(delivered_ids)
    report.messages = len(ids)
    report.processed = len(processed)
    report.failed = len(failed)
    counts = Counter(r["messageid"] for r in [*processed, *failed])
    report.unlogged = [i for i in ids if counts[i] == 0]
    report.logged_twice = sorted(i for i, n in counts.items() if n > 1)
    last: dict[tuple[str, str], int] = {}
    for record in sorted(processed, key=lambda r: r["_id"]):
        if option_key(record.get("outcome")) != "applied":
            continue
        obj = (record["objecttype"], record["key"])
        if obj in last and record["messageid"] < last[obj]:
            report.out_of_order.append(f"{obj[0]} {obj[1]}: {record['messageid']} after {last[obj]}")
        last[obj] = max(record["messageid"], last.get(obj, 0))


def check_agreement(report: CheckReport, mapper: ObjectMapper, bfus_customers: dict[str, dict[str, Any]],
                    companies: Iterable[dict[str, Any]], mark: str | None) -> None:
    """Lime -> BFUS: every company linked to a live BFUS customer holds, in the fields
    that flow to BFUS, what BFUS holds now; every company marked for BFUS (``mark``)
    has a customer number."""
    for company in companies:
        customerno = company.get(mapper.key_property)
        if not customerno:
            if mark and company.get(mark) is True:
                report.unsent.append(f"company {company['_id']}")
            continue
        customer = bfus_customers.get(str(customerno))
        if customer is None:
            continue  # deleted in BFUS (the inbound check covers what Lime shows of it)
        expected = mapper.map({f: customer.get(f) for f in mapper.to_bfus})
        diffs = [f"{p}: lime={company.get(p)!r} bfus={expected[p]!r}" for p in mapper.flowing_properties
                 if normal(company.get(p)) != normal(expected[p])]
        if diffs:
            report.disagreeing.append(f"company {company['_id']} / customer {customerno}: " + "; ".join(diffs))


def inbound_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The log records of BFUS messages (not of changes sent to BFUS)."""
    return [r for r in records if option_key(r.get("direction")) in (None, "", "from_bfus")]


def check_customers(stack: Any) -> CheckReport:
    """A running :class:`sandbox.stack.Stack`: every customer BFUS sent a message about
    equals its last snapshot in Lime, and the log records match the delivered messages;
    with Lime -> BFUS on, Lime and BFUS also agree on every field that flows to BFUS."""
    from shared.lime import LimeClient
    from shared.limemeta import check_against_lime

    mappers = check_against_lime(stack.config, LimeClient(stack.config.lime).limetypes())
    report = CheckReport()
    sent = {m["key"] for m in stack.bfus.store.messages() if m["objecttype"] == "customer"}
    companies = stack.lime_objects("company")
    processed, failed = stack.log_records()
    refused = {str(r.get("customerno")) for r in failed
               if option_key(r.get("direction")) == "to_bfus" and option_key(r.get("status")) == "failed"}
    check_objects(report, mappers["customer"], stack.bfus.store.snapshots("customer"), companies, sent,
                  refused=refused)
    check_log(report, stack.bfus.store.delivered_ids(), inbound_records(processed), inbound_records(failed))
    if stack.config.outbound.enabled:
        live = {k: stack.bfus.store.get("customer", k)["data"] for k in stack.bfus.store.keys("customer")}
        check_agreement(report, mappers["customer"], live, companies, stack.config.outbound.create_when)
    report.unlinked = [f"{limetype} {object_id}" for limetype, object_id in stack.outdated_jump_links()]
    return report
