"""``POST /lime/events``: Lime's webhook deliveries (docs/lime-to-bfus.md). A delivery
without a valid signature is answered 401 and queues nothing. A signed one is
published with publisher confirms to its partition (a linked company's customer's, where
BFUS's messages about that customer go; else its Lime object's) and answered
202 only once RabbitMQ confirmed it (503 otherwise, so Lime tries again); a v2
delivery whose id was queued before is answered 200 ``duplicate`` and queues nothing.
A signed body that is not a Lime event is kept for the failed-message log and
answered 400. Nothing here calls Lime or BFUS: the answer comes fast."""

from __future__ import annotations

import hashlib
import time

import pika
from flask import Blueprint, Response, current_app, jsonify, request

from receiver import context
from receiver.deliveries import Deliveries
from receiver.errors import error_response
from receiver.signatures import SignatureError, verify
from shared import headers as h
from shared.envelope import EnvelopeError
from shared.limeevents import parse_event, queue_properties
from shared.logs import get_logger
from shared.publisher import BrokerUnavailable, MessageUnencodable
from shared.topology import INVALID_ROUTING_KEY

bp = Blueprint("lime_events", __name__)
log = get_logger(component="receiver")


def _deliveries() -> Deliveries:
    found = current_app.extensions.get("deliveries")
    if found is None:
        receiver = context.config().receiver
        found = current_app.extensions["deliveries"] = Deliveries(receiver.deliveries_db, 2 * receiver.lime_max_age)
    return found


@bp.post("/lime/events")
def receive_event() -> Response:
    receiver = context.config().receiver
    body = request.get_data(cache=False)
    try:
        secrets = [receiver.lime_secret, receiver.lime_previous_secret]
        signed = verify(dict(request.headers.items()), body, secrets, time.time(), receiver.lime_max_age)
    except SignatureError as err:
        log.warning("lime_event_refused", reason=str(err))
        return error_response(401, "unauthorized", str(err))
    delivery = signed.delivery_id or hashlib.sha256(body).hexdigest()
    if signed.delivery_id and _deliveries().seen(signed.delivery_id):
        log.info("lime_event_duplicate", delivery=delivery)
        return _answer(200, "duplicate", delivery)
    properties = queue_properties(delivery)
    headers = properties.headers
    try:
        event = parse_event(body)
    except EnvelopeError as err:
        return _keep_invalid(body, err, headers)
    partition = context.topology().partition_of(event.partition_key(context.customer_keys()))
    try:
        context.publish(context.topology().routing_key(partition), body, properties)
    except BrokerUnavailable as err:
        return context.unavailable(err)
    except MessageUnencodable as err:
        return _keep_invalid(body, EnvelopeError(400, "invalid_event", f"The event cannot be queued: {err}"), headers)
    if signed.delivery_id:
        _deliveries().note(signed.delivery_id)
    log.info("lime_event_queued", delivery=delivery, limetype=event.limetype, action=event.action,
             lime_id=event.id, partition=partition, signature=signed.scheme)
    return _answer(202, "queued", delivery)


def _answer(status: int, what: str, delivery: str) -> Response:
    response = jsonify({"status": what, "delivery": delivery})
    response.status_code = status
    return response


def _keep_invalid(body: bytes, err: EnvelopeError, headers: dict) -> Response:
    properties = pika.BasicProperties(
        content_type=request.mimetype or "application/octet-stream",
        delivery_mode=pika.DeliveryMode.Persistent,
        headers={**headers, h.REASON: err.reason, h.ERROR: h.text(err.message), h.STATUS: err.status},
    )
    try:
        context.publish(INVALID_ROUTING_KEY, body, properties)
    except BrokerUnavailable as unavailable:
        return context.unavailable(unavailable)
    log.warning("lime_event_rejected", reason=err.reason)
    return error_response(400, err.reason, err.message)
