"""The BFUS stand-in: realistic Swedish data, the customer API of contract.md §4, and
a queue that keeps a message at the head until it is answered 2xx."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, request

from sandbox.bfus.app import BfusSandboxSettings, BfusStandIn
from sandbox.bfus.swedish import luhn_digit
from sandbox.serve import ServerThread
from sandbox.stack import wait_for
from shared.envelope import parse_envelope


class Target:
    """A receiver stand-in that answers with the statuses it is told, in turn."""

    def __init__(self) -> None:
        self.answers: list[int] = []
        self.received: list[tuple[dict, dict]] = []
        self.lock = threading.Lock()
        app = Flask("target")

        @app.post("/bfus/messages")
        def take() -> Response:
            with self.lock:
                status = self.answers.pop(0) if self.answers else 202
                self.received.append((json.loads(request.data), dict(request.headers)))
            return Response("{}", status=status, content_type="application/json")

        self.server = ServerThread(app).start()

    @property
    def url(self) -> str:
        return f"{self.server.url}bfus/messages"


@pytest.fixture
def target() -> Iterator[Target]:
    t = Target()
    yield t
    t.server.stop()


@pytest.fixture
def bfus(tmp_path: Path, target: Target) -> Iterator[BfusStandIn]:
    standin = BfusStandIn(
        BfusSandboxSettings(db_path=tmp_path / "bfus.db", target_url=target.url, api_key="k", retry_pause=0.02, seed=3)
    ).start()
    yield standin
    standin.stop()


def luhn_ok(digits: str) -> bool:
    return luhn_digit(digits[:-1]) == int(digits[-1])


def test_seeded_customers_look_swedish_and_have_valid_numbers(bfus: BfusStandIn) -> None:
    bfus.changes.seed_customers(200)
    customers = [s["data"] for s in bfus.store.snapshots("customer")]
    assert len(customers) == 200
    private = [c for c in customers if c["customertype"] == "private"]
    company = [c for c in customers if c["customertype"] == "company"]
    assert private and company
    for c in private:
        assert re.fullmatch(r"(19|20)\d{6}-\d{4}", c["socialsecurityno"])
        assert luhn_ok(c["socialsecurityno"][2:].replace("-", ""))
        assert c["name"] == f"{c['firstname']} {c['lastname']}"
    for c in company:
        assert re.fullmatch(r"\d{6}-\d{4}", c["orgno"]) and luhn_ok(c["orgno"].replace("-", ""))
    for c in customers:
        assert re.fullmatch(r"\d{5}", c["zipcode"]) and c["country"] == "SE"
        assert c["phone"].startswith("+46") and c["status"] == "active"
    assert any(ch in "".join(c["name"] for c in customers) for ch in "åäöÅÄÖ")


def test_queue_posts_messages_in_order_with_the_api_key(bfus: BfusStandIn, target: Target) -> None:
    report = bfus.changes.make(30, customers=5)
    wait_for(lambda: bfus.store.queue_status()["pending"] == 0, 10, "the queue to drain")
    ids = [m["id"] for m, _ in target.received]
    assert ids == report.ids == sorted(ids)
    for message, headers in target.received:
        assert headers["X-Api-Key"] == "k" and headers["Content-Type"] == "application/json"
        env = parse_envelope(json.dumps(message).encode())  # each is a valid contract message
        assert env.customerno == env.key and env.data["customerno"] == env.key


def test_a_refused_message_stays_at_the_head_until_accepted(bfus: BfusStandIn, target: Target) -> None:
    bfus.poster.pause()
    target.answers = [503, 500, 400, 202]
    report = bfus.changes.make(3, customers=3)
    bfus.poster.resume()
    wait_for(lambda: bfus.store.queue_status()["pending"] == 0, 10, "the queue to drain")
    ids = [m["id"] for m, _ in target.received]
    first = report.ids[0]
    assert ids == [first, first, first, first, *report.ids[1:]]
    attempts = {m["id"]: m["attempts"] for m in bfus.store.messages()}
    assert attempts[first] == 4


def test_an_unreachable_receiver_holds_the_queue(bfus: BfusStandIn, target: Target) -> None:
    target.server.stop()
    report = bfus.changes.make(2, customers=2)
    wait_for(lambda: (bfus.store.queue_status()["head"] or {}).get("attempts", 0) >= 3, 10, "retries")
    assert bfus.store.queue_status()["pending"] == 2
    target.server.start()
    wait_for(lambda: bfus.store.queue_status()["pending"] == 0, 10, "the queue to drain")
    assert [m["id"] for m, _ in target.received] == report.ids


def test_changes_cover_creates_updates_and_deletes_with_full_snapshots(bfus: BfusStandIn, target: Target) -> None:
    report = bfus.changes.make(300, customers=50)
    assert report.created == 50 and report.updated > 200 and report.deleted > 0
    wait_for(lambda: bfus.store.queue_status()["pending"] == 0, 20, "the queue to drain")
    last = {}
    for message, _ in target.received:
        assert message["data"]["customerno"] == message["key"]
        last[message["key"]] = message
    for snapshot in bfus.store.snapshots("customer"):
        assert last[snapshot["key"]]["data"] == snapshot["data"]
        assert (last[snapshot["key"]]["operation"] == "deleted") == snapshot["deleted"]


def test_customer_api_pages_and_filters(bfus: BfusStandIn) -> None:
    bfus.poster.pause()
    bfus.changes.seed_customers(25)
    headers = {"Authorization": "Bearer dev-bfus-token"}
    assert requests.get(f"{bfus.url}api/v1/customers", timeout=5).status_code == 401
    url, seen = f"{bfus.url}api/v1/customers?limit=10", []
    while url:
        page = requests.get(url, headers=headers, timeout=5).json()
        assert page["total"] == 25
        seen += [c["customerno"] for c in page["items"]]
        url = page["next"]
    assert len(seen) == 25 == len(set(seen))
    one = requests.get(f"{bfus.url}api/v1/customers/{seen[0]}", headers=headers, timeout=5)
    assert one.status_code == 200 and one.json()["customerno"] == seen[0]
    assert requests.get(f"{bfus.url}api/v1/customers/999", headers=headers, timeout=5).status_code == 404
    active = requests.get(f"{bfus.url}api/v1/customers?status=active", headers=headers, timeout=5).json()
    assert active["total"] == 25
    assert requests.get(f"{bfus.url}api/v1/customers?status=former", headers=headers, timeout=5).json()["total"] == 0


def test_seeded_customers_have_facilities_contracts_and_meters(bfus: BfusStandIn) -> None:
    bfus.changes.seed_customers(50)
    store = bfus.store
    customers = {s["key"] for s in store.snapshots("customer")}
    facilities = {s["key"]: s["data"] for s in store.snapshots("facility")}
    contracts = [s["data"] for s in store.snapshots("contract")]
    meters = [s["data"] for s in store.snapshots("meter")]
    assert len(facilities) >= 50 and len(contracts) == len(facilities) and meters
    assert {f["customerno"] for f in facilities.values()} == customers
    for facilityno, facility in facilities.items():
        assert re.fullmatch(r"735999\d{12}", facilityno)
        assert re.fullmatch(r"[A-ZÅÄÖ ]+ [A-ZÅÄÖ]+ \d+:\d+", facility["propertydesignation"])
    for contract in contracts:
        assert contract["facilityno"] in facilities
        assert facilities[contract["facilityno"]]["customerno"] == contract["customerno"]
        assert contract["product"] in ("electricity", "districtheating", "water", "broadband", "gas")
    for meter in meters:
        assert facilities[meter["facilityno"]]["customerno"] == meter["customerno"]
    headers = {"Authorization": "Bearer dev-bfus-token"}
    page = requests.get(f"{bfus.url}api/v1/contracts?limit=5", headers=headers, timeout=5).json()
    assert page["total"] == len(contracts) and len(page["items"]) == 5 and page["next"]


def test_the_root_and_every_error_answer_json(bfus: BfusStandIn) -> None:
    root = requests.get(bfus.url, timeout=10)
    assert root.status_code == 200 and root.json()["api"]["customer"].endswith("/api/v1/customers")
    missing = requests.get(f"{bfus.url}no/such/page", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = requests.delete(f"{bfus.url}api/v1/customers", timeout=10)
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


CHECK = luhn_digit("800101123")
PERSON = {"customertype": "private", "firstname": "Ebba", "lastname": "Lund", "name": "Ebba Lund",
          "socialsecurityno": f"19800101-123{CHECK}", "street": "Storgatan 1", "zipcode": "21134", "city": "Malmö",
          "email": "ebba.lund@example.se"}


def write(bfus: BfusStandIn, method: str, path: str, body: Any) -> requests.Response:
    return requests.request(method, f"{bfus.url}api/v1/{path}", json=body, timeout=10,
                            headers={"Authorization": "Bearer dev-bfus-token"})


def test_a_valid_customer_is_created_numbered_and_sent_as_a_change(bfus: BfusStandIn, target: Target) -> None:
    person = PERSON
    created = write(bfus, "POST", "customers", person)
    assert created.status_code == 201, created.text
    customer = created.json()
    assert customer["customerno"] and customer["status"] == "active" and customer["name"] == "Ebba Lund"
    assert write(bfus, "GET", f"customers/{customer['customerno']}", None).json() == customer
    wait_for(lambda: target.received, 10, "the change message")
    message = target.received[0][0]
    assert (message["objecttype"], message["operation"], message["key"]) == (
        "customer", "created", customer["customerno"])
    changed = write(bfus, "PUT", f"customers/{customer['customerno']}", {"street": "Kungsgatan 2"})
    assert changed.status_code == 200 and changed.json()["street"] == "Kungsgatan 2"
    assert changed.json()["socialsecurityno"] == person["socialsecurityno"]  # the rest as it was
    wait_for(lambda: len(target.received) == 2, 10, "the update's change message")
    update = target.received[1][0]
    assert update["operation"] == "updated" and update["data"]["street"] == "Kungsgatan 2"
    same = write(bfus, "PUT", f"customers/{customer['customerno']}", {"street": "Kungsgatan 2"})
    assert same.status_code == 200 and bfus.store.queue_status()["last_id"] == 2  # nothing changed: no message
    assert write(bfus, "PUT", f"customers/{customer['customerno']}", {"email": "nope"}).status_code == 422
    number = customer["customerno"]
    assert bfus.accepted == [("POST", number, person), ("PUT", number, {"street": "Kungsgatan 2"}),
                             ("PUT", number, {"street": "Kungsgatan 2"})]  # what reached BFUS, refusals not
    assert bfus.writes == {"POST": 1, "PUT": 3}
    bfus.write_delay = 0.3  # a slow BFUS: counted at once, applied and answered later
    started = time.monotonic()
    slow = write(bfus, "PUT", f"customers/{number}", {"street": "Kungsgatan 3"})
    assert slow.status_code == 200 and time.monotonic() - started >= 0.3 and bfus.writes["PUT"] == 4


@pytest.mark.parametrize("change, field", [
    ({"socialsecurityno": f"19800101-123{(CHECK + 1) % 10}"}, "socialsecurityno"),  # wrong check digit
    ({"socialsecurityno": "19801301-1234"}, "socialsecurityno"),  # no 13th month
    ({"email": "not-an-address"}, "email"),
    ({"zipcode": "2113"}, "zipcode"),
    ({"lastname": ""}, "lastname"),
    ({"status": "former"}, "status"),  # BFUS's own field
    ({"colour": "green"}, "colour"),
])
def test_an_invalid_customer_is_refused_naming_the_field(bfus: BfusStandIn, change: dict, field: str) -> None:
    refused = write(bfus, "POST", "customers", {**PERSON, **change})
    assert refused.status_code == 422 and field in refused.json()["fields"], refused.text
    assert bfus.store.queue_status()["last_id"] == 0


def test_a_duplicate_personnummer_or_orgnr_is_409(bfus: BfusStandIn) -> None:
    [existing] = bfus.changes.seed_customers(1)
    data = bfus.store.get("customer", existing)["data"]  # type: ignore[index]
    number = {"socialsecurityno": data["socialsecurityno"]} if data["socialsecurityno"] else {
        "customertype": "company", "name": "Kopia AB", "orgno": data["orgno"]}
    refused = write(bfus, "POST", "customers", {**PERSON, **number})
    assert refused.status_code == 409 and refused.json()["customerno"] == existing


def test_writes_need_the_token_and_a_json_object(bfus: BfusStandIn) -> None:
    assert requests.post(f"{bfus.url}api/v1/customers", json=PERSON, timeout=10).status_code == 401
    assert write(bfus, "POST", "customers", ["not", "an", "object"]).status_code == 400
    assert write(bfus, "PUT", "customers/999999", {"street": "X 1"}).status_code == 404
