"""The Lime stand-in's REST API (contract.md §3) as a WSGI app of its own, mounted by
sandbox/lime/app.py at ``/<application>/api/v1``:

    /                                       GET
    /limetype/                              GET
    /limetype/<name>/                       GET
    /limeobject/<type>/                     GET (filters, paging, _sort), POST
    /limeobject/<type>/<id>/                GET, PUT (partial), DELETE
    /subscription/                          GET (filters events, target_url, enabled), POST
    /subscription/<id>/                     GET, PUT, DELETE
    /subscription/available/                GET

Every request the API routes is counted and may meet a fault (sandbox/lime/faults.py)
before its API key is checked; every create, update and delete fires the webhooks of
sandbox/lime/webhooks.py. Errors are JSON ``{"error": code, "message": text}``.

A request is served in two steps, ``admit`` (route, count, decide the fault and the
latency) and ``serve`` (answer), so that the latency can pass between them without a
thread: sandbox/lime/front.py sleeps it out on the event loop. As a WSGI app
(``__call__``, mounted in the Flask app) the request's thread sleeps instead.

Why no web framework here: every Lime call of every benchmark lands on this app, and
the stand-in shares the benchmark's machine (issue 14). Measured with ``python -m
bench.cpu`` (Lime latency 20 ms), the stand-in's CPU per request with the same handlers
was about 1.5 ms under Flask, 1.4 under werkzeug's Request and Response, 1.15 under
Falcon, and about 1.1 served from the WSGI environ as here, under waitress; about 0.6
on uvicorn's event loop (docs/operations.md, "CPU").
Routing stays werkzeug's (the rules and the 404 and 405 that Flask gave); a request is
read from the environ by ``Call`` and answered by ``Answer``.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wsgi import get_current_url, get_input_stream

from sandbox.lime.faults import FaultInjector
from sandbox.lime.schema import Limetype
from sandbox.lime.store import INTEGERS, Filter, LimeRequestError, LimeStore, bad_request
from sandbox.lime.webhooks import EVENTS, SIGNATURES, Webhooks
from shared.lime import option_key

if TYPE_CHECKING:
    from sandbox.lime.app import LimeSandboxSettings

HAL = "application/hal+json"
MOST_BODY = 64 * 1024 * 1024  # bytes a request may send (413 beyond: a Lime object is a few KB)
CONTROL_PARAMS = {"_limit", "_offset", "_offset_id", "_sort", "_embed"}
FAULT_CODES = {503: "unavailable", 429: "too_many_requests", 500: "internal_error"}
SUBSCRIPTION_ENDPOINTS = {"available", "subscriptions", "subscribe", "subscription", "change_subscription",
                          "unsubscribe"}

log = logging.getLogger(__name__)

ID = f"int(max={INTEGERS.stop - 1})"  # an id past what Lime stores is no path of Lime's: 404
ROUTES = Map([
    Rule("/", endpoint="index", methods=["GET"]),
    Rule("/limetype/", endpoint="limetypes", methods=["GET"]),
    Rule("/limetype/<limetype>/", endpoint="limetype", methods=["GET"]),
    Rule("/limeobject/<limetype>/", endpoint="list_objects", methods=["GET"]),
    Rule("/limeobject/<limetype>/", endpoint="create", methods=["POST"]),
    Rule(f"/limeobject/<limetype>/<{ID}:object_id>/", endpoint="read", methods=["GET"]),
    Rule(f"/limeobject/<limetype>/<{ID}:object_id>/", endpoint="update", methods=["PUT"]),
    Rule(f"/limeobject/<limetype>/<{ID}:object_id>/", endpoint="delete", methods=["DELETE"]),
    Rule("/subscription/available/", endpoint="available", methods=["GET"]),
    Rule("/subscription/", endpoint="subscriptions", methods=["GET"]),
    Rule("/subscription/", endpoint="subscribe", methods=["POST"]),
    Rule(f"/subscription/<{ID}:sub_id>/", endpoint="subscription", methods=["GET"]),
    Rule(f"/subscription/<{ID}:sub_id>/", endpoint="change_subscription", methods=["PUT"]),
    Rule(f"/subscription/<{ID}:sub_id>/", endpoint="unsubscribe", methods=["DELETE"]),
], strict_slashes=False, merge_slashes=False)  # "a//b" is no path of Lime's: 404, not a redirect


@dataclass
class Answer:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def header_list(self) -> list[tuple[str, str]]:
        headers = list(self.headers.items())
        if self.content_type is not None:
            headers += [("Content-Type", self.content_type), ("Content-Length", str(len(self.body)))]
        return headers

    def __call__(self, start_response: Callable[..., Any]) -> list[bytes]:
        start_response(f"{self.status} {HTTPStatus(self.status).phrase}", self.header_list())
        return [self.body]


def json_answer(body: Any, status: int = 200, content_type: str = HAL,
                headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(body, ensure_ascii=False).encode(), content_type, headers or {})


def error_answer(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    return json_answer({"error": code, "message": message}, status, "application/json", headers)


class Call:
    """What the handlers read of a request, from its WSGI environ."""

    def __init__(self, environ: dict[str, Any]):
        self.environ = environ
        self.method: str = environ["REQUEST_METHOD"]
        self.args = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        self._data: bytes | None = None

    def arg(self, name: str) -> str | None:
        return next((value for key, value in self.args if key == name), None)

    @property
    def data(self) -> bytes:
        if self._data is None:
            self._data = get_input_stream(self.environ).read()
        return self._data

    def header(self, name: str) -> str:
        return str(self.environ.get("HTTP_" + name.upper().replace("-", "_"), ""))

    def json_object(self) -> dict[str, Any]:
        """The body, which must be a JSON object sent as JSON."""
        mimetype = self.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        if not (mimetype == "application/json" or mimetype.startswith("application/") and mimetype.endswith("+json")):
            raise bad_request("Send the object as JSON (Content-Type: application/json).", "invalid_body")
        try:
            body = json.loads(self.data)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            raise bad_request("The body must be a JSON object of property values.", "invalid_body")
        return body


def request_filters(store: LimeStore, lt: Limetype, args: Iterable[tuple[str, str]]) -> list[Filter]:
    """A request's filters: ``prop=value``, ``min-prop=``, ``max-prop=``."""
    filters = []
    for name, raw in args:
        if name in CONTROL_PARAMS:
            continue
        op = "="
        if name.startswith("min-"):
            name, op = name[4:], ">="
        elif name.startswith("max-"):
            name, op = name[4:], "<="
        column, value = store.filter_value(lt, name, raw)
        filters.append(Filter(column, op, value))
    return filters


