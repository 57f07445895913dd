"""The BFUS stand-in: realistic Swedish data, the customer API of contract.md §4, and
a queue that keeps a message at the head until it is answered 2xx."""

from __future__ import annotations

import html
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
from htmlpage import Page

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


def test_an_offset_beyond_what_bfus_counts_is_400(bfus: BfusStandIn) -> None:
    headers = {"Authorization": "Bearer dev-bfus-token"}
    response = requests.get(f"{bfus.url}api/v1/customers?offset={10**30}", headers=headers, timeout=5)
    assert response.status_code == 400 and response.json()["error"] == "invalid_parameter"


@pytest.mark.parametrize(("body", "field"), [
    ({"count": 10**30}, "count"), ({"count": True}, "count"), ({"count": 0}, "count"),
    ({"count": 3, "customers": 10**30}, "customers"), ({"count": 3, "delete_share": "most"}, "delete_share"),
    ({"count": 3, "delete_share": 2}, "delete_share"), ({"count": 3, "rate": "fast"}, "rate"),
    ({"count": 3, "objecttypes": "customer"}, "objecttypes"), ({"count": 3, "objecttypes": ["meter"]}, "objecttypes"),
    ({"count": 3, "objecttypes": ["customer", "x"]}, "objecttypes"), ({"count": 3, "colour": "red"}, "colour"),
])
def test_a_changes_request_the_admin_api_cannot_follow_is_400_naming_the_field_and_queues_nothing(
        bfus: BfusStandIn, body: dict[str, Any], field: str) -> None:
    bfus.poster.pause()
    before = bfus.store.queue_status()["pending"]
    response = requests.post(f"{bfus.url}_admin/changes", json=body, headers={"X-Admin-Key": "dev-bfus-admin"},
                             timeout=10)
    assert response.status_code == 400 and response.json()["error"] == "invalid_body"
    assert f"{field}:" in response.json()["message"]
    assert bfus.store.queue_status()["pending"] == before


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


# --------------------------------------------------------------------------- bookmarks and MFU (issue 13)

BEARER = {"Authorization": "Bearer dev-bfus-token"}


def bookmark(bfus: BfusStandIn, body: Any, **kw: Any) -> requests.Response:
    return requests.post(f"{bfus.url}api/v1/bookmarks", json=body, headers=kw.pop("headers", BEARER),
                         timeout=kw.pop("timeout", 10), **kw)


def one_of_each(bfus: BfusStandIn) -> dict[str, str]:
    """A seeded customer with a facility, contract and meter: objecttype -> key."""
    bfus.changes.seed_customers(3)
    keys = {"customer": bfus.store.keys("customer")[0]}
    children = bfus.store.children(keys["customer"])
    for objecttype in ("contract", "facility", "meter"):
        keys[objecttype] = next((c["key"] for c in children if c["objecttype"] == objecttype), "")
    if not keys["meter"]:  # not every facility is metered: any customer's meter
        keys["meter"] = bfus.store.keys("meter")[0]
    return keys


def test_a_bookmark_leads_to_the_objects_mfu_page(bfus: BfusStandIn) -> None:
    keys = one_of_each(bfus)
    assert bfus.ui_url == f"{bfus.url}mfu/"
    for objecttype, key in keys.items():
        made = bookmark(bfus, {"objecttype": objecttype, "key": key, "client": "MFU"})
        assert made.status_code == 201, made.text
        assert made.json() == {"url": f"{bfus.ui_url}{objecttype}/{key}"}
        page = requests.get(made.json()["url"], timeout=10)  # no token: a user-interface page
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        data = bfus.store.get(objecttype, key)["data"]  # type: ignore[index]
        shown = Page(page.text).values
        assert shown["objecttype"] == objecttype and shown["number"] == key and shown["status"]
        if objecttype == "customer":
            assert shown["name"] == data["name"] and Page(page.text).title == f"{data['name']} · MFU"
            assert shown["status"] == data["status"] == "active"
            children = {href for _, href in Page(page.text).links}
            assert f"/mfu/contract/{keys['contract']}" in children  # its contracts, facilities, meters
        else:
            assert shown["customerno"] == data["customerno"]
    assert bfus.bookmarks == [(t, k, "MFU") for t, k in keys.items()] and bfus.bookmark_requests == 4


