"""The BFUS stand-in: a customer register with the API of contract.md §4, and the
change queue that posts to the receiver.

    GET  /api/v1/<objecttype>s?offset=&limit=&status=&changedsince=&category=&customerno=   (Bearer token)
         -> {"items", "next", "total", "queueid"}: queueid is the last change the page includes
    GET  /api/v1/customers/<customerno>
    POST /api/v1/customers, PUT /api/v1/customers/<customerno>
    POST /api/v1/bookmarks  {"objecttype", "key", "client": "BFU"|"MFU"} -> 201 {"url"}
    GET  /mfu/<objecttype>/<key>[?client=BFU]   MFU's page of the object, where bookmarks lead (no auth)
    POST /_admin/changes  {"count", "customers", "rate", "delete_share", "objecttypes"}   (X-Admin-Key)
    GET  /_admin/queue          queue status: pending, delivered, head
    POST /_admin/poster         {"paused": true|false}
    GET  /_admin/snapshots/<objecttype>   last state of every object, deleted included
    GET  /_admin/bookmarks      bookmark counts, the UI base and its test override
    PUT  /_admin/bookmarks      {"base_override": "<a base>" | null}

Bookmarks (contract.md §4, issue 13). ``POST /api/v1/bookmarks`` answers **201**
``{"url": ...}`` (a bookmark is made), always under the user-interface base
``BfusStandIn.ui_url`` (``settings.ui_url``, default the stand-in's own address +
``mfu/``), which is what ``bfus.ui_url`` names:

    MFU (web client):      <ui_url><objecttype>/<key>             MFU's page of the object
    BFU (desktop client):  <ui_url><objecttype>/<key>?client=BFU  the same page handing over to
                           BFU (its link bfu://open/<objecttype>/<key>): a desktop client has no
                           web address of its own, and a bookmark lies under the UI base

(the key URL-quoted). A body that is not a JSON object: 400 ``invalid_body``; a bad or
unknown field: 422 ``invalid_bookmark`` with ``fields``; an object BFUS does not have,
or has deleted (its reads do not show those either): 404 ``not_found``. Like every API
call it needs the bearer token (401) and answers 503 while ``unavailable`` is set.
Test controls: ``bookmark_delay`` (seconds before answering: a BFUS slower than the
caller's timeout), ``bookmark_base_override`` (answer URLs on another base, e.g.
``https://evil.example/``, for the no-open-redirect test; also PUT /_admin/bookmarks);
``bookmarks`` lists the ones made (objecttype, key, client), ``bookmark_requests``
counts every request that reached the endpoint (refused ones too).
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from marshmallow import Schema, ValidationError, validates
from marshmallow import fields as mfields
from marshmallow.validate import ContainsOnly, OneOf, Range

from sandbox.bfus.changes import ChangeMaker, ChangeMix
from sandbox.bfus.mfu import mfu_blueprint
from sandbox.bfus.poster import QueuePoster
from sandbox.bfus.store import BfusStore, now
from sandbox.bfus.validation import OBJECTTYPES, WRITABLE, bookmark_problems, customer_problems, write_problems
from sandbox.httperrors import answer_http_errors_in_json
from shared.bfus import PLURALS


@dataclass
class BfusSandboxSettings:
    db_path: str | Path
    target_url: str  # where the queue posts, e.g. http://127.0.0.1:8080/bfus/messages
    api_key: str  # X-API-Key sent with each message
    token: str = "dev-bfus-token"  # Bearer token of the BFUS API
    admin_key: str = "dev-bfus-admin"
    retry_pause: float = 1.0
    seed: int | None = None
    max_limit: int = 1000
    ui_url: str | None = None  # BFUS's user-interface base (bookmarks start with it); None: <own address>mfu/


def _error(status: int, code: str, message: str) -> Response:
    response = jsonify({"error": code, "message": message})
    response.status_code = status
    return response


class BfusStandIn:
    def __init__(self, settings: BfusSandboxSettings, host: str = "127.0.0.1", port: int = 0, post: bool = True):
        from sandbox.serve import ServerThread

        self.settings = settings
        self.store = BfusStore(settings.db_path)
        self.changes = ChangeMaker(self.store, settings.seed)
        self.poster = QueuePoster(self.store, settings.target_url, settings.api_key, settings.retry_pause)
        self._post = post
        self.app = self._create_app()
        self.server = ServerThread(self.app, host, port)
        self._feeds: list[threading.Thread] = []
        self._stop_feeds = threading.Event()
        self.writes = {"POST": 0, "PUT": 0}  # customer writes through the API, accepted or not
        # The accepted ones in order: (method, customer number, the fields sent). Tests
        # read what reached BFUS from here (its change messages carry whole states).
        self.accepted: list[tuple[str, str, dict[str, Any]]] = []
        self.unavailable = False  # a test's outage: the API answers 503
        self.write_delay = 0.0  # seconds a customer write waits before it is applied and answered (a slow BFUS)
        self.bookmarks: list[tuple[str, str, str]] = []  # bookmarks made: (objecttype, key, client), in order
        self.bookmark_requests = 0  # requests that reached POST /api/v1/bookmarks, refused ones too
        self.bookmark_delay = 0.0  # seconds a bookmark request waits before it is answered (a slow BFUS)
        self.bookmark_base_override: str | None = None  # a test's BFUS answering bookmarks outside ui_url
        self._bookmark_lock = threading.Lock()

    def start(self) -> BfusStandIn:
        self.server.start()
        if self._post:
            self.poster.start()
        return self

    def stop(self) -> None:
        self._stop_feeds.set()
        self.poster.stop()
        self.server.stop()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ui_url(self) -> str:
        """BFUS's user-interface base: every bookmark starts with it (``bfus.ui_url``)."""
        base = self.settings.ui_url or f"{self.url}mfu/"
        return base if base.endswith("/") else base + "/"

    def bookmark_url(self, objecttype: str, key: str, client: str) -> str:
        """Where a bookmark of the object leads: its MFU page (for BFU, the page handing
        over to the desktop client), on ``bookmark_base_override`` when a test set one."""
        base = self.bookmark_base_override if self.bookmark_base_override is not None else self.ui_url
        return f"{base}{objecttype}/{quote(key, safe='')}" + ("?client=BFU" if client == "BFU" else "")

    def feed(self, count: int, customers: int | None = None, rate: float | None = None,
             mix: ChangeMix | None = None, objecttypes: tuple[str, ...] = ("customer",)) -> threading.Thread:
        """Make changes in the background at ``rate`` per second."""
        thread = threading.Thread(
            target=self.changes.make, args=(count, customers, mix, rate, self._stop_feeds, objecttypes), daemon=True,
            name="bfus-feed",
        )
        thread.start()
        self._feeds.append(thread)
        return thread

    # ------------------------------------------------------------------ app

    def _create_app(self) -> Flask:
        app = Flask("sandbox.bfus")
        app.extensions["bfus"] = self
        app.register_blueprint(_api_blueprint(), url_prefix="/api/v1")
        app.register_blueprint(_admin_blueprint(), url_prefix="/_admin")
        app.register_blueprint(mfu_blueprint(), url_prefix="/mfu")

        @app.get("/")
        def index() -> Response:
            lists = {t: f"{request.host_url}api/v1/{PLURALS[t]}" for t in OBJECTTYPES}
            return jsonify({"service": "BFUS stand-in", "api": lists, "ui": self.ui_url})

        answer_http_errors_in_json(app, _error)
        return app


