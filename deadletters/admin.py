"""The dead-letter pages under /admin: failed messages of both directions (BFUS ->
Lime, Lime -> BFUS) with filters and counts per direction and per reason, a detail
view with requeue and discard, and live counts (queue depths, processed and failed
per hour). Server-rendered; HTTP basic auth with the admin credentials of the
configuration (not BFUS's key); forms carry a CSRF token."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from deadletters.format import age, parse_age, pretty_payload
from deadletters.service import DeadLetters, direction_of
from shared.config import Config
from shared.inspect import describe, ready_count
from shared.lime import LimeClient, LimeError
from shared.limeevents import customer_keys
from shared.logrecords import DIRECTIONS, FROM_BFUS, STATUSES, TO_BFUS, status_of

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")
DIRECTION_NAMES = {FROM_BFUS: "BFUS → Lime", TO_BFUS: "Lime → BFUS"}


def _config() -> Config:
    return current_app.config["BFUS_LIME"]


def _service() -> DeadLetters:
    service = current_app.extensions.get("dead_letters")
    if service is None:
        service = current_app.extensions["dead_letters"] = DeadLetters(_config().broker, LimeClient(_config().lime),
                                                                        _config().lime.failed_limetype,
                                                                        customer_keys(_config().mapping))
    return service


def _csrf_token() -> str:
    admin = _config().admin
    return hmac.new(f"{admin.user}:{admin.password}".encode(), b"bfus-lime admin forms", hashlib.sha256).hexdigest()


@bp.before_request
def guard() -> Response | None:
    admin = _config().admin
    if not admin.password:
        abort(404)  # the pages are off until a password is configured
    auth = request.authorization
    # compare_digest refuses str that is not ASCII (a TypeError, so a 500): compare UTF-8 bytes
    if not auth or not (hmac.compare_digest((auth.username or "").encode(), admin.user.encode())
                        and hmac.compare_digest((auth.password or "").encode(), admin.password.encode())):
        return Response("Sign in with the bfus-lime admin credentials.", 401,
                        {"WWW-Authenticate": 'Basic realm="bfus-lime admin", charset="UTF-8"'})
    if request.method == "POST":
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc != request.host:
            abort(403)
        if not hmac.compare_digest(request.form.get("csrf", "").encode(), _csrf_token().encode()):
            abort(403)
    return None


@bp.app_context_processor
def helpers() -> dict[str, Any]:
    return {"csrf_token": _csrf_token, "status_key": status_of, "direction_key": direction_of, "age": age,
            "direction_names": DIRECTION_NAMES}


def _direction(value: str | None) -> str:
    """A direction filter from a query or a form: one of DIRECTIONS, or "" for both."""
    value = (value or "").strip()
    return value if value in DIRECTIONS else ""


@bp.get("/")
def index() -> str:
    filters = {name: request.args.get(name, "").strip() for name in ("reason", "objecttype", "customerno",
                                                                     "older_than")}
    filters["direction"] = _direction(request.args.get("direction"))
    status = request.args.get("status", "failed")
    statuses = STATUSES if status == "all" else (status,) if status in STATUSES else ("failed",)
    error = None
    records: list[dict[str, Any]] = []
    try:
        records = _service().records(statuses, filters["reason"] or None, filters["objecttype"] or None,
                                     filters["customerno"] or None, parse_age(filters["older_than"] or None))
    except LimeError as err:
        error = f"Lime did not answer: {err}"
    except ValueError as err:  # a bad age filter
        error = str(err)
    # counted before the direction filter, so the page shows what the other direction holds
    directions = Counter(direction_of(r) for r in records)
    if filters["direction"]:
        records = [r for r in records if direction_of(r) == filters["direction"]]
    reasons = Counter(r.get("reason") or "-" for r in records)

    def link(direction: str) -> str:  # this page with the same filters, another direction
        wanted: dict[str, Any] = {**filters, "status": status, "direction": direction}
        return url_for("admin.index", **{k: v for k, v in wanted.items() if v})

    return render_template("admin/index.html", records=list(reversed(records)), reasons=sorted(reasons.items()),
                           directions=[(d, directions[d], link(d)) for d in DIRECTIONS], both=link(""),
                           filters=filters, status=status, statuses=STATUSES, error=error,
                           done=request.args.get("done"))


@bp.get("/failed/<int:record_id>")
def detail(record_id: int) -> str:
    try:
        record = _service().record(record_id)
    except LimeError as err:
        abort(404, description=str(err))
    letters = [letter for letter in _service().letters() if letter.record_id == record_id]
    return render_template("admin/detail.html", record=record, letters=letters,
                           payload=pretty_payload(record.get("payload") or ""), done=request.args.get("done"))


@bp.post("/failed/<int:record_id>/requeue")
def requeue(record_id: int) -> BaseResponse:
    actions = _service().requeue([record_id])
    return redirect(url_for("admin.detail", record_id=record_id, done="; ".join(a.what for a in actions)))


@bp.post("/failed/<int:record_id>/discard")
def discard(record_id: int) -> BaseResponse:
    why = request.form.get("why", "").strip()
    if not why:
        return redirect(url_for("admin.detail", record_id=record_id, done="say why it is discarded"))
    actions = _service().discard([record_id], why)
    return redirect(url_for("admin.detail", record_id=record_id, done="; ".join(a.what for a in actions)))


@bp.post("/requeue")
def requeue_reason() -> BaseResponse:
    reason = request.form.get("reason", "").strip()
    direction = _direction(request.form.get("direction"))
    kept: dict[str, Any] = {"direction": direction} if direction else {}
    if not reason:
        return redirect(url_for("admin.index", done="name a reason to requeue", **kept))
    actions = _service().requeue(None, reason, direction or None)
    done = (f"{sum(1 for a in actions if a.what.startswith('requeued'))} requeued with reason {reason}"
            + (f", direction {direction}" if direction else ""))
    return redirect(url_for("admin.index", done=done, **kept))


# ----------------------------------------------------------------------------- live counts

_cache: dict[str, tuple[float, Any]] = {}
_cache_lock = threading.Lock()


def _cached(name: str, seconds: float, compute: Any) -> Any:
    with _cache_lock:
        hit = _cache.get(name)
        if hit and time.monotonic() - hit[0] < seconds:
            return hit[1]
    value = compute()
    with _cache_lock:
        _cache[name] = (time.monotonic(), value)
    return value


def _per_hour(hours: int = 12) -> list[tuple[str, int, int]]:
    """Processed and failed messages per hour, newest hour first (from Lime's log)."""
    config = _config()
    lime = _service().lime
    now = dt.datetime.now(dt.UTC)
    since = (now - dt.timedelta(hours=hours)).replace(minute=0, second=0, microsecond=0)
    buckets: dict[str, list[int]] = {}
    for i in range(hours + 1):
        buckets[(since + dt.timedelta(hours=i)).strftime("%Y-%m-%d %H:00")] = [0, 0]
    for column, (limetype, stamp) in enumerate(((config.lime.processed_limetype, "processedtime"),
                                                (config.lime.failed_limetype, "failedtime"))):
        for record in lime.iterate(limetype, {f"min-{stamp}": since.isoformat()}, page_size=500):
            if record.get(stamp):
                hour = dt.datetime.fromisoformat(record[stamp]).astimezone(dt.UTC).strftime("%Y-%m-%d %H:00")
                if hour in buckets:
                    buckets[hour][column] += 1
    return [(hour, p, f) for hour, (p, f) in sorted(buckets.items(), reverse=True)]


@bp.get("/counts")
def counts() -> str:
    """The live part: shown in a frame that reloads itself every 10 seconds."""
    config = _config()
    error = None
    queues: list[Any] = []
    hours: list[tuple[str, int, int]] = []
    try:
        queues = _cached("queues", 5, lambda: describe(config.broker, config.broker.management_url or None))
    except Exception as err:
        error = f"RabbitMQ: {err or type(err).__name__}"
    try:
        hours = _cached("hours", 30, _per_hour)
    except LimeError as err:
        error = f"Lime: {err}"
    partitions = queues[: config.broker.partitions]
    waiting = sum(q.ready + (q.unacked or 0) for q in partitions)
    try:
        dead = ready_count(config.broker, _service().topology.dead_queue)
    except Exception:
        dead = queues[config.broker.partitions + 1].ready if len(queues) > config.broker.partitions + 1 else 0
    return render_template("admin/counts.html", waiting=waiting, dead=dead, partitions=partitions, hours=hours,
                           error=error, owners=len({q.owner for q in partitions if q.owner}))
