"""The Lime CRM stand-in: the REST API of contract.md §3 on SQLite, plus an admin API
(its own key) for fault injection, request counts and data export.

    /<application>/api/v1/limetype/                     GET
    /<application>/api/v1/limetype/<name>/              GET
    /<application>/api/v1/limeobject/<type>/            GET (filters, paging, _sort), POST
    /<application>/api/v1/limeobject/<type>/<id>/       GET, PUT (partial), DELETE
    /_admin/faults  GET, PUT      /_admin/stats  GET     /_admin/stats/reset  POST
    /<application>/api/v1/subscription/                 GET (filters events, target_url, enabled), POST
    /<application>/api/v1/subscription/<id>/            GET, PUT, DELETE
    /<application>/api/v1/subscription/available/       GET
    /_admin/objects/<type>  GET (every object, no paging)   /_admin/counts  GET
    /_admin/webhooks  GET (delivery counts), PUT {"lose_rate", "duplicate_rate"} (shares, at random)
                      or {"lose_next", "duplicate_next", "object_id"} (the next few deliveries,
                      of the object's events or, without object_id, of any)
    /<application>/web/<limetype>/<id>                  GET: the object's card in the web client, an
                      HTML page: its properties and an actionpad with each non-empty link property
                      as a link named by its localname (sandbox/lime/web.py; no API key, no faults)

Every create, update and delete through the API fires the webhooks of
sandbox/lime/webhooks.py.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, current_app, request

from sandbox.httperrors import answer_http_errors_in_json
from sandbox.lime.faults import FaultInjector, Faults
from sandbox.lime.schema import load_schema
from sandbox.lime.store import Filter, LimeRequestError, LimeStore, bad_request
from sandbox.lime.web import web_blueprint
from sandbox.lime.webhooks import EVENTS, SIGNATURES, Webhooks
from shared.lime import option_key

HAL = "application/hal+json"
CONTROL_PARAMS = {"_limit", "_offset", "_offset_id", "_sort", "_embed"}


@dataclass
class LimeSandboxSettings:
    db_path: str | Path
    schema_path: str | Path | None = None
    api_keys: tuple[str, ...] = ("dev-lime-key",)
    admin_key: str = "dev-lime-admin"
    application: str = "lime"
    default_limit: int = 10
    max_limit: int = 50
    faults: Faults = field(default_factory=Faults)
    seed: int | None = None
    webhook_keys: tuple[str, ...] | None = None  # keys whose user may manage webhooks (None: every API key)
    webhook_retry_base: float = 10.0  # seconds before a failed delivery's first retry (then doubling)


def _json(body: Any, status: int = 200, content_type: str = HAL, headers: dict | None = None) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status, content_type=content_type, headers=headers)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return _json({"error": code, "message": message}, status, "application/json", headers)


def create_lime_app(settings: LimeSandboxSettings) -> Flask:
    app = Flask("sandbox.lime")
    app.config["LIME"] = settings
    app.extensions["lime_store"] = LimeStore(settings.db_path, load_schema(settings.schema_path))
    app.extensions["lime_faults"] = FaultInjector(settings.faults, settings.seed)
    app.extensions["lime_webhooks"] = Webhooks(settings.webhook_retry_base, seed=settings.seed)
    app.url_map.strict_slashes = False
    app.register_blueprint(_api_blueprint(), url_prefix=f"/{settings.application}/api/v1")
    app.register_blueprint(_admin_blueprint(), url_prefix="/_admin")
    app.register_blueprint(web_blueprint(), url_prefix=f"/{settings.application}/web")

    @app.errorhandler(LimeRequestError)
    def lime_error(err: LimeRequestError) -> Response:
        return _error(err.status, err.code, err.message)

    answer_http_errors_in_json(app, _error)
    return app


def store() -> LimeStore:
    return current_app.extensions["lime_store"]


def webhooks() -> Webhooks:
    return current_app.extensions["lime_webhooks"]


def injector() -> FaultInjector:
    return current_app.extensions["lime_faults"]


def settings() -> LimeSandboxSettings:
    return current_app.config["LIME"]


def _filters(lt: Any) -> list[Filter]:
    """The request's filters: ``prop=value``, ``min-prop=``, ``max-prop=``."""
    filters = []
    for name, raw in request.args.items(multi=True):
        if name in CONTROL_PARAMS:
            continue
        op = "="
        if name.startswith("min-"):
            name, op = name[4:], ">="
        elif name.startswith("max-"):
            name, op = name[4:], "<="
        column, value = store().filter_value(lt, name, raw)
        filters.append(Filter(column, op, value))
    return filters


_BASE_URLS: dict[tuple[Any, ...], str] = {}  # what base_url() gave for a request's host
_URL_PARTS = ("wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "SCRIPT_NAME",
              "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PROTO")


