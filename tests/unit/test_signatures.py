"""``POST /lime/events`` without a broker: the signature check (receiver/signatures.py)
against what the Lime stand-in signs, the event parser (shared/limeevents.py) and the
delivery ids the receiver's processes share (receiver/deliveries.py)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from builders import message
from receiver import deliveries as deliveries_module
from receiver.deliveries import Deliveries
from receiver.signatures import SignatureError, Signed, verify
from sandbox.lime.webhooks import signature_v1, signature_v2
from shared.config import build_config
from shared.envelope import EnvelopeError, validate_envelope
from shared.limeevents import LimeEvent, customer_keys, parse_event

SECRET = "current-secret"
PREVIOUS = "previous-secret"
SECRETS = [SECRET, PREVIOUS]
NOW = 1_790_000_000
MAX_AGE = 300.0
DELIVERY = "5f0c2b8e-0d4b-4f57-9a53-3c1f0e4b7a10"
BODY = json.dumps({"event": "company.update", "body": {"id": 1001, "limetype": "company",
                                                       "values": {"id": 1001, "name": "Acme AB"},
                                                       "original_values": {"name": "Acme"}}}).encode()


def v1_headers(body: bytes = BODY, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Lime-Signature": signature_v1(secret, body)}


def v2_headers(body: bytes = BODY, secret: str = SECRET, delivery: str = DELIVERY,
               stamp: int = NOW) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Lime-Signature": signature_v2(secret, delivery, stamp, body),
            "X-Lime-Delivery-Id": delivery, "X-Lime-Delivery-Timestamp": str(stamp)}


def check(headers: dict[str, str], body: bytes = BODY, secrets: list[str] | None = None,
          now: float = NOW) -> Signed:
    return verify(headers, body, SECRETS if secrets is None else secrets, now, MAX_AGE)


# ----------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("secret", [SECRET, PREVIOUS], ids=["current", "previous"])
def test_v1_is_accepted_with_the_current_and_the_previous_secret(secret: str) -> None:
    assert check(v1_headers(secret=secret)) == Signed("v1", None)


@pytest.mark.parametrize("secret", [SECRET, PREVIOUS], ids=["current", "previous"])
def test_v2_is_accepted_with_the_current_and_the_previous_secret(secret: str) -> None:
    assert check(v2_headers(secret=secret)) == Signed("v2", DELIVERY)


def test_only_the_current_secret_configured_still_accepts_it() -> None:
    assert check(v2_headers(), secrets=[SECRET, ""]).scheme == "v2"
    with pytest.raises(SignatureError):
        check(v2_headers(secret=PREVIOUS), secrets=[SECRET, ""])


@pytest.mark.parametrize("age", [0, 299, 300, -300], ids=["now", "299s-old", "300s-old", "300s-ahead"])
def test_v2_within_max_age_either_way_is_accepted(age: int) -> None:
    assert check(v2_headers(stamp=NOW - age)).delivery_id == DELIVERY


@pytest.mark.parametrize("make", [v1_headers, v2_headers], ids=["v1", "v2"])
def test_header_names_are_case_insensitive(make: Any) -> None:
    for rename in (str.lower, str.upper):
        headers = {rename(name): value for name, value in make().items()}
        assert check(headers).scheme in ("v1", "v2")


# ----------------------------------------------------------------------------- refused


def refused(headers: dict[str, str], body: bytes = BODY, secrets: list[str] | None = None,
            now: float = NOW) -> str:
    with pytest.raises(SignatureError) as caught:
        check(headers, body, secrets, now)
    return str(caught.value)


@pytest.mark.parametrize("make", [v1_headers, v2_headers], ids=["v1", "v2"])
def test_no_signature_header_is_refused(make: Any) -> None:
    headers = {name: value for name, value in make().items() if name != "X-Lime-Signature"}
    assert "not signed" in refused(headers)
    assert "not signed" in refused({**headers, "X-Lime-Signature": "  "})


@pytest.mark.parametrize("make", [v1_headers, v2_headers], ids=["v1", "v2"])
def test_a_wrong_secret_is_refused_and_not_named(make: Any) -> None:
    text = refused(make(secret="someone-elses-secret"))
    assert "does not match" in text
    assert SECRET not in text and PREVIOUS not in text


@pytest.mark.parametrize("make", [v1_headers, v2_headers], ids=["v1", "v2"])
@pytest.mark.parametrize("where", [0, len(BODY) // 2, len(BODY) - 1], ids=["first", "middle", "last"])
def test_a_body_changed_by_one_byte_is_refused(make: Any, where: int) -> None:
    changed = bytearray(BODY)
    changed[where] ^= 0x01
    assert bytes(changed) != BODY and len(changed) == len(BODY)
    assert "does not match" in refused(make(), body=bytes(changed))


def test_a_body_with_one_byte_added_is_refused() -> None:
    assert "does not match" in refused(v1_headers(), body=BODY + b" ")
    assert "does not match" in refused(v2_headers(), body=BODY + b" ")


def test_v2_signed_for_another_delivery_id_or_time_is_refused() -> None:
    """The id and the time are signed: neither can be swapped for a fresh one."""
    headers = v2_headers(delivery="another-delivery")
    assert "does not match" in refused({**headers, "X-Lime-Delivery-Id": DELIVERY})
    headers = v2_headers(stamp=NOW - 1000)
    assert "does not match" in refused({**headers, "X-Lime-Delivery-Timestamp": str(NOW)})


@pytest.mark.parametrize("secret", [SECRET, PREVIOUS], ids=["current", "previous"])
def test_v2_older_than_max_age_is_refused(secret: str) -> None:
    assert "more than 300 seconds" in refused(v2_headers(secret=secret, stamp=NOW - 301))
    assert "more than 300 seconds" in refused(v2_headers(secret=secret, stamp=NOW - 86_400))


def test_v2_too_far_in_the_future_is_refused() -> None:
    assert "more than 300 seconds" in refused(v2_headers(stamp=NOW + 301))


def test_v1_has_no_time_and_never_expires() -> None:
    assert check(v1_headers(), now=NOW + 10 * 365 * 86_400).scheme == "v1"


@pytest.mark.parametrize("missing, text", [
    ("X-Lime-Delivery-Id", "needs X-Lime-Delivery-Id"),
    ("X-Lime-Delivery-Timestamp", "needs X-Lime-Delivery-Timestamp"),
])
def test_v2_missing_its_delivery_id_or_timestamp_is_refused(missing: str, text: str) -> None:
    headers = {name: value for name, value in v2_headers().items() if name != missing}
    assert text in refused(headers)
    assert text in refused({**headers, missing: ""})


@pytest.mark.parametrize("stamp", ["1790000000.5", "-1790000000", "soon", "１７９０００００００", "9" * 13])
def test_v2_with_a_timestamp_that_is_not_unix_seconds_is_refused(stamp: str) -> None:
    headers = {**v2_headers(), "X-Lime-Delivery-Timestamp": stamp}
    assert "needs X-Lime-Delivery-Timestamp" in refused(headers)


def test_v2_with_an_overlong_or_unprintable_delivery_id_is_refused() -> None:
    for delivery in ("x" * 201, "abc\ndef"):
        headers = v2_headers(delivery=delivery)
        assert "needs X-Lime-Delivery-Id" in refused(headers)


@pytest.mark.parametrize("signature", [
    "sha1=" + "0" * 40, "v3=" + "0" * 64, "V2=" + "0" * 64, "0" * 64, "sha512=abc",
])
def test_an_unknown_scheme_is_refused(signature: str) -> None:
    assert "Unknown signature scheme" in refused({**v2_headers(), "X-Lime-Signature": signature})


@pytest.mark.parametrize("secrets", [[], [""], ["", ""]], ids=["none", "one-empty", "both-empty"])
def test_no_secret_configured_refuses_everything(secrets: list[str]) -> None:
    # Signed with the empty secret: it must still not pass.
    for headers in (v1_headers(secret=""), v2_headers(secret=""), v1_headers(), v2_headers()):
        assert "lime_secret is not set" in refused(headers, secrets=secrets)


# ----------------------------------------------------------------------------- parse_event


def event(name: str = "company.update", **body: Any) -> bytes:
    inner = {"id": 1001, "limetype": "company", "values": {"id": 1001, "name": "Acme AB"},
             "original_values": {"name": "Acme"}, **body}
    return json.dumps({"event": name, "body": inner}).encode()


def test_an_update_event_is_parsed() -> None:
    parsed = parse_event(event())
    assert parsed == LimeEvent("company", "update", 1001, {"id": 1001, "name": "Acme AB"})
    assert parsed.partition_key() == "lime:company:1001"
    assert parsed.partition_key({"company": "customerno"}) == "lime:company:1001"  # not linked to a customer yet


def test_a_linked_companys_events_share_its_customers_partition_with_bfuss_messages() -> None:
    """So that one lane orders BFUS's messages about the customer and the company's Lime
    edits (shared/limeevents.py, LimeEvent.partition_key)."""
    linked = parse_event(event(values={"id": 1001, "name": "Acme AB", "customerno": "100234"}))
    from_bfus = validate_envelope(message(7, "100234"))
    assert linked.partition_key({"company": "customerno"}) == from_bfus.partition_key == "100234"
    assert linked.partition_key({"agreement": "contractno"}) == "lime:company:1001"
    assert customer_keys(build_config({}, environ={}).mapping) == {"company": "customerno"}


def test_a_delete_event_with_id_and_limetype_only_is_parsed() -> None:
    body = json.dumps({"event": "company.delete", "body": {"id": 7, "limetype": "company"}}).encode()
    assert parse_event(body) == LimeEvent("company", "delete", 7, {})


def test_the_stand_ins_own_delivery_bodies_parse() -> None:
    """What sandbox/lime/webhooks.py sends: unknown keys are allowed, values may be null."""
    body = json.dumps({"event": "company.new", "body": {"id": 3, "limetype": "company", "values": None,
                                                        "original_values": None, "extra": 1}}).encode()
    assert parse_event(body) == LimeEvent("company", "new", 3, {})


def rejected(body: bytes) -> EnvelopeError:
    with pytest.raises(EnvelopeError) as caught:
        parse_event(body)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"event": "company.update",}', b"\xff\xfe"])
def test_invalid_json_is_400_invalid_json(body: bytes) -> None:
    assert rejected(body).reason == "invalid_json"


@pytest.mark.parametrize("body", [b"[]", b'"company.update"', b"1", b"null",
                                  json.dumps([{"event": "company.update", "body": {"id": 1}}]).encode()])
def test_json_that_is_not_an_object_is_400(body: bytes) -> None:
    err = rejected(body)
    assert err.reason == "invalid_json" and "one JSON object" in err.message


def test_an_event_without_a_body_is_400() -> None:
    err = rejected(json.dumps({"event": "company.update"}).encode())
    assert err.reason == "invalid_event" and "body" in err.message


def test_a_body_without_an_id_is_400() -> None:
    body = json.dumps({"event": "company.update", "body": {"limetype": "company"}}).encode()
    err = rejected(body)
    assert err.reason == "invalid_event" and "body.id" in err.message


@pytest.mark.parametrize("bad_id", [0, -1, "1001", 1.5, True, None, 2**63])
def test_an_id_that_is_not_a_positive_64_bit_integer_is_400(bad_id: Any) -> None:
    err = rejected(event(id=bad_id))
    assert err.reason == "invalid_event" and "body.id" in err.message


def test_a_body_for_another_limetype_than_the_event_is_400() -> None:
    err = rejected(event("company.update", limetype="person"))
    assert err.reason == "invalid_event"
    assert "'person'" in err.message and "'company'" in err.message


@pytest.mark.parametrize("name", ["company", "Company.update", "company.", ".update", "company.update.x",
                                  "company update", "", "company.frobnicate", "company.updated"])
def test_a_bad_event_name_is_400(name: str) -> None:
    err = rejected(event(name))
    assert err.reason == "invalid_event" and "event: " in err.message


def test_the_stand_ins_msg_dropped_event_is_400() -> None:
    body = json.dumps({"event": "webhook.msg_dropped",
                       "body": {"subscription": 1, "event": "company.update", "delivery_id": DELIVERY}}).encode()
    assert rejected(body).reason == "invalid_event"


@pytest.mark.parametrize("action", ["new", "update", "delete", "restore"])
def test_every_action_lime_sends_is_taken(action: str) -> None:
    assert parse_event(event(f"company.{action}")).action == action


def test_an_event_name_given_twice_is_400() -> None:
    body = b'{"event": "company.update", "event": "company.delete", "body": {"id": 1, "limetype": "company"}}'
    err = rejected(body)
    assert err.reason == "invalid_event" and "event" in err.message


# ----------------------------------------------------------------------------- Deliveries


def test_a_noted_id_is_seen_by_another_instance_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "deliveries.sqlite"
    first, second = Deliveries(path, 600), Deliveries(path, 600)
    assert not first.seen(DELIVERY) and not second.seen(DELIVERY)
    assert first.note(DELIVERY) is True
    assert first.seen(DELIVERY) and second.seen(DELIVERY)
    assert second.note(DELIVERY) is False  # the other one noted it first
    assert not second.seen("another-delivery")


def test_an_id_noted_by_another_process_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "deliveries.sqlite"
    here = Deliveries(path, 600)
    code = ("import sys; from receiver.deliveries import Deliveries; "
            "sys.exit(0 if Deliveries(sys.argv[1], 600).note(sys.argv[2]) else 3)")
    done = subprocess.run([sys.executable, "-c", code, str(path), DELIVERY], capture_output=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr.decode()
    assert here.seen(DELIVERY)
    assert here.note(DELIVERY) is False


def test_deliveries_in_different_files_are_apart(tmp_path: Path) -> None:
    Deliveries(tmp_path / "a.sqlite", 600).note(DELIVERY)
    assert not Deliveries(tmp_path / "b.sqlite", 600).seen(DELIVERY)


class Clock:
    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now


def test_an_id_older_than_keep_is_not_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(NOW)
    monkeypatch.setattr(deliveries_module, "time", SimpleNamespace(time=clock.time))
    deliveries = Deliveries(tmp_path / "deliveries.sqlite", keep=600)
    deliveries.note(DELIVERY)
    clock.now = NOW + 599
    assert deliveries.seen(DELIVERY)
    clock.now = NOW + 601
    assert not deliveries.seen(DELIVERY)
    assert not Deliveries(tmp_path / "deliveries.sqlite", keep=600).seen(DELIVERY)


def test_old_ids_are_forgotten_as_new_ones_are_noted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(NOW)
    monkeypatch.setattr(deliveries_module, "time", SimpleNamespace(time=clock.time))
    path = tmp_path / "deliveries.sqlite"
    deliveries = Deliveries(path, keep=600)
    deliveries.note("old")
    clock.now = NOW + 1000
    for i in range(498):
        deliveries.note(f"new-{i}")
    assert deliveries.seen("new-0") and not deliveries.seen("old")

    def stored() -> set[str]:
        with sqlite3.connect(path) as db:
            return {row[0] for row in db.execute("select id from delivery")}

    assert len(stored()) == 499 and "old" in stored()
    # The 500th note purges what is older than keep; the fresh ones stay.
    deliveries.note("new-498")
    assert stored() == {f"new-{i}" for i in range(499)}


def test_without_a_path_the_default_file_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(deliveries_module, "default_path", lambda: tmp_path / "default.sqlite")
    Deliveries("", 600).note(DELIVERY)
    assert Deliveries(tmp_path / "default.sqlite", 600).seen(DELIVERY)
