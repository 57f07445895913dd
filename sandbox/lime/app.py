"""The Lime CRM stand-in: the REST API of contract.md §3 on SQLite (sandbox/lime/api.py,
mounted at ``/<application>/api/v1``), plus an admin API (its own key) for fault
injection, request counts and data export, and the web client's cards. ``LimeStandIn``
serves it all through sandbox/lime/front.py (the API on uvicorn's event loop).

    /_admin/faults  GET, PUT      /_admin/stats  GET     /_admin/stats/reset  POST
    /_admin/objects/<type>  GET (every object, no paging)   /_admin/counts  GET
    /_admin/webhooks  GET (delivery counts), PUT {"lose_rate", "duplicate_rate"} (shares, at random)
                      or {"lose_next", "duplicate_next", "object_id"} (the next few deliveries,
                      of the object's events or, without object_id, of any)
    /<application>/web/<limetype>/<id>                  GET: the object's card in the web client, an
                      HTML page: its properties and an actionpad with each non-empty link property
                      as a link named by its localname (sandbox/lime/web.py; no API key, no faults)
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from sandbox.httperrors import answer_http_errors_in_json
from sandbox.lime.api import MOST_BODY, Answer, LimeAPI, error_answer, json_answer, request_filters
from sandbox.lime.faults import FaultInjector, Faults
from sandbox.lime.schema import load_schema
from sandbox.lime.store import LimeRequestError, LimeStore
from sandbox.lime.web import web_blueprint
from sandbox.lime.webhooks import Webhooks


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


def _response(answer: Answer) -> Response:
    return Response(answer.body, status=answer.status, content_type=answer.content_type, headers=answer.headers)


def _json(body: Any) -> Response:
    return _response(json_answer(body, content_type="application/json"))


def _error(status: int, code: str, message: str) -> Response:
    return _response(error_answer(status, code, message))


def create_lime_app(settings: LimeSandboxSettings) -> Flask:
    app = Flask("sandbox.lime")
    app.config["LIME"] = settings
    app.config["MAX_CONTENT_LENGTH"] = MOST_BODY
    app.extensions["lime_store"] = lime_store = LimeStore(settings.db_path, load_schema(settings.schema_path))
    app.extensions["lime_faults"] = faults = FaultInjector(settings.faults, settings.seed)
    app.extensions["lime_webhooks"] = hooks = Webhooks(settings.webhook_retry_base, seed=settings.seed)
    app.url_map.strict_slashes = False
    app.register_blueprint(_admin_blueprint(), url_prefix="/_admin")
    app.register_blueprint(web_blueprint(), url_prefix=f"/{settings.application}/web")
    app.extensions["lime_api"] = api = LimeAPI(settings, lime_store, faults, hooks)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {f"/{settings.application}/api/v1": api})  # type: ignore[method-assign]

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
        return _json(injector().snapshot())

    @bp.put("/faults")
    def put_faults() -> Response:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, "invalid_body", "Send a JSON object of faults, e.g. {\"down\": true}.")
        try:
            return _json(injector().configure(body))
        except ValueError as err:
            return _error(400, "invalid_fault", str(err))

    @bp.get("/stats")
    def stats() -> Response:
        return _json(injector().stats())

    @bp.post("/stats/reset")
    def reset_stats() -> Response:
        injector().reset_stats()
        return Response(status=204)

    @bp.get("/webhooks")
    def webhook_stats() -> Response:
        hooks = webhooks()
        return _json({**hooks.stats, "pending": hooks.pending(), "lose_rate": hooks.lose_rate,
                      "duplicate_rate": hooks.duplicate_rate, **hooks.pending_faults()})

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
        args = list(request.args.items(multi=True))
        return _json({n: store().count(n, request_filters(store(), store().limetype(n), args)) for n in names})

    @bp.get("/objects/<limetype>")
    def objects(limetype: str) -> Response:
        return _json(store().all_objects(limetype))

    return bp


class LimeStandIn:
    """The stand-in as an object: its app, store and fault injector, servable on a port
    (by uvicorn, the API on its event loop: sandbox/lime/front.py)."""

    def __init__(self, settings: LimeSandboxSettings, host: str = "127.0.0.1", port: int = 0):
        from sandbox.lime.front import LimeFront
        from sandbox.serve import LoopServerThread

        self.settings = settings
        self.app = create_lime_app(settings)
        self.store: LimeStore = self.app.extensions["lime_store"]
        self.faults: FaultInjector = self.app.extensions["lime_faults"]
        self.webhooks: Webhooks = self.app.extensions["lime_webhooks"]
        self.front = LimeFront(self.app, self.app.extensions["lime_api"], f"/{settings.application}/api/v1")
        self.server = LoopServerThread(self.front, host, port)

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
        self.front.close()
        self.webhooks.stop()