def base_url() -> str:
    """The API's address as this request reached it (werkzeug builds host_url anew on
    every access: kept per host and application, for a few of them)."""
    environ = request.environ
    key = (settings().application, *(environ.get(k) for k in _URL_PARTS))
    url = _BASE_URLS.get(key)
    if url is None:
        url = f"{request.host_url}{settings().application}/api/v1/"
        if len(_BASE_URLS) < 64:
            _BASE_URLS[key] = url
    return url


# ----------------------------------------------------------------------------- API


def _api_blueprint() -> Blueprint:
    bp = Blueprint("lime_api", __name__)

    @bp.before_request
    def guard() -> Response | None:
        limetype = (request.view_args or {}).get("limetype", "limetype")
        verdict = injector().before(request.method, limetype, request.remote_addr or "-",
                                    request.get_data() if request.method in ("POST", "PUT") else b"")
        if verdict is not None:
            status, message, headers = verdict
            code = {503: "unavailable", 429: "too_many_requests", 500: "internal_error"}[status]
            return _error(status, code, message, headers)
        key = request.headers.get("X-API-Key", "")
        if not any(hmac.compare_digest(key, k) for k in settings().api_keys):
            return _error(401, "unauthorized", "A valid X-API-Key header is required.")
        return None

    @bp.after_request
    def count(response: Response) -> Response:
        injector().answered(response.status_code)
        return response

    @bp.get("/")
    def index() -> Response:
        base = base_url()
        return _json({"_links": {"self": {"href": base}, "limetype": {"href": f"{base}limetype/"},
                                 "limeobject": {"href": f"{base}limeobject/{{limetype}}/", "templated": True}}})

    @bp.get("/limetype/")
    def limetypes() -> Response:
        base = base_url()
        types = [lt.to_json(base) for lt in store().limetypes.values()]
        return _json(
            {
                "_links": {
                    "self": {"href": f"{base}limetype/"},
                    "limetypes": [{"href": f"{base}limetype/{t['name']}/", "name": t["name"]} for t in types],
                },
                "_embedded": {"limetypes": types},
            }
        )

    @bp.get("/limetype/<limetype>/")
    def limetype(limetype: str) -> Response:
        return _json(store().limetype(limetype).to_json(base_url()))

    @bp.get("/limeobject/<limetype>/")
    def list_objects(limetype: str) -> Response:
        lt = store().limetype(limetype)
        limit = _int_param("_limit", settings().default_limit, minimum=1)
        limit = min(limit, settings().max_limit)
        offset = _int_param("_offset", 0, minimum=0)
        filters = _filters(lt)
        sorts = [s.strip() for s in request.args.get("_sort", "").split(",") if s.strip()]
        order = [store().sort_column(lt, s) for s in sorts]
        # Lime pages by keyset: in _id order the next link names the last id seen
        # (_offset_id), so objects created or deleted meanwhile shift nothing. Other
        # orders page by offset here (a stand-in's simplification).
        keyset = sorts in ([], ["_id"])
        after = _int_param("_offset_id", 0, minimum=0)
        if keyset and after:
            filters.append(Filter("_id", ">", after))
        objects, more = store().query(limetype, filters, order, limit, 0 if keyset else offset)
        base = base_url()
        links: dict[str, Any] = {"self": {"href": request.url}}
        if more and keyset:
            links["next"] = {"href": _page_url(base, limetype, limit, _offset_id=objects[-1]["_id"])}
        elif more:
            links["next"] = {"href": _page_url(base, limetype, limit, _offset=offset + limit)}
        if offset > 0 and not keyset:
            links["prev"] = {"href": _page_url(base, limetype, limit, _offset=max(0, offset - limit))}
        return _json({"_links": links, "_embedded": {"limeobjects": [_with_links(base, lt.name, o) for o in objects]}})

    @bp.post("/limeobject/<limetype>/")
    def create(limetype: str) -> Response:
        created = store().create(limetype, _body())
        injector().wrote(limetype, created["_id"])
        if webhooks().wants(f"{limetype}.new"):
            webhooks().fire(f"{limetype}.new", _event_body(limetype, created))
        return _json(_with_links(base_url(), limetype, created), 201)

    @bp.get("/limeobject/<limetype>/<int:object_id>/")
    def read(limetype: str, object_id: int) -> Response:
        return _json(_with_links(base_url(), limetype, store().get(limetype, object_id)))

    @bp.put("/limeobject/<limetype>/<int:object_id>/")
    def update(limetype: str, object_id: int) -> Response:
        before, updated = store().change(limetype, object_id, _body())
        injector().wrote(limetype, object_id)
        if webhooks().wants(f"{limetype}.update"):
            webhooks().fire(f"{limetype}.update", _event_body(limetype, updated, before))
        return _json(_with_links(base_url(), limetype, updated))

    @bp.delete("/limeobject/<limetype>/<int:object_id>/")
    def delete(limetype: str, object_id: int) -> Response:
        store().delete(limetype, object_id)
        webhooks().fire(f"{limetype}.delete", {"id": object_id, "limetype": limetype})
        return Response(status=204)

    @bp.before_request
    def webhook_right() -> Response | None:
        allowed = settings().webhook_keys
        if request.path.split("/api/v1/")[-1].startswith("subscription") and allowed is not None and not any(
                hmac.compare_digest(request.headers.get("X-API-Key", ""), k) for k in allowed):
            return _error(403, "forbidden", "Managing webhooks needs an administrator or the group Webhook Users.")
        return None

    @bp.get("/subscription/available/")
    def available() -> Response:
        return _json({"events": [f"{lt}.{e}" for lt in store().limetypes for e in EVENTS]})

    @bp.get("/subscription/")
    def subscriptions() -> Response:
        enabled = request.args.get("enabled")
        found = webhooks().find(request.args.get("events"), request.args.get("target_url"),
                                None if enabled is None else enabled.lower() in ("true", "1"))
        return _json({"_embedded": {"subscriptions": [s.public() for s in found]}})

    @bp.post("/subscription/")
    def subscribe() -> Response:
        body = _body()
        events, target, secret = body.get("events"), body.get("target_url"), body.get("secret")
        if not (isinstance(events, list) and events and all(isinstance(e, str) for e in events)):
            raise bad_request("events must be a list such as [\"company.update\"].", "invalid_value")
        if not (isinstance(target, str) and target.startswith(("http://", "https://"))):
            raise bad_request("target_url must be an http(s) URL.", "invalid_value")
        if not (isinstance(secret, str) and secret):
            raise bad_request("secret is required.", "invalid_value")
        signature = body.get("signature", "v2")
        if signature not in SIGNATURES:
            raise bad_request(f"signature must be one of {', '.join(SIGNATURES)}.", "invalid_value")
        sub = webhooks().subscribe(events, target, secret, signature,
                                   bool(body.get("dont_disable_on_failed_delivery", False)))
        return _json(sub.public(), 201)

    @bp.get("/subscription/<int:sub_id>/")
    def subscription(sub_id: int) -> Response:
        sub = webhooks().get(sub_id)
        if sub is None:
            raise LimeRequestError(404, "not_found", f"No subscription {sub_id}.")
        return _json(sub.public())

    @bp.put("/subscription/<int:sub_id>/")
    def change_subscription(sub_id: int) -> Response:
        changes = {k: v for k, v in _body().items()
                   if k in ("events", "target_url", "secret", "enabled", "dont_disable_on_failed_delivery")}
        sub = webhooks().update(sub_id, changes)
        if sub is None:
            raise LimeRequestError(404, "not_found", f"No subscription {sub_id}.")
        return _json(sub.public())

    @bp.delete("/subscription/<int:sub_id>/")
    def unsubscribe(sub_id: int) -> Response:
        if not webhooks().remove(sub_id):
            raise LimeRequestError(404, "not_found", f"No subscription {sub_id}.")
        return Response(status=204)

    return bp


