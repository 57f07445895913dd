"""Strict JSON for message bodies (shared.jsonbody): no input raises anything but
JSONBodyError, and readers of stored payloads never break on them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deadletters.format import pretty_payload
from shared.jsonbody import DuplicateNames, JSONBodyError, decode, depth, loads_or_none, storable, unstorable


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_jsonbodyerror(body: bytes) -> None:
    try:
        decode(body)
    except JSONBodyError:
        pass


def test_repeated_names_are_marked_at_any_depth() -> None:
    value = decode(b'{"a": {"b": 1, "b": 2}, "c": 3}')
    assert not isinstance(value, DuplicateNames) and isinstance(value["a"], DuplicateNames)
    assert value["a"].duplicates == ("b",) and value["a"]["b"] == 2


def test_depth_counts_arrays_and_objects() -> None:
    assert (depth(1), depth([]), depth({"a": [1, {"b": []}]})) == (0, 1, 4)


def test_storable_replaces_only_what_lime_cannot_store() -> None:
    text = "tab\there\nÅ\U0001f600\x00\ud800\ufffe"
    assert unstorable(text) == "U+0000 at position 11"
    assert storable(text) == "tab\there\nÅ\U0001f600\ufffd\ufffd\ufffd"
    assert unstorable("plain") is None


@pytest.mark.parametrize("payload", ["[" * 100_000, '{"a": NaN}', "not json", "\x00"])
def test_a_stored_payload_of_any_shape_is_shown_as_it_is(payload: str) -> None:
    """`dlq show` and /admin read failed records' payloads; a kept 400 body is anything."""
    assert loads_or_none(payload) is None
    assert pretty_payload(payload) == payload


def test_a_json_payload_is_indented() -> None:
    assert pretty_payload('{"a": 1}') == '{\n  "a": 1\n}'
