"""``POST /bfus/messages`` (contract.md §1): check the key and the envelope, publish
with publisher confirms, answer 202 only once RabbitMQ has confirmed. A message that
is not JSON (400) or whose envelope is invalid (422) is also queued, raw, for the
failed-message log, so nothing BFUS sent is lost."""

from __future__ import annotations

import hmac

import pika
from flask import Blueprint, Response, jsonify, request

from receiver import context, metrics
from receiver.errors import error_response
from shared import headers as h
from shared.envelope import EnvelopeError, parse_envelope
from shared.logs import get_logger
from shared.publisher import BrokerUnavailable, MessageUnencodable
from shared.topology import INVALID_ROUTING_KEY

bp = Blueprint("bfus_messages", __name__)
log = get_logger(component="receiver")


@bp.post("/bfus/messages")
def receive() -> Response:
    given = request.headers.get("X-API-Key", "")
    if not given or not hmac.compare_digest(given.encode(), context.config().receiver.api_key.encode()):
        return error_response(401, "unauthorized", "Missing or invalid API key.")
    if request.mimetype != "application/json":
        return error_response(
            415, "unsupported_media_type",
            f"Send the message as application/json, not {h.text(request.mimetype, 100) or 'nothing'}.",
        )
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        return error_response(415, "unsupported_media_type",
                              f"Send the message in UTF-8 (charset=utf-8), not {h.text(charset, 40)}.")
    body = request.get_data(cache=False)
    try:
        envelope = parse_envelope(body)
    except EnvelopeError as err:
        return _keep_invalid(body, err)
    partition = context.topology().partition_of(envelope.partition_key)
    properties = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=str(envelope.id),
        headers={h.ID: envelope.id, h.OBJECTTYPE: envelope.objecttype},
    )
    try:
        context.publish(context.topology().routing_key(partition), body, properties)
    except BrokerUnavailable as err:
        return context.unavailable(err)
    except MessageUnencodable as err:  # the envelope rules should make this impossible
        return _keep_invalid(body, EnvelopeError(422, "invalid_envelope", f"The message cannot be queued: {err}"))
    log.info("message_queued", message_id=envelope.id, customerno=envelope.customerno or "", partition=partition)
    response = jsonify({"status": "queued", "id": envelope.id})
    response.status_code = 202
    return response


def _keep_invalid(body: bytes, err: EnvelopeError) -> Response:
    properties = pika.BasicProperties(
        content_type=request.mimetype,
        delivery_mode=pika.DeliveryMode.Persistent,
        headers={h.REASON: err.reason, h.ERROR: h.text(err.message), h.STATUS: err.status},
    )
    try:
        context.publish(INVALID_ROUTING_KEY, body, properties)
    except BrokerUnavailable as unavailable:
        return context.unavailable(unavailable)
    log.warning("message_rejected", status=err.status, reason=err.reason)
    metrics.kept_invalid(err.reason)
    extra = {"fields": err.fields} if err.status == 422 else {}
    return error_response(err.status, err.reason, err.message, **extra)