def event_body(limetype: str, obj: dict[str, Any], before: dict[str, Any] | None = None) -> dict[str, Any]:
    """A delivery's body: every property (options as keys) plus id, timestamp and
    createdtime without underscore; for an update also the changed properties' old values."""
    values = {k: option_key(v) for k, v in obj.items() if not k.startswith("_")}
    values.update(id=obj["_id"], timestamp=obj.get("_timestamp"), createdtime=obj.get("_createdtime"))
    body: dict[str, Any] = {"id": obj["_id"], "limetype": limetype, "values": values}
    if before is not None:
        body["original_values"] = {k: option_key(before.get(k)) for k, v in values.items()
                                   if k in before and option_key(before.get(k)) != v}
    return body


@dataclass
class Admitted:
    """A request routed and counted, to be served after ``delay`` seconds (the latency)."""

    call: Call
    endpoint: str
    args: Mapping[str, Any]
    verdict: tuple[int, str, dict[str, str]] | None  # a fault's (status, message, headers), or None
    delay: float


_URL_PARTS = ("wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT")


class LimeAPI:
    def __init__(self, settings: LimeSandboxSettings, store: LimeStore, faults: FaultInjector, webhooks: Webhooks):
        self.settings = settings
        self.store = store
        self.faults = faults
        self.webhooks = webhooks
        # A path's route, kept for the paths seen last: werkzeug's matcher walks its rules
        # anew for every request, and a stand-in's requests repeat their paths.
        self.route = functools.lru_cache(maxsize=4096)(ROUTES.bind("lime").match)
        self._base_urls: dict[tuple[Any, ...], str] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """The API as a WSGI app: the request's thread sleeps out the latency."""
        admitted = self.admit(environ)
        if isinstance(admitted, Answer):
            return admitted(start_response)
        if admitted.delay:
            time.sleep(admitted.delay)
        return self.serve(admitted)(start_response)

    def admit(self, environ: dict[str, Any]) -> Admitted | Answer:
        """Route the request, count it and decide its fault: what ``serve`` answers
        once the caller has waited ``delay`` seconds. An unknown path or method is
        answered at once, neither counted nor delayed."""
        call = Call(environ)
        try:
            endpoint, args = self.route(_path_info(environ), call.method)
        except NotFound:
            return error_answer(404, "not_found", f"No such resource: {self._path(environ)}")
        except MethodNotAllowed:
            return error_answer(405, "method_not_allowed", f"{call.method} is not allowed on {self._path(environ)}")
        verdict, delay = self.faults.admit(call.method, args.get("limetype", "limetype"),
                                           environ.get("REMOTE_ADDR") or "-",
                                           call.data if call.method in ("POST", "PUT") else b"")
        return Admitted(call, endpoint, args, verdict, delay)

    def serve(self, admitted: Admitted) -> Answer:
        """The answer to an admitted request: its fault's, else the handler's."""
        call = admitted.call
        try:
            answer = self._guard(admitted) or getattr(self, admitted.endpoint)(call, **admitted.args)
        except LimeRequestError as err:
            answer = error_answer(err.status, err.code, err.message)
        except Exception:
            log.exception("the Lime stand-in failed on %s %s", call.method, self._path(call.environ))
            answer = error_answer(500, "internal_error", "The stand-in failed on this request.")
        self.faults.answered(answer.status)
        return answer

    @staticmethod
    def _path(environ: dict[str, Any]) -> str:
        return f"{environ.get('SCRIPT_NAME', '')}{_path_info(environ)}"

    def _guard(self, admitted: Admitted) -> Answer | None:
        """The fault's answer, if any, then the API key and the right to manage webhooks."""
        if admitted.verdict is not None:
            status, message, headers = admitted.verdict
            return error_answer(status, FAULT_CODES[status], message, headers)
        key = admitted.call.header("X-API-Key")
        if not any(hmac.compare_digest(key, k) for k in self.settings.api_keys):
            return error_answer(401, "unauthorized", "A valid X-API-Key header is required.")
        allowed = self.settings.webhook_keys
        if admitted.endpoint in SUBSCRIPTION_ENDPOINTS and allowed is not None and not any(
                hmac.compare_digest(key, k) for k in allowed):
            return error_answer(403, "forbidden",
                                "Managing webhooks needs an administrator or the group Webhook Users.")
        return None

    def base_url(self, call: Call) -> str:
        """The API's address as this request reached it (kept per host, for a few hosts)."""
        key = tuple(call.environ.get(k) for k in _URL_PARTS)
        url = self._base_urls.get(key)
        if url is None:
            url = f"{get_current_url(call.environ, host_only=True)}{self.settings.application}/api/v1/"
            if len(self._base_urls) < 64:
                self._base_urls[key] = url
        return url

    def with_links(self, base: str, limetype: str, obj: dict[str, Any]) -> dict[str, Any]:
        links: dict[str, Any] = {
            "self": {"href": f"{base}limeobject/{limetype}/{obj['_id']}/"},
            "limetype": {"href": f"{base}limetype/{limetype}/", "name": limetype},
        }
        for prop in self.store.limetype(limetype).properties.values():
            if prop.related:
                links[f"relation_{prop.name}"] = {
                    "href": f"{base}limeobject/{limetype}/{obj['_id']}/{prop.name}/",
                    "name": prop.name,
                }
        return {**obj, "_links": links}

    # ------------------------------------------------------------------ metadata

    def index(self, call: Call) -> Answer:
        base = self.base_url(call)
        return json_answer({"_links": {"self": {"href": base}, "limetype": {"href": f"{base}limetype/"},
                                       "limeobject": {"href": f"{base}limeobject/{{limetype}}/",
                                                      "templated": True}}})

    def limetypes(self, call: Call) -> Answer:
        base = self.base_url(call)
        types = [lt.to_json(base) for lt in self.store.limetypes.values()]
        return json_answer({
            "_links": {
                "self": {"href": f"{base}limetype/"},
                "limetypes": [{"href": f"{base}limetype/{t['name']}/", "name": t["name"]} for t in types],
            },
            "_embedded": {"limetypes": types},
        })

    def limetype(self, call: Call, limetype: str) -> Answer:
        return json_answer(self.store.limetype(limetype).to_json(self.base_url(call)))

    # ------------------------------------------------------------------ objects

    def list_objects(self, call: Call, limetype: str) -> Answer:
        lt = self.store.limetype(limetype)
        limit = min(_int_arg(call, "_limit", self.settings.default_limit, minimum=1), self.settings.max_limit)
        offset = _int_arg(call, "_offset", 0, minimum=0)
        filters = request_filters(self.store, lt, call.args)
        sorts = [s.strip() for s in (call.arg("_sort") or "").split(",") if s.strip()]
        order = [self.store.sort_column(lt, s) for s in sorts]
        # Lime pages by keyset: in _id order the next link names the last id seen
        # (_offset_id), so objects created or deleted meanwhile shift nothing. Other
        # orders page by offset here (a stand-in's simplification).
        keyset = sorts in ([], ["_id"])
        after = _int_arg(call, "_offset_id", 0, minimum=0)
        if keyset and after:
            filters.append(Filter("_id", ">", after))
        objects, more = self.store.query(limetype, filters, order, limit, 0 if keyset else offset)
        base = self.base_url(call)
        links: dict[str, Any] = {"self": {"href": get_current_url(call.environ)}}
        if more and keyset:
            links["next"] = {"href": _page_url(call, base, limetype, limit, _offset_id=objects[-1]["_id"])}
        elif more:
            links["next"] = {"href": _page_url(call, base, limetype, limit, _offset=offset + limit)}
        if offset > 0 and not keyset:
            links["prev"] = {"href": _page_url(call, base, limetype, limit, _offset=max(0, offset - limit))}
        return json_answer({"_links": links,
                            "_embedded": {"limeobjects": [self.with_links(base, lt.name, o) for o in objects]}})

    def create(self, call: Call, limetype: str) -> Answer:
        created = self.store.create(limetype, call.json_object())
        self.faults.wrote(limetype, created["_id"])
        if self.webhooks.wants(f"{limetype}.new"):
            self.webhooks.fire(f"{limetype}.new", event_body(limetype, created))
        return json_answer(self.with_links(self.base_url(call), limetype, created), 201)

    def read(self, call: Call, limetype: str, object_id: int) -> Answer:
        return json_answer(self.with_links(self.base_url(call), limetype, self.store.get(limetype, object_id)))

    def update(self, call: Call, limetype: str, object_id: int) -> Answer:
        event = f"{limetype}.update"
        if self.webhooks.wants(event):  # the object before only for the event's original_values
            before, updated = self.store.change(limetype, object_id, call.json_object())
            self.webhooks.fire(event, event_body(limetype, updated, before))
        else:
            updated = self.store.update(limetype, object_id, call.json_object())
        self.faults.wrote(limetype, object_id)
        return json_answer(self.with_links(self.base_url(call), limetype, updated))

    def delete(self, call: Call, limetype: str, object_id: int) -> Answer:
        self.store.delete(limetype, object_id)
        self.webhooks.fire(f"{limetype}.delete", {"id": object_id, "limetype": limetype})
        return Answer(204)

    # ------------------------------------------------------------------ webhooks

    def available(self, call: Call) -> Answer:
        return json_answer({"events": [f"{lt}.{e}" for lt in self.store.limetypes for e in EVENTS]})

    def subscriptions(self, call: Call) -> Answer:
        enabled = call.arg("enabled")
        found = self.webhooks.find(call.arg("events"), call.arg("target_url"),
                                   None if enabled is None else enabled.lower() in ("true", "1"))
        return json_answer({"_embedded": {"subscriptions": [s.public() for s in found]}})

    def subscribe(self, call: Call) -> Answer:
        body = call.json_object()
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
        sub = self.webhooks.subscribe(events, target, secret, signature,
                                      bool(body.get("dont_disable_on_failed_delivery", False)))
        return json_answer(sub.public(), 201)

    def subscription(self, call: Call, sub_id: int) -> Answer:
        sub = self.webhooks.get(sub_id)
        if sub is None:
            raise LimeRequestError(404, "not_found", f"No subscription {sub_id}.")
        return json_answer(sub.public())

    def change_subscription(self, call: Call, sub_id: int) -> Answer:
        changes = {k: v for k, v in call.json_object().items()
                   if k in ("events", "target_url", "secret", "enabled", "dont_disable_on_failed_delivery")}
        sub = self.webhooks.update(sub_id, changes)
        if sub is None:
            raise LimeRequestError(404, "not_found", f"No subscription {sub_id}.")
        return json_answer(sub.public())

    def unsubscribe(self, call: Call, sub_id: int) -> Answer:
        if not self.webhooks.remove(sub_id):
            raise LimeRequestError(404, "not_found", f"No subscription {sub_id}.")
        return Answer(204)


def _path_info(environ: dict[str, Any]) -> str:
    """The path below the API, as text: WSGI gives its UTF-8 bytes as Latin-1 characters."""
    path: str = environ.get("PATH_INFO") or "/"
    return path if path.isascii() else path.encode("latin-1").decode("utf-8", "replace")


def _int_arg(call: Call, name: str, default: int, minimum: int) -> int:
    raw = call.arg(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer, got {raw!r}.", "invalid_parameter") from None
    if value < minimum:
        raise bad_request(f"{name} must be at least {minimum}.", "invalid_parameter")
    if value not in INTEGERS:
        raise bad_request(f"{name} must be below 2^63.", "invalid_parameter")
    return value


def _page_url(call: Call, base: str, limetype: str, limit: int, **position: int) -> str:
    """This list's URL for another page: ``_offset=N`` or ``_offset_id=ID``."""
    args = [(k, v) for k, v in call.args if k not in ("_offset", "_offset_id", "_limit")]
    args += [("_limit", str(limit)), *((k, str(v)) for k, v in position.items())]
    return f"{base}limeobject/{limetype}/?{urlencode(args)}"
