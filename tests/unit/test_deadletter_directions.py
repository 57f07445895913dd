"""Failed messages by direction: a record without a direction (written before the log
had one, or with outbound off) is from_bfus; the filter is applied to what Lime lists,
so no direction filter ever reaches Lime (a Lime without the property would refuse it)."""

from __future__ import annotations

from typing import Any, cast

from deadletters.service import DeadLetters, direction_of
from shared.config import BrokerConfig
from shared.lime import LimeClient


class ListingLime:
    """Answers iterate() from a list of failed records, filtered by status only."""

    def __init__(self, records: list[dict[str, Any]]):
        self.records = records
        self.params: list[dict[str, Any]] = []

    def iterate(self, limetype: str, params: dict[str, Any], page_size: int = 100) -> list[dict[str, Any]]:
        self.params.append(params)
        return [r for r in self.records if r["status"]["key"] == params["status"]]


def option(key: str) -> dict[str, Any]:
    return {"id": hash(key) % 1000, "key": key, "text": key}


RECORDS = [
    {"_id": 1, "status": option("failed"), "reason": "missing_related"},  # older than directions
    {"_id": 2, "status": option("failed"), "reason": "bfus_rejected", "direction": option("to_bfus")},
    {"_id": 3, "status": option("failed"), "reason": "mapping_error", "direction": option("from_bfus")},
    {"_id": 4, "status": option("failed"), "reason": "invalid_json", "direction": None},
    {"_id": 5, "status": option("resolved"), "reason": "bfus_rejected", "direction": "to_bfus"},
]


def service(records: list[dict[str, Any]]) -> tuple[DeadLetters, ListingLime]:
    lime = ListingLime(records)
    broker = BrokerConfig(("amqp://unused",), "bfus", 2, 5.0, 30, "")
    return DeadLetters(broker, cast(LimeClient, lime), "bfusfailedmessage"), lime


def test_a_record_without_a_direction_is_from_bfus() -> None:
    assert [direction_of(r) for r in RECORDS] == ["from_bfus", "to_bfus", "from_bfus", "from_bfus", "to_bfus"]
    assert direction_of({"direction": "something else"}) == "from_bfus"


def test_records_filter_by_direction_without_asking_lime_to() -> None:
    dead, lime = service(RECORDS)
    assert [r["_id"] for r in dead.records(direction="to_bfus")] == [2]
    assert [r["_id"] for r in dead.records(direction="from_bfus")] == [1, 3, 4]
    assert [r["_id"] for r in dead.records(("failed", "resolved"), direction="to_bfus")] == [2, 5]
    assert [r["_id"] for r in dead.records()] == [1, 2, 3, 4]
    assert all("direction" not in params for params in lime.params)