def test_a_bfu_bookmark_is_a_page_under_the_ui_base_handing_over_to_the_desktop_client(bfus: BfusStandIn) -> None:
    keys = one_of_each(bfus)
    made = bookmark(bfus, {"objecttype": "contract", "key": keys["contract"], "client": "BFU"})
    assert made.status_code == 201
    url = made.json()["url"]
    assert url == f"{bfus.ui_url}contract/{keys['contract']}?client=BFU" and url.startswith(bfus.ui_url)
    page = Page(requests.get(url, timeout=10).text)
    assert ["Open in BFU", f"bfu://open/contract/{keys['contract']}"] in page.links
    assert ["stay in MFU", f"/mfu/contract/{keys['contract']}"] in page.links
    assert page.values["number"] == keys["contract"]  # and the object itself, in MFU
    assert bfus.bookmarks == [("contract", keys["contract"], "BFU")]


def test_a_key_is_quoted_in_the_bookmark_and_found_again_on_the_page(bfus: BfusStandIn) -> None:
    key = "A 7/B-ö"
    bfus.store.put_silently("contract", key, "100001", {"contractno": key, "customerno": "100001",
                                                        "status": "pending", "product": "gas"})
    url = bookmark(bfus, {"objecttype": "contract", "key": key, "client": "MFU"}).json()["url"]
    assert url == f"{bfus.ui_url}contract/A%207%2FB-%C3%B6"
    page = Page(requests.get(url, timeout=10).text)
    assert (page.values["number"], page.values["status"]) == (key, "pending")
    assert page.title == f"Contract {key} (gas) · MFU"


@pytest.mark.parametrize("body, field", [
    ({"objecttype": "invoice", "key": "1", "client": "MFU"}, "objecttype"),
    ({"key": "1", "client": "MFU"}, "objecttype"),
    ({"objecttype": "customer", "key": "", "client": "MFU"}, "key"),
    ({"objecttype": "customer", "key": 100001, "client": "MFU"}, "key"),
    ({"objecttype": "customer", "key": "1" * 65, "client": "MFU"}, "key"),
    ({"objecttype": "customer", "key": "100001"}, "client"),
    ({"objecttype": "customer", "key": "100001", "client": "mfu"}, "client"),
    ({"objecttype": "customer", "key": "100001", "client": "WEB"}, "client"),
    ({"objecttype": "customer", "key": "100001", "client": "MFU", "page": 2}, "page"),
])
def test_an_invalid_bookmark_request_is_422_naming_the_field(bfus: BfusStandIn, body: dict, field: str) -> None:
    bfus.changes.seed_customers(1)
    refused = bookmark(bfus, body)
    assert refused.status_code == 422, refused.text
    answer = refused.json()
    assert answer["error"] == "invalid_bookmark" and list(answer["fields"]) == [field]
    assert field in answer["message"] and bfus.bookmarks == []


def test_bookmark_refusals_not_an_object_no_token_unknown_and_deleted(bfus: BfusStandIn) -> None:
    [customerno] = bfus.changes.seed_customers(1)
    not_json = requests.post(f"{bfus.url}api/v1/bookmarks", data="customer", headers=BEARER, timeout=10)
    assert not_json.status_code == 400 and not_json.json()["error"] == "invalid_body"
    assert bookmark(bfus, ["customer", customerno, "MFU"]).status_code == 400
    wrong = bookmark(bfus, {"objecttype": "customer", "key": customerno, "client": "MFU"},
                     headers={"Authorization": "Bearer guessed"})
    assert wrong.status_code == 401 and wrong.json()["error"] == "unauthorized"
    unknown = bookmark(bfus, {"objecttype": "meter", "key": "99", "client": "MFU"})
    assert unknown.status_code == 404 and unknown.json() == {"error": "not_found", "message": "No meter 99 in BFUS."}
    data = bfus.store.get("customer", customerno)["data"]  # type: ignore[index]
    bfus.store.change("customer", "deleted", customerno, customerno, data)
    deleted = bookmark(bfus, {"objecttype": "customer", "key": customerno, "client": "BFU"})
    assert deleted.status_code == 404 and deleted.json() == {
        "error": "not_found", "message": f"The customer {customerno} was deleted in BFUS."}
    assert bfus.bookmarks == [] and bfus.bookmark_requests == 4  # the 401 never reached it
    for path, text in ((f"customer/{customerno}", f"Customer {customerno} was deleted in BFUS."),
                       ("meter/99", "BFUS has no meter 99."), ("invoice/1", "BFUS has no objecttype 'invoice'.")):
        page = requests.get(f"{bfus.ui_url}{path}", timeout=10)
        assert page.status_code == 404 and page.headers["Content-Type"].startswith("text/html")
        assert text in html.unescape(page.text) and Page(page.text).title == "Not found in BFUS · MFU"


