"""Every BFUS object type through the whole integration, driven by the mapping
configuration: relations, skipped objecttypes, missing parents, personal data."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pika
import pytest

from sandbox.check import CheckReport, check_log, check_objects
from sandbox.stack import Stack, wait_for
from shared.lime import LimeClient
from shared.limemeta import check_against_lime
from shared.mapping import MappingSetupError
from shared.topology import Topology
from worker.factory import build_worker

ALL_TYPES = ("customer", "contract", "facility", "meter")


def check_all(stack: Stack) -> CheckReport:
    mappers = check_against_lime(stack.config, LimeClient(stack.config.lime).limetypes())
    report = CheckReport()
    lime_by_id = {o["_id"]: o for m in mappers.values() for o in stack.lime_objects(m.limetype)}
    sent: dict[str, set[str]] = {}
    for message in stack.bfus.store.messages():
        sent.setdefault(message["objecttype"], set()).add(message["key"])
    for objecttype, mapper in mappers.items():
        check_objects(report, mapper, stack.bfus.store.snapshots(objecttype), stack.lime_objects(mapper.limetype),
                      sent.get(objecttype, set()), mappers, lime_by_id)
    processed, failed = stack.log_records()
    check_log(report, stack.bfus.store.delivered_ids(), processed, failed)
    return report


def requeue_dead_letters(stack: Stack) -> int:
    """Move every dead letter back to the partition it came from (what `dlq requeue`
    will do with its bookkeeping)."""
    topology = Topology.from_config(stack.config.broker)
    connection = pika.BlockingConnection(pika.URLParameters(stack.config.broker.url))
    moved = 0
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        count = channel.queue_declare(topology.dead_queue, passive=True).method.message_count
        for method, props, body in channel.consume(topology.dead_queue, inactivity_timeout=5):
            if method is None:
                break
            source = props.headers["x-bfus-source-queue"]
            routing_key = source.rsplit(".", 1)[-1]
            channel.basic_publish(topology.exchange, routing_key, body, props, mandatory=True)
            channel.basic_ack(method.delivery_tag)
            moved += 1
            if moved == count:
                break
        channel.cancel()
    finally:
        connection.close()
    return moved


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(partitions=4).start(workers=2)


def test_all_four_object_types_arrive_with_relations_pointing_right(stack: Stack) -> None:
    report = stack.bfus.changes.make(500, customers=40, objecttypes=ALL_TYPES)
    stack.wait_delivered(90)
    stack.wait_logged(500, 120)
    result = check_all(stack)
    assert result.ok, result.details()
    assert (result.messages, result.processed, result.failed) == (500, 500, 0)
    kinds = {m["objecttype"] for m in stack.bfus.store.messages()}
    assert kinds == set(ALL_TYPES)
    agreements = stack.lime_objects("agreement")
    assert agreements and all(a["company"] and a["facility"] for a in agreements)
    assert all(m["facility"] for m in stack.lime_objects("meter"))
    assert report.deleted and any(f["deleted"] for f in stack.lime_objects("facility"))


def test_personal_data_switch_keeps_every_personal_value_out_of_lime(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=4, config={"mapping": {"exclude_personal_data": True}}).start(workers=1)
    stack.bfus.changes.make(300, customers=40, objecttypes=ALL_TYPES)
    bad = {"id": 10_000, "timestamp": "2026-11-24T09:15:02+01:00", "objecttype": "customer", "operation": "updated",
           "key": "900001", "customerno": "900001",
           "data": {"customerno": "900001", "customertype": "private", "name": "Märta Lindqvist",
                    "email": "marta.lindqvist@example.se", "status": "bankrupt"}}
    stack.wait_delivered(60)
    assert stack.post(bad).status_code == 202
    stack.wait_logged(301, 120)
    personal: set[str] = {"Märta Lindqvist", "marta.lindqvist@example.se"}
    for objecttype, fields in (("customer", ("socialsecurityno", "firstname", "lastname", "street", "zipcode",
                                             "city", "phone", "mobilephone", "email")),
                               ("facility", ("street", "propertydesignation"))):
        for snapshot in stack.bfus.store.snapshots(objecttype):
            data = snapshot["data"]
            personal.update(str(data[f]) for f in fields if data.get(f))
            if objecttype == "customer" and data["customertype"] == "private":
                personal.add(data["name"])
    stored = {lt: stack.lime_objects(lt) for lt in stack.lime.store.limetypes}
    values = set(_strings(stored))
    text = "\n".join(values)
    # exact values anywhere (payloads included); distinctive ones (with digits or @) also inside longer text,
    # as whole numbers (a zip code 80179 is not inside a time ...:31.480179)
    def inside(value: str) -> bool:
        return any(c.isdigit() or c == "@" for c in value) and re.search(rf"(?<!\d){re.escape(value)}(?!\d)", text)

    leaks = sorted(v for v in personal if v in values or inside(v))
    assert leaks == []
    processed, failed = stack.log_records()
    assert len(processed) == 300 and len(failed) == 1
    assert failed[0]["reason"] == "mapping_error" and "status" in failed[0]["error"]
    assert '"customerno": "900001"' in failed[0]["payload"]  # the record keeps what is not personal
    private = [c for c in stored["company"] if c["customertype"]["key"] == "private"]
    assert private and all(c["name"] == f"Customer {c['customerno']}" for c in private)


def _strings(value: Any) -> Any:
    """Every text value inside ``value``, JSON text (log payloads) opened up."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value
        if value.startswith("{"):
            try:
                yield from _strings(json.loads(value))
            except ValueError:
                pass