def _event_body(limetype: str, obj: dict[str, Any], before: dict[str, Any] | None = None) -> dict[str, Any]:
    """A delivery's body: every property (options as keys) plus id, timestamp and
    createdtime without underscore; for an update also the changed properties' old values."""
    values = {k: option_key(v) for k, v in obj.items() if not k.startswith("_")}
    values.update(id=obj["_id"], timestamp=obj.get("_timestamp"), createdtime=obj.get("_createdtime"))
    body: dict[str, Any] = {"id": obj["_id"], "limetype": limetype, "values": values}
    if before is not None:
        body["original_values"] = {k: option_key(before.get(k)) for k, v in values.items()
                                   if k in before and option_key(before.get(k)) != v}
    return body


def _int_param(name: str, default: int, minimum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {raw!r}.", "invalid_parameter") from None
    if value < minimum:
        raise bad_request(f"{name} must be at least {minimum}.", "invalid_parameter")
    return value


def _page_url(base: str, limetype: str, limit: int, **position: int) -> str:
    """This list's URL for another page: ``_offset=N`` or ``_offset_id=ID``."""
    args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("_offset", "_offset_id", "_limit")]
    args += [("_limit", str(limit)), *((k, str(v)) for k, v in position.items())]
    return f"{base}limeobject/{limetype}/?{urlencode(args)}"


def _with_links(base: str, limetype: str, obj: dict[str, Any]) -> dict[str, Any]:
    lt = store().limetype(limetype)
    links: dict[str, Any] = {
        "self": {"href": f"{base}limeobject/{limetype}/{obj['_id']}/"},
        "limetype": {"href": f"{base}limetype/{limetype}/", "name": limetype},
    }
    for prop in lt.properties.values():
        if prop.related:
            links[f"relation_{prop.name}"] = {
                "href": f"{base}limeobject/{limetype}/{obj['_id']}/{prop.name}/",
                "name": prop.name,
            }
    return {**obj, "_links": links}


