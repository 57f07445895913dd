"""The change-message envelope of contract.md §1."""

from __future__ import annotations

import json

import pytest

from shared.envelope import EnvelopeError, parse_envelope

GOOD = {
    "id": 184467,
    "timestamp": "2026-11-24T09:15:02.123+01:00",
    "objecttype": "customer",
    "operation": "updated",
    "key": "100234",
    "customerno": "100234",
    "data": {"customerno": "100234", "name": "Åsa Öberg"},
}


def parse(message: object) -> object:
    return parse_envelope(json.dumps(message).encode())


def test_valid_message() -> None:
    env = parse(GOOD)
    assert env.id == 184467 and env.key == "100234" and env.data["name"] == "Åsa Öberg"
    assert env.timestamp.utcoffset().total_seconds() == 3600
    assert env.partition_key == "100234"


def test_partition_key_without_customer() -> None:
    env = parse({**GOOD, "objecttype": "meter", "key": "M1", "customerno": None})
    assert env.partition_key == "meter:M1"


def test_extra_envelope_fields_are_ignored() -> None:
    assert parse({**GOOD, "source": "bfus-7"}).id == 184467


def test_deleted_may_have_no_data() -> None:
    env = parse({k: v for k, v in GOOD.items() if k != "data"} | {"operation": "deleted"})
    assert env.data == {}


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_not_a_json_object_is_400(body: bytes) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(body)
    assert caught.value.status == 400 and caught.value.reason == "invalid_json"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"id": None}, "id"),
        ({"id": 0}, "id"),
        ({"id": "184467"}, "id"),
        ({"id": True}, "id"),
        ({"id": 1.5}, "id"),
        ({"timestamp": "2026-11-24T09:15:02"}, "timestamp"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"objecttype": "Customer"}, "objecttype"),
        ({"operation": "merged"}, "operation"),
        ({"key": ""}, "key"),
        ({"key": "x" * 65}, "key"),
        ({"data": "full"}, "data"),
        ({"data": {}}, "data"),
    ],
)
def test_invalid_envelope_is_422_naming_the_field(change: dict, field: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse({**GOOD, **change})
    assert caught.value.status == 422
    assert caught.value.reason == "invalid_envelope"
    assert set(caught.value.fields) == {field}


def test_missing_fields_are_all_named() -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse({"data": {}})
    assert {"id", "timestamp", "objecttype", "operation", "key"} <= set(caught.value.fields)
