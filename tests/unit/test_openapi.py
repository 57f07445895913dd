"""The OpenAPI description (receiver/openapi.yaml, issue 16) against the receiver's
code: the document is valid OpenAPI 3.1, ``GET /openapi.json`` serves it, every route
the app registers is described and every described operation is registered, and
real answers (Flask's test client; the broker, Lime and BFUS replaced by fakes) match
it: each answer's status is listed for its operation, its content type too, its body
fits the schema and its required headers are there. And the other way round: every
status the document lists for an operation is produced by one of these requests.

Two answers are the HTTP server's, not the app's, and are checked over real HTTP in
tests/integration/test_receiver_schemathesis.py: the plain-text 413 for a body over 4
x the limit, and (with everything else) every answer to generated requests."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.test import TestResponse

from deadletters import admin as admin_pages
from fakes import RecordingPublisher
from receiver.app import create_app
from receiver.openapi import document
from shared.bfus import BfusError, BfusRejected, BfusUnavailable
from shared.config import build_config
from shared.jumplinks import sign
from shared.lime import LimeRejected, LimeUnavailable

KEY = "unit-receiver-key"
LIME_SECRET = "unit-lime-secret"
JUMP_SECRET = "unit-jump-secret-0123456789"
UI = "https://bfus.example.se/mfu/"
ADMIN = ("ops", "unit-admin-password")
MAX_BODY = 2048


# ----------------------------------------------------------------------------- the document itself


def test_the_document_is_valid_openapi_3_1() -> None:
    assert document()["openapi"].startswith("3.1.")
    validate(document())


def test_openapi_json_serves_the_document(app: Flask) -> None:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert json.loads(response.data) == document()
    assert list(json.loads(response.data)) == list(document())  # in the document's order, not sorted


def openapi_path(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path: ``<int:object_id>`` -> ``{object_id}``."""
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_route_of_the_app_is_described_and_every_described_one_exists(app: Flask) -> None:
    """HEAD and OPTIONS are the framework's (the document's description says so)."""
    registered = {(openapi_path(rule.rule), method.lower()) for rule in app.url_map.iter_rules()
                  for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
    described = {(path, method) for path, item in document()["paths"].items() for method in item}
    assert registered - described == set(), "routes the document does not describe"
    assert described - registered == set(), "described operations the app does not serve"


# ----------------------------------------------------------------------------- answers against it


def resolve(node: Any) -> Any:
    """A ``$ref`` into the document, followed."""
    while isinstance(node, dict) and "$ref" in node:
        found: Any = document()
        for part in node["$ref"].removeprefix("#/").split("/"):
            found = found[part.replace("~1", "/").replace("~0", "~")]
        node = found
    return node


def absolute_refs(schema: Any) -> Any:
    """``#/components/...`` as ``urn:openapi#/components/...``, so that a schema taken
    out of the document still finds what it refers to."""
    if isinstance(schema, dict):
        return {k: (f"urn:openapi{v}" if k == "$ref" and v.startswith("#") else absolute_refs(v))
                for k, v in schema.items()}
    if isinstance(schema, list):
        return [absolute_refs(v) for v in schema]
    return schema


REGISTRY = Registry().with_resource("urn:openapi", Resource.from_contents(document(),
                                                                          default_specification=DRAFT202012))


class Conformance:
    """Checks each answer against the document and notes (operation, status) seen."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str, str]] = set()  # path, method, status

    def check(self, path: str, method: str, response: TestResponse) -> TestResponse:
        operation = document()["paths"][path][method]
        status = str(response.status_code)
        assert status in operation["responses"], f"{method.upper()} {path} answered {status}: not described"
        described = resolve(operation["responses"][status])
        for name, header in (described.get("headers") or {}).items():
            header = resolve(header)
            value = response.headers.get(name)
            if header.get("required"):
                assert value is not None, f"{method.upper()} {path} {status}: no {name} header"
            if value is not None:
                typed: Any = int(value) if header["schema"].get("type") == "integer" else value
                self._validate(header["schema"], typed, f"{name} header")
        content = described.get("content") or {}
        if content:
            media = {key.split(";")[0].strip(): value for key, value in content.items()}
            assert response.mimetype in media, f"{method.upper()} {path} {status}: {response.mimetype} not in {media}"
            schema = media[response.mimetype].get("schema")
            if schema is not None:
                body: Any = response.get_json() if response.is_json else response.get_data(as_text=True)
                self._validate(schema, body, f"{method.upper()} {path} {status} body")
        self.seen.add((path, method, status))
        return response

    @staticmethod
    def _validate(schema: dict[str, Any], value: Any, what: str) -> None:
        errors = list(Draft202012Validator(absolute_refs(copy.deepcopy(schema)), registry=REGISTRY)
                      .iter_errors(value))
        assert not errors, f"{what} does not fit the document: {[e.message for e in errors]} in {value!r:.300}"


# ----------------------------------------------------------------------------- fakes and apps


class Publisher(RecordingPublisher):
    ready = True


class FakeLime:
    """Lime for the jump: objects by (limetype, id), or the error to raise."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, int], Any] = {}

    def get(self, limetype: str, object_id: int) -> dict[str, Any]:
        found = self.objects.get((limetype, object_id))
        if found is None:
            raise LimeRejected(404, "not_found", "no such object")
        if isinstance(found, Exception):
            raise found
        return found


class FakeBfus:
    def __init__(self) -> None:
        self.answer: str | Exception = f"{UI}customer/100234"

    def bookmark(self, objecttype: str, key: str, client: str) -> str:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FakeDeadLetters:
    """The admin pages' service: one failed-message record (id 1), nothing queued."""

    class Lime:
        def iterate(self, *_: Any, **__: Any) -> Iterator[dict[str, Any]]:
            return iter(())

    class Topology:
        dead_queue = "dead"

    lime = Lime()
    topology = Topology()
    RECORD = {"_id": 1, "messageid": 5, "objecttype": "customer", "operation": "updated", "key": "1",
              "customerno": "1", "reason": "invalid_json", "error": "Body is not valid JSON", "payload": "{",
              "status": "failed", "attempts": 1, "failedtime": "2026-11-24T09:15:02+00:00"}

    def records(self, *_: Any, **__: Any) -> list[dict[str, Any]]:
        return [self.RECORD]

    def record(self, record_id: int) -> dict[str, Any]:
        if record_id != 1:
            raise LimeRejected(404, "not_found", "no such record")
        return self.RECORD

    def letters(self) -> list[Any]:
        return []

    def requeue(self, *_: Any, **__: Any) -> list[Any]:
        return []

    def discard(self, *_: Any, **__: Any) -> list[Any]:
        return []


def make_app(tmp_path: Path, on: bool) -> Flask:
    raw: dict[str, Any] = {
        "broker": {"url": "amqp://guest:guest@127.0.0.1:1/"},  # no broker: the fakes stand in
        "receiver": {"api_key": KEY, "max_body_bytes": MAX_BODY, "retry_after": 3},
    }
    if on:
        raw["receiver"].update(lime_secret=LIME_SECRET, deliveries_db=str(tmp_path / "deliveries.sqlite"))
        raw["jump"] = {"secret": JUMP_SECRET}
        raw["bfus"] = {"ui_url": UI}
        raw["admin"] = {"user": ADMIN[0], "password": ADMIN[1]}
    app = create_app(build_config(raw, environ={}), publisher=Publisher())
    app.extensions.update(lime=FakeLime(), bfus=FakeBfus(), dead_letters=FakeDeadLetters())
    return app


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return make_app(tmp_path, on=True)


# ----------------------------------------------------------------------------- the requests


def envelope(mid: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": mid, "timestamp": "2026-11-24T09:15:02+01:00", "objecttype": "customer", "operation": "updated",
            "key": "100234", "customerno": "100234", "data": {"name": "Åsa"}, **extra}


def bfus_requests(client: FlaskClient, app: Flask, seen: Conformance) -> None:
    def post(body: bytes, content_type: str = "application/json", key: str | None = KEY) -> TestResponse:
        headers = {"Content-Type": content_type, **({"X-API-Key": key} if key else {})}
        return seen.check("/bfus/messages", "post", client.post("/bfus/messages", data=body, headers=headers))

    assert post(json.dumps(envelope()).encode()).status_code == 202
    assert post(json.dumps(envelope(id=12.0)).encode()).get_json()["id"] == 12
    assert post(b'{"id": 1,').status_code == 400
    assert post(json.dumps(envelope()).encode(), key=None).status_code == 401
    assert post(json.dumps(envelope()).encode(), key="wrong").status_code == 401
    assert post(json.dumps(envelope(data={"name": "x" * MAX_BODY})).encode()).status_code == 413
    assert post(b"id=1", "text/plain").status_code == 415
    assert post(json.dumps(envelope()).encode(), "application/json; charset=latin-1").status_code == 415
    answer = post(json.dumps(envelope(0, operation="merged")).encode())
    assert answer.status_code == 422 and set(answer.get_json()["fields"]) == {"id", "operation"}
    many = envelope(data={f"f{i}": "\u0000" for i in range(30)})
    assert "_more" in post(json.dumps(many).encode()).get_json()["fields"]
    app.extensions["publisher"].refuse = 1
    answer = post(json.dumps(envelope()).encode())
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "3"


def lime_requests(client: FlaskClient, app: Flask, seen: Conformance) -> None:
    def post(body: bytes, headers: dict[str, str]) -> TestResponse:
        return seen.check("/lime/events", "post", client.post("/lime/events", data=body, headers={
            "Content-Type": "application/json", **headers}))

    def v1(body: bytes) -> dict[str, str]:
        return {"X-Lime-Signature": "sha256=" + hmac.new(LIME_SECRET.encode(), body, hashlib.sha256).hexdigest()}

    def v2(body: bytes, delivery: str) -> dict[str, str]:
        stamp = str(int(time.time()))
        text = f"v2:{delivery}:{stamp}:{hashlib.sha256(body).hexdigest()}".encode()
        return {"X-Lime-Signature": "v2=" + hmac.new(LIME_SECRET.encode(), text, hashlib.sha256).hexdigest(),
                "X-Lime-Delivery-Id": delivery, "X-Lime-Delivery-Timestamp": stamp}

    event = json.dumps({"event": "company.update", "body": {"id": 4711, "limetype": "company",
                                                            "values": {"name": "Acme AB"}}}).encode()
    assert post(event, v1(event)).status_code == 202
    assert post(event, v2(event, "d-1")).status_code == 202
    assert post(event, v2(event, "d-1")).get_json() == {"status": "duplicate", "delivery": "d-1"}
    assert post(b"[1]", v1(b"[1]")).get_json()["error"] == "invalid_json"
    mismatched = event.replace(b'"limetype": "company"', b'"limetype": "person"')
    assert post(mismatched, v1(mismatched)).get_json()["error"] == "invalid_event"
    assert post(event, {}).status_code == 401
    assert post(event, v1(event + b" ")).status_code == 401
    big = json.dumps({"event": "company.update", "body": {"id": 1, "limetype": "company",
                                                          "values": {"name": "x" * MAX_BODY}}}).encode()
    assert post(big, v1(big)).status_code == 413
    app.extensions["publisher"].refuse = 1
    assert post(event, v2(event, "d-2")).status_code == 503


def jump_requests(client: FlaskClient, app: Flask, seen: Conformance) -> None:
    lime: FakeLime = app.extensions["lime"]
    bfus: FakeBfus = app.extensions["bfus"]

    def go(limetype: str, object_id: int | str, client_name: str = "MFU", sig: str | None = None) -> TestResponse:
        sig = sig if sig is not None else sign(JUMP_SECRET, limetype, int(object_id), client_name)
        response = client.get(f"/jump/{limetype}/{object_id}?client={client_name}&sig={sig}")
        return seen.check("/jump/{limetype}/{object_id}", "get", response)

    lime.objects[("company", 1)] = {"_id": 1, "customerno": "100234"}
    lime.objects[("company", 2)] = {"_id": 2, "customerno": ""}
    lime.objects[("company", 3)] = LimeRejected(403, "forbidden", "no")
    lime.objects[("company", 4)] = LimeUnavailable("Lime is down")
    assert go("company", 1).status_code == 302
    assert go("company", 1, sig="0" * 64).status_code == 403
    assert go("company", 1, "WEB").status_code == 403
    assert go("person", 1).mimetype == "text/html"  # 404: not a limetype BFUS has
    assert go("company", 9).status_code == 404  # Lime has no such object
    assert go("company", "abc", sig="0" * 64).mimetype == "application/json"  # 404: no jump address
    assert go("company", 2).status_code == 409
    assert go("company", 3).status_code == 502
    assert go("company", 4).status_code == 503
    for answer, status in ((BfusUnavailable("down"), 503), (BfusRejected(404, "not_found", "no such key"), 502),
                           (BfusError("no url"), 502), ("https://elsewhere.example/", 502)):
        bfus.answer = answer
        assert go("company", 1).status_code == status


def admin_requests(client: FlaskClient, app: Flask, seen: Conformance) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()}
    with app.test_request_context():
        csrf = admin_pages._csrf_token()

    def call(method: str, path: str, route: str, headers: dict[str, str] | None = None,
             form: dict[str, str] | None = None) -> TestResponse:
        response = client.open(path, method=method.upper(), headers=headers or {}, data=form)
        return seen.check(route, method, response)

    for path in ("/admin/", "/admin/counts", "/admin/failed/1"):
        route = "/admin/failed/{record_id}" if "failed" in path else path
        assert call("get", path, route, auth).status_code == 200
        assert call("get", path, route).status_code == 401
    assert call("get", "/admin/failed/2", "/admin/failed/{record_id}", auth).status_code == 404
    for path, route, form in (("/admin/failed/1/requeue", "/admin/failed/{record_id}/requeue", {}),
                              ("/admin/failed/1/discard", "/admin/failed/{record_id}/discard", {"why": "test"}),
                              ("/admin/requeue", "/admin/requeue", {"reason": "invalid_json"})):
        assert call("post", path, route, auth, {**form, "csrf": csrf}).status_code == 302
        assert call("post", path, route, auth, {**form, "csrf": "forged"}).status_code == 403
        assert call("post", path, route, None, {**form, "csrf": csrf}).status_code == 401


