"""The Lime CRM stand-in implements contract.md §3, over real HTTP."""

from __future__ import annotations

import datetime as dt
import html
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from htmlpage import Page

from sandbox.lime.api import MOST_BODY
from sandbox.lime.app import LimeSandboxSettings, LimeStandIn
from sandbox.lime.schema import Limetype, load_schema
from sandbox.lime.store import LimeStore
from sandbox.stack import wait_for

ADMIN = {"X-Admin-Key": "dev-lime-admin"}


class Api:
    def __init__(self, lime: LimeStandIn):
        self.base = lime.api_url
        self.root = lime.server.url
        self.headers = {"X-API-Key": lime.api_key}

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(path if path.startswith("http") else self.base + path, headers=self.headers, timeout=10,
                            **kw)

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(self.base + path, json=body, headers=self.headers, timeout=10)

    def put(self, path: str, body: Any) -> requests.Response:
        return requests.put(self.base + path, json=body, headers=self.headers, timeout=10)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.base + path, headers=self.headers, timeout=10)

    def faults(self, **faults: Any) -> requests.Response:
        return requests.put(f"{self.root}_admin/faults", json=faults, headers=ADMIN, timeout=10)

    def company(self, **values: Any) -> dict[str, Any]:
        response = self.post("limeobject/company/", {"name": "Acme AB", **values})
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture
def api(lime: LimeStandIn) -> Api:
    return Api(lime)


def test_limetypes_list_properties_with_types_options_and_relations(api: Api) -> None:
    body = api.get("limetype/").json()
    names = {lt["name"] for lt in body["_embedded"]["limetypes"]}
    assert {"company", "person", "agreement", "facility", "bfusprocessedmessage", "bfusfailedmessage"} <= names
    company = api.get("limetype/company/").json()
    props = {p["name"]: p for p in company["_embedded"]["properties"]}
    assert props["name"]["type"] == "string" and props["name"]["required"] is True and props["name"]["length"] == 128
    assert [o["key"] for o in props["bfusstatus"]["options"]] == ["active", "inactive", "former", "deleted"]
    assert {"id", "key", "text", "inactive"} <= set(props["bfusstatus"]["options"][0])
    person = {p["name"]: p for p in api.get("limetype/person/").json()["_embedded"]["properties"]}
    assert person["company"]["type"] == "belongsto"
    assert person["company"]["_links"]["related_type"]["name"] == "company"


def test_unknown_limetype_is_404(api: Api) -> None:
    response = api.get("limetype/spaceship/")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert api.get("limeobject/spaceship/").status_code == 404


def test_create_returns_201_with_hal_object(api: Api) -> None:
    response = api.post("limeobject/company/", {"name": "Öberg El AB", "customerno": "100234"})
    assert response.status_code == 201
    assert response.headers["Content-Type"].startswith("application/hal+json")
    obj = response.json()
    assert obj["name"] == "Öberg El AB" and obj["customerno"] == "100234"
    assert isinstance(obj["_id"], int) and obj["_descriptive"] == "Öberg El AB"
    assert obj["_links"]["self"]["href"].endswith(f"limeobject/company/{obj['_id']}/")
    assert obj["_links"]["limetype"]["name"] == "company"
    for stamp in (obj["_timestamp"], obj["_createdtime"]):
        assert dt.datetime.fromisoformat(stamp).tzinfo is not None


def test_read_and_missing_object(api: Api) -> None:
    created = api.company(customerno="1")
    assert api.get(f"limeobject/company/{created['_id']}/").json()["customerno"] == "1"
    missing = api.get("limeobject/company/999999/")
    assert missing.status_code == 404
    assert set(missing.json()) == {"error", "message"}


def test_put_is_partial(api: Api) -> None:
    created = api.company(customerno="7", phone="+468123456", email="a@example.se")
    response = api.put(f"limeobject/company/{created['_id']}/", {"phone": "+4640999999"})
    assert response.status_code == 200
    updated = api.get(f"limeobject/company/{created['_id']}/").json()
    assert updated["phone"] == "+4640999999"
    assert updated["email"] == "a@example.se" and updated["customerno"] == "7"
    assert updated["_timestamp"] >= created["_timestamp"]


