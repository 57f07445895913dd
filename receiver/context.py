"""What a request handler of the receiver reaches through the app: its configuration,
its publisher and topology, and the 503 answer for when the broker cannot take a
message."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app

from receiver.errors import error_response
from shared.config import Config
from shared.logs import get_logger
from shared.publisher import BrokerUnavailable, ConfirmedPublisher
from shared.topology import Topology

log = get_logger(component="receiver")


def config() -> Config:
    return current_app.config["BFUS_LIME"]


def publisher() -> ConfirmedPublisher:
    return current_app.extensions["publisher"]


def topology() -> Topology:
    return current_app.extensions["topology"]


def unavailable(err: BrokerUnavailable) -> Response:
    log.warning("message_not_queued", error=str(err))
    return error_response(
        503,
        "unavailable",
        f"The message could not be stored right now ({err}). Send it again later.",
        {"Retry-After": str(config().receiver.retry_after)},
    )


def publish(routing_key: str, body: bytes, properties: Any) -> None:
    """To the changes exchange, confirmed (BrokerUnavailable, MessageUnencodable)."""
    publisher().publish(topology().exchange, routing_key, body, properties)
