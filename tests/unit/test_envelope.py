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


# ----------------------------------------------------------------------------- edges (issue 9)


def raw_message(data: str = '{"customerno": "100234", "name": "Åsa"}', **envelope: str) -> bytes:
    """A message written as JSON text, for what json.dumps cannot produce."""
    fields = {"id": "184467", "timestamp": '"2026-11-24T09:15:02.123+01:00"', "objecttype": '"customer"',
              "operation": '"updated"', "key": '"100234"', "customerno": '"100234"', "data": data, **envelope}
    return ("{" + ", ".join(f'"{name.rstrip("_")}": {value}' for name, value in fields.items()) + "}").encode()


@pytest.mark.parametrize("mid", [10**40, 2**63, -1, -(2**63)])
def test_id_outside_signed_64_bits_is_422(mid: int) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse({**GOOD, "id": mid})
    assert caught.value.status == 422 and set(caught.value.fields) == {"id"}
    assert "9223372036854775807" in caught.value.fields["id"][0]


def test_largest_signed_64_bit_id_is_valid() -> None:
    assert parse({**GOOD, "id": 2**63 - 1}).id == 2**63 - 1


@pytest.mark.parametrize("body", [
    b"[" * 100_000,
    raw_message(data="[" * 5000 + "]" * 5000),
    raw_message(data='{"a": ' * 40 + "1" + "}" * 40),
])
def test_nesting_deeper_than_the_limit_is_400(body: bytes) -> None:
    from shared.jsonbody import MAX_DEPTH

    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(body)
    assert caught.value.status == 400 and caught.value.reason == "invalid_json"
    assert f"deeper than {MAX_DEPTH} levels" in caught.value.message


def test_nesting_up_to_the_limit_is_accepted() -> None:
    from shared.jsonbody import MAX_DEPTH

    nested = "[" * (MAX_DEPTH - 2) + "1" + "]" * (MAX_DEPTH - 2)  # envelope 1 + data 1 + arrays
    assert parse_envelope(raw_message(data='{"customerno": "1", "deep": ' + nested + "}")).id == 184467


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1" * 5000])
def test_numbers_json_or_python_cannot_hold_are_400(literal: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(raw_message(data='{"customerno": "1", "zipcode": ' + literal + "}"))
    assert caught.value.status == 400 and caught.value.reason == "invalid_json"


@pytest.mark.parametrize("body", [
    "{\"id\": 1}".encode("utf-16"),
    b'{"id": 1, "key": "\xe5"}',  # Latin-1, not UTF-8
    b"\x00\x01\x02",
])
def test_bodies_that_are_not_utf8_are_400(body: bytes) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(body)
    assert caught.value.status == 400 and caught.value.reason == "invalid_json"


def test_a_utf8_byte_order_mark_is_ignored() -> None:
    assert parse_envelope(b"\xef\xbb\xbf" + raw_message()).id == 184467


@pytest.mark.parametrize("body, field", [
    (raw_message(id_="8006, \"id\": 8007"), "id"),
    (raw_message(operation='"updated", "operation": "deleted"'), "operation"),
    (raw_message(data='{"customerno": "1", "name": "A", "name": "B"}'), "data.name"),
])
def test_names_given_twice_are_422_naming_them(body: bytes, field: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(body)
    assert caught.value.status == 422 and field in caught.value.fields
    assert "more than once" in caught.value.fields[field][0]


@pytest.mark.parametrize("text, field", [
    ('{"customerno": "1", "name": "\\ud800"}', "data.name"),
    ('{"customerno": "1", "name": "a\\udfffb"}', "data.name"),
    ('{"customerno": "1", "city": "Malm\\u0000"}', "data.city"),
    ('{"customerno": "1", "lines": ["ok", "\\u0007"]}', "data.lines[1]"),
    ('{"customerno": "1", "\\ud83d": "x"}', "data.\ufffd"),
])
def test_text_lime_cannot_store_is_422_naming_where(text: str, field: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(raw_message(data=text))
    assert caught.value.status == 422 and field in caught.value.fields, caught.value.fields
    assert "cannot store" in caught.value.fields[field][0]


def test_tabs_newlines_and_astral_characters_are_storable() -> None:
    env = parse_envelope(raw_message(data='{"customerno": "1", "name": "A\\tB\\nC \\ud83d\\ude00 \u00c5"}'))
    assert env.data["name"] == "A\tB\nC \U0001f600 Å"


def test_the_error_text_carries_the_field_messages() -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse({**GOOD, "id": "x", "operation": "merged"})
    assert caught.value.message.startswith("Envelope invalid: ")
    assert "id: Not a valid integer." in caught.value.message
    assert "operation: Must be one of" in caught.value.message


def test_many_problems_are_capped_and_counted() -> None:
    data = "{" + ", ".join(f'"f{i}": "\\u0000"' for i in range(50)) + "}"
    with pytest.raises(EnvelopeError) as caught:
        parse_envelope(raw_message(data=data))
    assert len(caught.value.fields) == 21 and "30 more problems" in caught.value.fields["_more"][0]