def test_delete_is_204_then_404(api: Api) -> None:
    created = api.company()
    assert api.delete(f"limeobject/company/{created['_id']}/").status_code == 204
    assert api.get(f"limeobject/company/{created['_id']}/").status_code == 404
    assert api.delete(f"limeobject/company/{created['_id']}/").status_code == 404


def test_option_is_read_as_id_key_text_and_written_as_key(api: Api) -> None:
    obj = api.company(bfusstatus="former")
    assert obj["bfusstatus"]["key"] == "former"
    assert obj["bfusstatus"]["text"] == "Former customer"
    assert isinstance(obj["bfusstatus"]["id"], int)
    bad = api.post("limeobject/company/", {"name": "x", "bfusstatus": "gone"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_option" and "gone" in bad.json()["message"]


def test_yesno_is_boolean(api: Api) -> None:
    assert api.company(einvoice=True)["einvoice"] is True
    assert api.company()["einvoice"] is False
    assert api.post("limeobject/company/", {"name": "x", "einvoice": "yes"}).status_code == 400


def test_belongsto_is_related_id(api: Api) -> None:
    company = api.company()
    person = api.post("limeobject/person/", {"name": "Åsa Öberg", "company": company["_id"]})
    assert person.status_code == 201
    assert person.json()["company"] == company["_id"]
    assert "relation_company" in person.json()["_links"]
    dangling = api.post("limeobject/person/", {"name": "x", "company": 424242})
    assert dangling.status_code == 400 and dangling.json()["error"] == "invalid_relation"


def test_times_and_dates(api: Api) -> None:
    record = api.post("limeobject/bfusprocessedmessage/", {"messageid": 1,
                                                           "bfustimestamp": "2026-11-24T09:15:02.123+01:00"})
    assert record.status_code == 201
    stamp = dt.datetime.fromisoformat(record.json()["bfustimestamp"])
    assert stamp == dt.datetime(2026, 11, 24, 8, 15, 2, 123000, tzinfo=dt.UTC)
    assert api.company(bfuscreateddate="2020-02-29")["bfuscreateddate"] == "2020-02-29"
    assert api.post("limeobject/company/", {"name": "x", "bfuscreateddate": "29/02/2020"}).status_code == 400


@pytest.mark.parametrize(
    "body, code",
    [
        ({"name": "x", "shoesize": 44}, "unknown_property"),
        ({"name": None}, "invalid_value"),
        ({"name": "x", "phone": None}, "invalid_value"),
        ({"customerno": "1"}, "required"),
        ({"name": "x" * 129}, "invalid_value"),
        ({"name": "x", "bfuslastmessageid": "12"}, "invalid_value"),
    ],
    ids=["unknown property", "null name", "null phone", "missing required", "too long", "text for integer"],
)
def test_bad_values_are_400_with_error_and_message(api: Api, body: dict, code: str) -> None:
    response = api.post("limeobject/company/", body)
    assert response.status_code == 400
    assert response.json()["error"] == code
    assert response.json()["message"]
    assert api.get("limeobject/company/").json()["_embedded"]["limeobjects"] == []


def test_bad_value_in_put_changes_nothing(api: Api) -> None:
    obj = api.company(phone="+468111111")
    response = api.put(f"limeobject/company/{obj['_id']}/", {"phone": "+468222222", "name": None})
    assert response.status_code == 400
    assert api.get(f"limeobject/company/{obj['_id']}/").json()["phone"] == "+468111111"


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'{"name": "x"}', "text/plain"),
        (b'{"name": ', "application/json"),
        (b'["name", "x"]', "application/json"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json"),
        (b'{"name": "\xff\xfe"}', "application/json"),
    ],
    ids=["not sent as JSON", "cut short", "not an object", "nested 100,000 deep", "not UTF-8"],
)
def test_a_body_that_is_not_a_json_object_is_400_and_writes_nothing(api: Api, data: bytes, content_type: str) -> None:
    response = requests.post(api.base + "limeobject/company/", data=data,
                             headers={**api.headers, "Content-Type": content_type}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_body"
    assert api.get("limeobject/company/").json()["_embedded"]["limeobjects"] == []


def test_an_unknown_path_is_404_and_a_wrong_method_405_in_json_and_not_counted(api: Api) -> None:
    requests.post(f"{api.root}_admin/stats/reset", headers=ADMIN, timeout=10)
    missing = api.get("nothing/here/")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = requests.patch(api.base + "limeobject/company/", json={}, headers=api.headers, timeout=10)
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert requests.get(f"{api.root}_admin/stats", headers=ADMIN, timeout=10).json()["total"] == 0


def test_an_unknown_limetype_is_named_as_sent_also_outside_ascii(api: Api) -> None:
    for path in ("limetype/k%C3%A4nd/", "limeobject/k%C3%A4nd/"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json()["message"] == "Limetype 'känd' does not exist."


@pytest.mark.parametrize("request_line", [b"GET /lime/api/v1/limeobject/company/?name=\xe5 HTTP/1.1",
                                          b"GET /lime/api/v1/limeobject/\xe5/ HTTP/1.1", b"NOT HTTP AT ALL"],
                         ids=["raw byte in the query", "raw byte in the path", "no request line"])
def test_a_request_that_is_not_http_gets_400_and_the_api_serves_on(lime: LimeStandIn, api: Api,
                                                                     request_line: bytes) -> None:
    with socket.create_connection(("127.0.0.1", lime.server.port), timeout=10) as sock:
        sock.sendall(request_line + b"\r\nHost: lime\r\nX-API-Key: " + lime.api_key.encode() + b"\r\n\r\n")
        assert sock.makefile("rb").readline().split()[1] == b"400"
    assert api.get("limeobject/company/").status_code == 200


HUGE = 10**30  # beyond any integer Lime (or SQLite) stores


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "limeobject/company/", {"name": "Acme AB", "bfuslastmessageid": HUGE}),
    ("POST", "limeobject/company/", {"name": "Acme AB", "bfuslastmessageid": -HUGE}),
    ("POST", "limeobject/person/", {"firstname": "Ada", "company": HUGE}),
    ("PUT", "limeobject/company/{id}/", {"bfuslastmessageid": HUGE}),
    ("GET", f"limeobject/bfusprocessedmessage/?messageid={HUGE}", None),
    ("GET", f"limeobject/bfusprocessedmessage/?min-messageid={HUGE}", None),
    ("GET", f"limeobject/company/?_id={HUGE}", None),
    ("GET", f"limeobject/company/?_offset_id={HUGE}", None),
    ("GET", f"limeobject/company/?_sort=name&_offset={HUGE}", None),
], ids=["integer", "negative integer", "relation", "update", "filter", "min- filter", "_id filter", "_offset_id",
        "_offset"])