def _standin() -> BfusStandIn:
    return current_app.extensions["bfus"]


def _int_arg(name: str, default: int, maximum: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    value = int(raw)  # ValueError -> 400 below
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
    if maximum:
        return min(value, maximum)
    if value >= 2**63:  # past what SQLite counts
        raise ValueError(f"{name} must be below 2^63")
    return value


def _api_blueprint() -> Blueprint:
    bp = Blueprint("bfus_api", __name__)

    @bp.before_request
    def guard() -> Response | None:
        if _standin().unavailable:
            return _error(503, "unavailable", "BFUS is down for maintenance.")
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {_standin().settings.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return _error(401, "unauthorized", "A valid 'Authorization: Bearer <token>' header is required.")
        return None

    @bp.get("/<plural>")
    def list_objects(plural: str) -> Response:
        objecttype = {p: t for t, p in PLURALS.items()}.get(plural, "")
        if objecttype not in OBJECTTYPES:
            return _error(404, "not_found", f"No list '{plural}'.")
        try:
            offset = _int_arg("offset", 0)
            limit = _int_arg("limit", 100, _standin().settings.max_limit) or 100
        except ValueError as err:
            return _error(400, "invalid_parameter", str(err))
        args = request.args
        items, total, queueid = _standin().store.page(
            objecttype, offset, limit, args.get("status"), args.get("changedsince"), args.get("category"),
            args.get("customerno"),
        )
        next_url = None
        if offset + len(items) < total:
            rest = {k: v for k, v in args.items() if k not in ("offset", "limit")}
            next_url = f"{request.base_url}?{urlencode({**rest, 'offset': offset + limit, 'limit': limit})}"
        return jsonify({"items": items, "next": next_url, "total": total, "queueid": queueid})

    @bp.get("/customers/<customerno>")
    def get_customer(customerno: str) -> Response:
        found = _standin().store.get("customer", customerno)
        if found is None or found["deleted"]:
            return _error(404, "not_found", f"Customer {customerno} does not exist.")
        return jsonify(found["data"])

    @bp.post("/customers")
    def create_customer() -> Response:
        """A new customer: validated, given the next customer number, and, like every
        change in BFUS, queued as a change message."""
        _standin().writes["POST"] += 1
        _slow_write()
        changes = _write_body()
        if isinstance(changes, Response):
            return changes
        standin = _standin()
        customer = {**{name: None for name in WRITABLE}, "country": "SE", "einvoice": False, **changes}
        refused = _refusal(customer, whole=True) or _duplicate(customer, None)
        if refused is not None:
            return refused
        today = now().date().isoformat()
        customerno = standin.changes.new_customerno()
        customer.update(customerno=customerno, status="active", category=None, createddate=today, changeddate=today)
        standin.store.change("customer", "created", customerno, customerno, customer)
        standin.accepted.append(("POST", customerno, changes))
        response = jsonify(customer)
        response.status_code = 201
        return response

    @bp.put("/customers/<customerno>")
    def update_customer(customerno: str) -> Response:
        """Only the fields sent change; the whole new state is queued as a change message
        (nothing is queued when nothing changed)."""
        _standin().writes["PUT"] += 1
        _slow_write()
        changes = _write_body()
        if isinstance(changes, Response):
            return changes
        standin = _standin()
        found = standin.store.get("customer", customerno)
        if found is None or found["deleted"]:
            return _error(404, "not_found", f"Customer {customerno} does not exist.")
        if all(found["data"].get(k) == v for k, v in changes.items()):
            standin.accepted.append(("PUT", customerno, changes))
            return jsonify(found["data"])
        customer = {**found["data"], **changes, "changeddate": now().date().isoformat()}
        refused = _refusal(customer, whole=True) or _duplicate(customer, customerno)
        if refused is not None:
            return refused
        standin.store.change("customer", "updated", customerno, customerno, customer)
        standin.accepted.append(("PUT", customerno, changes))
        return jsonify(customer)

    @bp.post("/bookmarks")
    def bookmark() -> Response:
        """A bookmark opening one object in BFU or MFU: 201 {"url"} under the UI base."""
        standin = _standin()
        with standin._bookmark_lock:
            standin.bookmark_requests += 1
        if standin.bookmark_delay > 0:
            time.sleep(standin.bookmark_delay)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "invalid_body", 'Send one JSON object: {"objecttype", "key", "client"}.')
        problems = bookmark_problems(body)
        if problems:
            response = jsonify({"error": "invalid_bookmark", "message": "The bookmark is not valid: " + "; ".join(
                f"{name}: {' '.join(texts)}" for name, texts in sorted(problems.items())), "fields": problems})
            response.status_code = 422
            return response
        objecttype, key, client = body["objecttype"], body["key"], body["client"]
        found = standin.store.get(objecttype, key)
        if found is None:
            return _error(404, "not_found", f"No {objecttype} {key} in BFUS.")
        if found["deleted"]:
            return _error(404, "not_found", f"The {objecttype} {key} was deleted in BFUS.")
        with standin._bookmark_lock:
            standin.bookmarks.append((objecttype, key, client))
        response = jsonify({"url": standin.bookmark_url(objecttype, key, client)})
        response.status_code = 201
        return response

    return bp


def _slow_write() -> None:
    """A slow BFUS: the write is received (and counted) now, applied and answered after
    ``write_delay`` seconds."""
    if _standin().write_delay > 0:
        time.sleep(_standin().write_delay)


def _write_body() -> dict[str, Any] | Response:
    """The fields a write sends, or the refusal to answer."""
    changes = request.get_json(silent=True)
    refused = _refusal(changes)
    if refused is not None or not isinstance(changes, dict):
        return refused or _error(400, "invalid_body", "Send one JSON object of customer fields.")
    return changes


def _refusal(customer: Any, whole: bool = False) -> Response | None:
    """400 for a body that is not an object, 422 naming each bad field."""
    if not isinstance(customer, dict):
        return _error(400, "invalid_body", "Send one JSON object of customer fields.")
    problems = customer_problems(customer) if whole else write_problems(customer)
    if not problems:
        return None
    response = jsonify({"error": "invalid_customer", "message": "The customer is not valid: "
                        + "; ".join(f"{name}: {' '.join(texts)}" for name, texts in sorted(problems.items())),
                        "fields": problems})
    response.status_code = 422
    return response


def _duplicate(customer: dict[str, Any], customerno: str | None) -> Response | None:
    """409 when another live customer has the same personnummer or organisationsnummer."""
    for field in ("socialsecurityno", "orgno"):
        if customer.get(field):
            others = [k for k in _standin().store.live_keys_with("customer", field, customer[field]) if k != customerno]
            if others:
                response = jsonify({"error": "duplicate", "customerno": others[0],
                                    "message": f"Customer {others[0]} already has this {field}."})
                response.status_code = 409
                return response
    return None


MOST_CHANGES = 1_000_000  # changes (and customers) one request may ask for


class ChangesRequest(Schema):
    """The body of ``POST /_admin/changes``."""

    count = mfields.Integer(load_default=10, strict=True, validate=Range(1, MOST_CHANGES))
    customers = mfields.Integer(load_default=None, allow_none=True, strict=True, validate=Range(1, MOST_CHANGES))
    delete_share = mfields.Float(load_default=0.1, validate=Range(0, 1))
    rate = mfields.Float(load_default=None, allow_none=True, validate=Range(0, 1_000_000))  # per second; 0: at once
    objecttypes = mfields.List(mfields.String(validate=OneOf(OBJECTTYPES)), load_default=["customer"],
                               validate=ContainsOnly(OBJECTTYPES))

    @validates("objecttypes")
    def _with_customer(self, value: list[str], **_: Any) -> None:
        if "customer" not in value:
            raise ValidationError("Must list customer (and any of the others).")


def _admin_blueprint() -> Blueprint:
    bp = Blueprint("bfus_admin", __name__)

    @bp.before_request
    def guard() -> Response | None:
        if not hmac.compare_digest(request.headers.get("X-Admin-Key", ""), _standin().settings.admin_key):
            return _error(401, "unauthorized", "A valid X-Admin-Key header is required.")
        return None

    @bp.post("/changes")
    def make_changes() -> Response:
        try:
            body = ChangesRequest().load(request.get_json(silent=True) or {})
        except ValidationError as err:
            problems = "; ".join(f"{name}: {texts}" for name, texts in sorted(err.messages_dict.items()))
            return _error(400, "invalid_body", f"Not a changes request: {problems}")
        count, customers, share = body["count"], body["customers"], body["delete_share"]
        mix = ChangeMix(delete=share, update=1 - share)
        kinds = tuple(t for t in OBJECTTYPES if t in body["objecttypes"])
        if body["rate"]:
            _standin().feed(count, customers, body["rate"], mix, kinds)
            return jsonify({"status": "feeding", "count": count, "rate": body["rate"]})
        report = _standin().changes.make(count, customers, mix, objecttypes=kinds)
        return jsonify({k: v for k, v in report.__dict__.items() if k != "ids"})

    @bp.get("/queue")
    def queue() -> Response:
        status = _standin().store.queue_status()
        status["paused"] = _standin().poster.paused
        status["last_status"] = _standin().poster.last_status
        return jsonify(status)

    @bp.post("/poster")
    def poster() -> Response:
        body = request.get_json(silent=True) or {}
        if body.get("paused"):
            _standin().poster.pause()
        else:
            _standin().poster.resume()
        return jsonify({"paused": _standin().poster.paused})

    @bp.get("/snapshots/<objecttype>")
    def snapshots(objecttype: str) -> Response:
        return jsonify(_standin().store.snapshots(objecttype))

    @bp.get("/bookmarks")
    def bookmarks() -> Response:
        standin = _standin()
        return jsonify({"ui_url": standin.ui_url, "base_override": standin.bookmark_base_override,
                        "made": len(standin.bookmarks), "requests": standin.bookmark_requests})

    @bp.put("/bookmarks")
    def bookmark_controls() -> Response:
        """``{"base_override": "https://evil.example/"}``: bookmarks answered on that base
        instead of the UI base (a test of the jump's no-open-redirect check); null: back."""
        body = request.get_json(silent=True)
        override = body.get("base_override", "") if isinstance(body, dict) else ""
        if override is not None and not (isinstance(override, str) and override):
            return _error(400, "invalid_body", 'Send {"base_override": "<a base address>"} or null for none.')
        _standin().bookmark_base_override = override
        return bookmarks()

    return bp