def test_bfus_down_answers_bookmarks_503_and_a_slow_one_answers_late(bfus: BfusStandIn) -> None:
    [customerno] = bfus.changes.seed_customers(1)
    body = {"objecttype": "customer", "key": customerno, "client": "MFU"}
    bfus.unavailable = True
    down = bookmark(bfus, body)
    assert down.status_code == 503 and down.json()["error"] == "unavailable"
    assert bfus.bookmark_requests == 0 and bfus.bookmarks == []
    assert requests.get(f"{bfus.ui_url}customer/{customerno}", timeout=10).status_code == 200  # the UI: not the API
    bfus.unavailable = False
    assert bookmark(bfus, body).status_code == 201
    bfus.bookmark_delay = 0.5
    with pytest.raises(requests.Timeout):
        bookmark(bfus, body, timeout=0.1)  # a caller that waits less than BFUS takes
    started = time.monotonic()
    assert bookmark(bfus, body).status_code == 201 and time.monotonic() - started >= 0.5


def test_a_test_can_make_bookmarks_answer_outside_the_ui_base(bfus: BfusStandIn) -> None:
    [customerno] = bfus.changes.seed_customers(1)
    body = {"objecttype": "customer", "key": customerno, "client": "MFU"}
    bfus.bookmark_base_override = "https://evil.example/mfu/"
    assert bookmark(bfus, body).json()["url"] == f"https://evil.example/mfu/customer/{customerno}"
    admin = {"X-Admin-Key": "dev-bfus-admin"}
    assert requests.put(f"{bfus.url}_admin/bookmarks", json={"base_override": "x"}, timeout=10).status_code == 401
    climbing = f"{bfus.ui_url}../../"
    put = requests.put(f"{bfus.url}_admin/bookmarks", json={"base_override": climbing}, headers=admin, timeout=10)
    assert put.status_code == 200 and put.json() == {"ui_url": bfus.ui_url, "base_override": climbing, "made": 1,
                                                     "requests": 1}
    assert bookmark(bfus, body).json()["url"] == f"{climbing}customer/{customerno}"
    for bad in ({"base_override": ""}, {"base_override": 5}, {}, ["x"]):
        assert requests.put(f"{bfus.url}_admin/bookmarks", json=bad, headers=admin, timeout=10).status_code == 400
    back = requests.put(f"{bfus.url}_admin/bookmarks", json={"base_override": None}, headers=admin, timeout=10)
    assert back.json()["base_override"] is None and bfus.bookmark_base_override is None
    assert bookmark(bfus, body).json()["url"] == f"{bfus.ui_url}customer/{customerno}"
    status = requests.get(f"{bfus.url}_admin/bookmarks", headers=admin, timeout=10).json()
    assert (status["made"], status["requests"]) == (3, 3)
    assert requests.get(bfus.url, timeout=10).json()["ui"] == bfus.ui_url


def test_the_ui_base_can_be_configured(tmp_path: Path) -> None:
    standin = BfusStandIn(BfusSandboxSettings(db_path=tmp_path / "bfus.db", target_url="http://127.0.0.1:9/",
                                              api_key="k", ui_url="https://bfus.example.se/ui"), post=False)
    assert standin.ui_url == "https://bfus.example.se/ui/"
    assert standin.bookmark_url("facility", "735999100000000001", "BFU") == (
        "https://bfus.example.se/ui/facility/735999100000000001?client=BFU")