def test_a_number_beyond_what_lime_stores_is_400_and_writes_nothing(api: Api, method: str, path: str,
                                                                     body: dict[str, Any] | None) -> None:
    company = api.company(bfuslastmessageid=7)
    response = requests.request(method, api.base + path.format(id=company["_id"]), json=body, headers=api.headers,
                                timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid_value", "invalid_relation", "invalid_filter", "invalid_parameter")
    assert [c["bfuslastmessageid"] for c in api.get("limeobject/company/").json()["_embedded"]["limeobjects"]] == [7]
    assert api.get("limeobject/person/").json()["_embedded"]["limeobjects"] == []


@pytest.mark.parametrize("path", [f"limeobject/company/{HUGE}/", f"subscription/{HUGE}/", "limeobject//company/",
                                  "limetype//company/"])
def test_an_id_beyond_what_lime_stores_or_an_empty_path_segment_is_404(api: Api, path: str) -> None:
    response = api.get(path, allow_redirects=False)
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_a_body_past_the_limit_is_413_and_the_standin_serves_on(lime: LimeStandIn, api: Api) -> None:
    """The API reads a body into memory: it stops past MOST_BODY bytes."""
    response = requests.post(api.base + "limeobject/company/", data=b"x" * (MOST_BODY + 1),
                             headers={**api.headers, "Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 413 and response.json()["error"] == "too_large"
    with socket.create_connection(("127.0.0.1", lime.server.port), timeout=10) as sock:  # the admin, on the header
        sock.sendall(b"PUT /_admin/faults HTTP/1.1\r\nHost: lime\r\nX-Admin-Key: dev-lime-admin\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{}" % (MOST_BODY + 1))
        assert sock.makefile("rb").readline().split()[1] == b"413"
    assert api.get("limeobject/company/").json()["_embedded"]["limeobjects"] == []


def test_a_closed_standin_leaves_none_of_its_threads_behind(tmp_path: Path) -> None:
    """Tests start hundreds of stand-ins: each must take its server's, the admin's and
    the webhooks' threads with it when closed."""
    before = set(threading.enumerate())
    lime = LimeStandIn(LimeSandboxSettings(db_path=tmp_path / "lime.db")).start()
    api = Api(lime)
    assert api.get("limeobject/company/").status_code == 200
    assert requests.get(f"{api.root}_admin/stats", headers=ADMIN, timeout=10).status_code == 200
    assert len(set(threading.enumerate()) - before) >= 2  # the loop's and an admin request's at least
    lime.close()
    wait_for(lambda: not [t for t in set(threading.enumerate()) - before if t.is_alive()], 10,
             "the stand-in's threads to end")


def test_missing_or_wrong_api_key_is_401(api: Api) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}):
        response = requests.get(api.base + "limeobject/company/", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"


def test_paging_by_keyset_next_links(api: Api) -> None:
    """As Lime: in _id order the next link carries the last id seen (_offset_id), so an
    object created or deleted while a client pages shifts nothing."""
    for i in range(23):
        api.company(customerno=f"{i:03d}")
    first = api.get("limeobject/company/").json()
    assert len(first["_embedded"]["limeobjects"]) == 10  # default page size
    seen, url, pages = [], "limeobject/company/?_limit=7", 0
    while url:
        page = api.get(url).json()
        seen += [o["customerno"] for o in page["_embedded"]["limeobjects"]]
        url = page["_links"].get("next", {}).get("href")
        if url:
            assert "_offset_id=" in url and "_offset=" not in url
        if pages == 0:
            api.delete(f"limeobject/company/{page['_embedded']['limeobjects'][0]['_id']}/")  # behind the reader
        pages += 1
    assert seen == [f"{i:03d}" for i in range(23)]
    assert pages == 4
    by_offset = api.get("limeobject/company/?_limit=7&_sort=customerno&_offset=14").json()
    assert "_offset=21" in by_offset["_links"]["next"]["href"] and "prev" in by_offset["_links"]


def test_equality_and_range_filters_and_sort(api: Api) -> None:
    for i, status in enumerate(["active", "former", "active", "inactive", "active"]):
        api.company(customerno=f"C{i}", bfusstatus=status, bfuslastmessageid=i * 10, einvoice=i % 2 == 0)

    def numbers(query: str) -> list[str]:
        response = api.get(f"limeobject/company/?{query}")
        assert response.status_code == 200, response.text
        return [o["customerno"] for o in response.json()["_embedded"]["limeobjects"]]

    assert numbers("bfusstatus=active") == ["C0", "C2", "C4"]
    assert numbers("customerno=C3") == ["C3"]
    assert numbers("einvoice=true") == ["C0", "C2", "C4"]
    assert numbers("min-bfuslastmessageid=10&max-bfuslastmessageid=30") == ["C1", "C2", "C3"]
    assert numbers("bfusstatus=active&min-bfuslastmessageid=15") == ["C2", "C4"]
    assert numbers("_sort=-bfuslastmessageid") == ["C4", "C3", "C2", "C1", "C0"]
    assert numbers("_sort=bfusstatus,-customerno")[:3] == ["C4", "C2", "C0"]
    assert api.get("limeobject/company/?shoesize=44").status_code == 400
    assert api.get("limeobject/company/?_sort=shoesize").status_code == 400


def test_fault_down_answers_503_until_lifted(api: Api) -> None:
    assert api.faults(down=True).status_code == 200
    assert api.get("limeobject/company/").status_code == 503
    api.faults(down=False)
    assert api.get("limeobject/company/").status_code == 200


def test_fault_error_rate_fails_that_share(api: Api) -> None:
    api.faults(error_rate=0.3)
    statuses = [api.get("limetype/company/").status_code for _ in range(200)]
    assert set(statuses) == {200, 500}
    assert 30 <= statuses.count(500) <= 90  # seeded: about 60 of 200


def test_fault_latency_delays_requests(api: Api) -> None:
    api.faults(latency_ms=150)
    started = time.monotonic()
    assert api.get("limetype/company/").status_code == 200
    assert time.monotonic() - started >= 0.15


def test_rate_limit_answers_429_with_retry_after(api: Api) -> None:
    api.faults(rate_limit=5, rate_window=60)
    statuses = [api.get("limetype/company/") for _ in range(7)]
    assert [r.status_code for r in statuses] == [200] * 5 + [429] * 2
    assert 1 <= int(statuses[-1].headers["Retry-After"]) <= 60


def test_admin_needs_its_own_key_and_rejects_unknown_faults(api: Api) -> None:
    assert requests.put(f"{api.root}_admin/faults", json={"down": True}, headers=api.headers,
                        timeout=10).status_code == 401
    response = api.faults(explode=True)
    assert response.status_code == 400 and "explode" in response.json()["message"]
    assert api.faults(error_rate=2).status_code == 400


@pytest.mark.parametrize("fault", [{"latency_ms": 1e308}, {"latency_ms": 10**400}, {"jitter_ms": 3_600_001},
                                   {"spike_ms": 1e300}, {"rate_limit": 10**30}, {"rate_limit": 1.5},
                                   {"rate_window": 1e308}, {"error_rate": 1.5}])
def test_a_fault_beyond_its_range_is_400_naming_it_and_changes_nothing(api: Api, fault: dict[str, Any]) -> None:
    """A latency of 1e308 ms would hang every request for good; 10^400 was a 500."""
    before = requests.get(f"{api.root}_admin/faults", headers=ADMIN, timeout=10).json()
    response = api.faults(**fault)
    assert response.status_code == 400 and response.json()["error"] == "invalid_fault"
    assert f"'{next(iter(fault))}'" in response.json()["message"]
    assert requests.get(f"{api.root}_admin/faults", headers=ADMIN, timeout=10).json() == before
    assert api.get("limetype/company/").status_code == 200


def test_requests_are_counted_by_method_and_limetype(api: Api) -> None:
    requests.post(f"{api.root}_admin/stats/reset", headers=ADMIN, timeout=10)
    api.company()
    api.company()
    api.get("limeobject/company/")
    api.get("limeobject/person/")
    stats = requests.get(f"{api.root}_admin/stats", headers=ADMIN, timeout=10).json()
    assert stats["requests"] == {"POST company": 2, "GET company": 1, "GET person": 1}
    assert stats["total"] == 4


def test_the_admin_api_answers_plain_json(api: Api) -> None:
    for path in ("_admin/faults", "_admin/stats", "_admin/webhooks", "_admin/counts", "_admin/objects/company"):
        response = requests.get(f"{api.root}{path}", headers=ADMIN, timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/json", path


# --------------------------------------------------------------------------- link properties and the card (issue 13)

JUMP = "https://bfus-lime.example.se/jump/company/1001?client=MFU&sig=9f2c0a"


def test_bfuslink_is_a_link_property_of_the_synced_limetypes(api: Api) -> None:
    for limetype in ("company", "agreement", "facility", "meter"):
        props = {p["name"]: p for p in api.get(f"limetype/{limetype}/").json()["_embedded"]["properties"]}
        assert props["bfuslink"] == {"name": "bfuslink", "localname": "Open in MFU", "type": "link",
                                     "required": False, "length": 512}
    person = {p["name"] for p in api.get("limetype/person/").json()["_embedded"]["properties"]}
    assert "bfuslink" not in person


@pytest.mark.parametrize("value", [JUMP, "http://127.0.0.1:8080/jump/meter/7?client=BFU&sig=ab", "HTTPS://Lime.Test",
                                   ""])
def test_a_link_property_takes_an_http_address_or_nothing(api: Api, value: str) -> None:
    created = api.company(bfuslink=value)
    assert created["bfuslink"] == value
    changed = api.put(f"limeobject/company/{created['_id']}/", {"bfuslink": JUMP if value == "" else ""})
    assert changed.status_code == 200 and changed.json()["bfuslink"] == (JUMP if value == "" else "")
    assert api.company()["bfuslink"] == ""  # unset: empty, as every text-like property


@pytest.mark.parametrize("value", [
    "javascript:alert(1)", "ftp://files.example.se/a", "bfus-lime.example.se/jump/company/1", "https://",
    "https:///path-only", "https://bfus lime.example.se/", " https://lime.test/", "https://[::1/", None, 5,
    "https://lime.test/" + "x" * 500,
])
def test_a_link_property_refuses_anything_else(api: Api, value: Any) -> None:
    refused = api.post("limeobject/agreement/", {"contractno": "A-1", "bfuslink": value})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_value", refused.text
    assert "agreement.bfuslink" in refused.json()["message"]
    agreement = api.post("limeobject/agreement/", {"contractno": "A-2"}).json()
    assert api.put(f"limeobject/agreement/{agreement['_id']}/", {"bfuslink": value}).status_code == 400
    assert api.get(f"limeobject/agreement/{agreement['_id']}/").json()["bfuslink"] == ""


def card(lime: LimeStandIn, limetype: str, object_id: Any) -> requests.Response:
    return requests.get(lime.card_url(limetype, object_id), timeout=10)  # no API key: a web-client page


def test_the_card_shows_the_properties_and_the_links_in_its_actionpad(lime: LimeStandIn, api: Api) -> None:
    company = api.company(name="Kvarnbackens Bageri AB", customerno="100234", registrationno="556677-8899",
                          bfusstatus="former", einvoice=True, bfuslink=JUMP)
    agreement = api.post("limeobject/agreement/", {"contractno": "A-77", "company": company["_id"],
                                                   "product": "water"}).json()
    response = card(lime, "company", company["_id"])
    assert lime.card_url("company", company["_id"]) == f"{lime.server.url}lime/web/company/{company['_id']}"
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    page = Page(response.text, "property")
    assert page.title == "Kvarnbackens Bageri AB · Company · Lime CRM"
    assert page.values["name"] == "Kvarnbackens Bageri AB" and page.values["customerno"] == "100234"
    assert page.values["registrationno"] == "556677-8899" and "Org. no" in response.text  # labelled by localname
    assert (page.values["bfusstatus"], page.values["einvoice"]) == ("Former customer", "Yes")  # as a user reads them
    assert page.values["agreements"] == "A-77"
    assert page.links[0] == ["Open in MFU", JUMP]  # the actionpad comes first
    assert ["A-77", f"/lime/web/agreement/{agreement['_id']}"] in page.links
    assert "bfuslink" not in page.values and "Open in MFU" not in page.values.values()  # only in the actionpad
    assert [text for text, _ in page.links].count("Open in MFU") == 1
    shown = card(lime, "agreement", agreement["_id"]).text  # its link is empty: no action
    back = Page(shown, "property")
    assert back.values["company"] == "Kvarnbackens Bageri AB" and back.values["product"] == "Water"
    assert ["Kvarnbackens Bageri AB", f"/lime/web/company/{company['_id']}"] in back.links
    assert "Open in MFU" not in {text for text, _ in back.links} and "No links." in shown


def test_a_card_is_not_an_api_request_and_outlives_lime_faults(lime: LimeStandIn, api: Api) -> None:
    company = api.company(bfuslink=JUMP)
    requests.post(f"{api.root}_admin/stats/reset", headers=ADMIN, timeout=10)
    api.faults(down=True)
    assert card(lime, "company", company["_id"]).status_code == 200
    api.faults(down=False)
    assert requests.get(f"{api.root}_admin/stats", headers=ADMIN, timeout=10).json()["total"] == 0


@pytest.mark.parametrize("path, text", [
    ("company/999999", "Lime has no company 999999."),
    ("spaceship/1001", "Lime has no limetype 'spaceship'."),
    ("company/abc", "Lime has no company abc."),
])
def test_an_unknown_card_is_a_404_page(lime: LimeStandIn, path: str, text: str) -> None:
    response = requests.get(f"{lime.web_url}{path}", timeout=10)
    assert response.status_code == 404 and response.headers["Content-Type"].startswith("text/html")
    assert text in html.unescape(response.text) and Page(response.text).title == "Not found · Lime CRM"


def test_a_property_added_to_the_schema_gets_its_column_in_an_existing_database(tmp_path: Path) -> None:
    schema = load_schema()
    older = {name: Limetype(lt.name, {k: p for k, p in lt.properties.items() if k != "bfuslink"}, lt.descriptive,
                            lt.localname) for name, lt in schema.items()}
    LimeStore(tmp_path / "lime.db", older).create("company", {"name": "Äldre AB"})
    store = LimeStore(tmp_path / "lime.db", schema)
    [company] = store.all_objects("company")
    assert company["bfuslink"] == ""
    assert store.update("company", company["_id"], {"bfuslink": JUMP})["bfuslink"] == JUMP


def test_an_answer_to_a_write_is_the_object_a_read_returns_after_it(tmp_path: Path) -> None:
    """The store builds a write's answer from the values it wrote (no read back) when
    SQLite keeps them as they are; every property type, and a default SQLite converts
    (then it reads the object back)."""
    from sandbox.lime.schema import parse_schema

    schema = parse_schema({"limetypes": {
        "thing": {"descriptive": "name", "properties": {
            "name": {"type": "string"}, "note": {"type": "text"}, "site": {"type": "link"},
            "count": {"type": "integer"}, "price": {"type": "decimal"}, "share": {"type": "percent"},
            "done": {"type": "yesno"}, "kind": {"type": "option", "options": ["a", "b"]},
            "when": {"type": "time"}, "day": {"type": "date"}, "parent": {"type": "belongsto", "related": "thing"},
            "level": {"type": "integer", "default": "5"},  # text SQLite turns into 5
        }}}})
    store = LimeStore(tmp_path / "lime.db", schema)
    parent = store.create("thing", {"name": "Förälder"})
    assert parent == store.get("thing", parent["_id"]) and parent["level"] == 5
    values = {"name": "Sak", "note": "rad 1\nrad 2", "site": "https://example.se/", "count": 3, "price": 7,
              "share": 12.5, "done": True, "kind": {"key": "b"}, "when": "2026-11-29T10:00:00Z", "day": "2026-11-29",
              "parent": parent["_id"]}
    created = store.create("thing", values)
    assert created == store.get("thing", created["_id"])
    assert created["price"] == 7.0 and isinstance(created["price"], float) and created["done"] is True
    before, after = store.change("thing", created["_id"], {"price": 8, "done": False, "kind": "a", "name": ""})
    assert before == created
    assert after == store.get("thing", created["_id"]) and after["_descriptive"] == f"thing {created['_id']}"
    assert store.update("thing", created["_id"], {"level": 6}) == store.get("thing", created["_id"])
    with pytest.raises(Exception, match="does not exist"):
        store.change("thing", 999_999, {"count": "not a number"})  # 404 before the values are checked


def test_a_property_gets_its_index_when_a_query_first_filters_on_it(api: Api, lime: LimeStandIn) -> None:
    """Each index costs every write of its table, so the stand-in makes one only for a
    property some query filters on (a filter answers the same with or without it)."""
    for number in ("1", "2", "3"):
        api.company(customerno=number)
    assert lime.store.indexed("company") == set()
    found = api.get("limeobject/company/", params={"customerno": "2"}).json()["_embedded"]["limeobjects"]
    assert [c["customerno"] for c in found] == ["2"]
    api.get("limeobject/company/", params={"min-_timestamp": "2000-01-01T00:00:00Z", "_id": found[0]["_id"]})
    assert lime.store.indexed("company") == {"customerno", "_timestamp"}