def _body() -> dict[str, Any]:
    if not request.is_json:
        raise bad_request("Send the object as JSON (Content-Type: application/json).", "invalid_body")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object of property values.", "invalid_body")
    return body


# ----------------------------------------------------------------------------- admin


def _admin_blueprint() -> Blueprint:
    bp = Blueprint("lime_admin", __name__)

    @bp.before_request
    def guard() -> Response | None:
        if not hmac.compare_digest(request.headers.get("X-Admin-Key", ""), settings().admin_key):
            return _error(401, "unauthorized", "A valid X-Admin-Key header is required.")
        return None

    @bp.get("/faults")
    def get_faults() -> Response:
        return _json(injector().snapshot(), content_type="application/json")

    @bp.put("/faults")
    def put_faults() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "invalid_body", "Send a JSON object of faults, e.g. {\"down\": true}.")
        try:
            return _json(injector().configure(body), content_type="application/json")
        except ValueError as err:
            return _error(400, "invalid_fault", str(err))

    @bp.get("/stats")
    def stats() -> Response:
        return _json(injector().stats(), content_type="application/json")

    @bp.post("/stats/reset")
    def reset_stats() -> Response:
        injector().reset_stats()
        return Response(status=204)

    @bp.get("/webhooks")
    def webhook_stats() -> Response:
        hooks = webhooks()
        return _json({**hooks.stats, "pending": hooks.pending(), "lose_rate": hooks.lose_rate,
                      "duplicate_rate": hooks.duplicate_rate, **hooks.pending_faults()},
                     content_type="application/json")

    @bp.put("/webhooks")
    def webhook_faults() -> Response:
        body = request.get_json(silent=True) or {}
        for name in ("lose_rate", "duplicate_rate"):
            if name in body:
                value = body[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    return _error(400, "invalid_body", f"{name} is a share between 0 and 1.")
        object_id = body.get("object_id")
        if object_id is not None and (isinstance(object_id, bool) or not isinstance(object_id, int)):
            return _error(400, "invalid_body", "object_id is the id of a Lime object.")
        for name in ("lose_next", "duplicate_next"):
            value = body.get(name)
            if name in body and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                return _error(400, "invalid_body", f"{name} is a number of deliveries (0 or more).")
        for name in ("lose_rate", "duplicate_rate"):
            if name in body:
                setattr(webhooks(), name, float(body[name]))
        if "lose_next" in body:
            webhooks().lose_next(body["lose_next"], object_id)
        if "duplicate_next" in body:
            webhooks().duplicate_next(body["duplicate_next"], object_id)
        return webhook_stats()

    @bp.get("/counts")
    def counts() -> Response:
        """Objects per limetype; with filters (as the list takes them: ``max-messageid=300``),
        only the limetypes that have those properties, counted through them."""
        names = [n for n in store().limetypes if all(
            p.removeprefix("min-").removeprefix("max-") in store().limetype(n).properties for p in request.args)]
        return _json({n: store().count(n, _filters(store().limetype(n))) for n in names},
                     content_type="application/json")

    @bp.get("/objects/<limetype>")
    def objects(limetype: str) -> Response:
        return _json(store().all_objects(limetype), content_type="application/json")

    return bp


class LimeStandIn:
    """The stand-in as an object: its app, store and fault injector, servable on a port."""

    def __init__(self, settings: LimeSandboxSettings, host: str = "127.0.0.1", port: int = 0):
        from sandbox.serve import ServerThread

        self.settings = settings
        self.app = create_lime_app(settings)
        self.store: LimeStore = self.app.extensions["lime_store"]
        self.faults: FaultInjector = self.app.extensions["lime_faults"]
        self.webhooks: Webhooks = self.app.extensions["lime_webhooks"]
        self.server = ServerThread(self.app, host, port)

    @property
    def api_url(self) -> str:
        return f"{self.server.url}{self.settings.application}/api/v1/"

    @property
    def web_url(self) -> str:
        """The web client's base: a card is ``<web_url><limetype>/<id>``."""
        return f"{self.server.url}{self.settings.application}/web/"

    def card_url(self, limetype: str, object_id: int) -> str:
        return f"{self.web_url}{limetype}/{object_id}"

    @property
    def api_key(self) -> str:
        return self.settings.api_keys[0]

    def start(self) -> LimeStandIn:
        self.server.start()
        return self

    def stop(self) -> None:
        """Stop serving (start() serves again: an outage in a test)."""
        self.server.stop()

    def close(self) -> None:
        """Stop serving and delivering webhooks, for good."""
        self.server.stop()
        self.webhooks.stop()