def operations_requests(client: FlaskClient, app: Flask, seen: Conformance) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert seen.check(path, "get", client.get(path)).status_code == 200
    app.extensions["publisher"].ready = False
    assert seen.check("/readyz", "get", client.get("/readyz")).status_code == 503
    assert client.get("/static/app.css").status_code == 404  # no static route: an unknown address


def off_requests(client: FlaskClient, seen: Conformance) -> None:
    """With the jump and the admin pages off (no secret, no password): 404 everywhere."""
    assert seen.check("/jump/{limetype}/{object_id}", "get",
                      client.get(f"/jump/company/1?client=MFU&sig={'0' * 64}")).status_code == 404
    for method, path, route in (("get", "/admin/", "/admin/"), ("get", "/admin/counts", "/admin/counts"),
                                ("get", "/admin/failed/1", "/admin/failed/{record_id}"),
                                ("post", "/admin/failed/1/requeue", "/admin/failed/{record_id}/requeue"),
                                ("post", "/admin/failed/1/discard", "/admin/failed/{record_id}/discard"),
                                ("post", "/admin/requeue", "/admin/requeue")):
        assert seen.check(route, method, client.open(path, method=method.upper())).status_code == 404


def test_real_answers_match_the_document_and_produce_every_status_it_lists(tmp_path: Path) -> None:
    seen = Conformance()
    app = make_app(tmp_path, on=True)
    client = app.test_client()
    bfus_requests(client, app, seen)
    lime_requests(client, app, seen)
    jump_requests(client, app, seen)
    admin_requests(client, app, seen)
    operations_requests(client, app, seen)
    off_requests(make_app(tmp_path / "off", on=False).test_client(), seen)

    described = {(path, method, status) for path, item in document()["paths"].items()
                 for method, operation in item.items() for status in operation["responses"]}
    assert described - seen.seen == set(), "statuses the document lists that no request here produced"


def test_a_method_an_address_does_not_take_is_405_with_allow(app: Flask) -> None:
    response = app.test_client().put("/bfus/messages", headers={"X-API-Key": KEY})
    assert response.status_code == 405 and response.get_json()["error"] == "method_not_allowed"
    assert set(response.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}


def test_an_unknown_address_is_404_not_found(app: Flask) -> None:
    response = app.test_client().get("/nothing/here")
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"