def _message(mid: int, objecttype: str, key: str, customerno: str, data: dict[str, Any],
             operation: str = "created") -> dict[str, Any]:
    return {"id": mid, "timestamp": "2026-11-24T09:15:02+01:00", "objecttype": objecttype,
            "operation": operation, "key": key, "customerno": customerno, "data": data}


def test_missing_parent_fails_then_applies_when_requeued(stack: Stack) -> None:
    contract = _message(2, "contract", "5000099", "100777",
                        {"contractno": "5000099", "customerno": "100777", "facilityno": None,
                         "product": "water", "status": "active", "startdate": "2026-01-01", "enddate": None})
    assert stack.post(contract).status_code == 202
    wait_for(lambda: stack.log_records()[1], 30, "a failed record")
    failed = stack.log_records()[1][0]
    assert failed["reason"] == "missing_related"
    assert "customer 100777" in failed["error"] and "company with customerno=100777" in failed["error"]
    assert stack.lime_objects("agreement") == []
    customer = _message(3, "customer", "100777", "100777",
                        {"customerno": "100777", "customertype": "company", "name": "Ekens Bageri AB"})
    assert stack.post(customer).status_code == 202
    stack.wait_logged(2, 30)
    assert requeue_dead_letters(stack) == 1
    wait_for(lambda: stack.lime_objects("agreement"), 30, "the requeued contract to apply")
    agreement = stack.lime_objects("agreement")[0]
    company = stack.lime_objects("company")[0]
    assert agreement["company"] == company["_id"] and agreement["facility"] is None
    assert agreement["product"]["key"] == "water"


def test_objecttype_not_synced_is_skipped_not_failed(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=2, config={"mapping": {"objects": {"meter": {"sync": False}}}}).start(workers=1)
    stack.bfus.changes.make(120, customers=10, objecttypes=ALL_TYPES)
    stack.wait_delivered(60)
    meters = sum(1 for m in stack.bfus.store.messages() if m["objecttype"] == "meter")
    assert meters
    stack.wait_logged(120, 60)
    processed, failed = stack.log_records()
    assert failed == []
    skipped = [r for r in processed if r["outcome"]["key"] == "skipped_not_configured"]
    assert len(skipped) == meters and {r["objecttype"] for r in skipped} == {"meter"}
    assert stack.lime_objects("meter") == []


def test_worker_does_not_start_on_a_mapping_that_does_not_fit(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(config={"mapping": {"objects": {
        "contract": {"relations": {"company": {"objecttype": "facility", "field": "facilityno"}}},
        "meter": {"fields": {"metertype": {"property": "metertype", "values": {"el": "electric"}}}},
        "facility": {"key": "anlaggningsid"},
    }}})
    with pytest.raises(MappingSetupError) as caught:
        build_worker(stack.config, lime_wait=5)
    text = "\n".join(caught.value.problems)
    assert "mapping.objects.contract.relations.company: 'agreement.company' points to 'company', " \
           "but facility objects are 'facility'." in text
    assert "mapping.objects.meter.fields.metertype.values: option key(s) electric not in meter.metertype." in text
    assert "mapping.objects.facility.key: limetype 'facility' has no property 'anlaggningsid'." in text
