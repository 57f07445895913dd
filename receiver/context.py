"""What a request handler of the receiver reaches through the app: its configuration,
its publisher and topology, the 503 answer for when the broker cannot take a message,
and (for the jump only) a Lime and a BFUS client, built on first use."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Response, current_app

from receiver import metrics
from receiver.errors import error_response
from shared.bfus import BfusClient
from shared.config import Config
from shared.lime import LimeClient
from shared.logs import get_logger
from shared.publisher import BrokerUnavailable, ConfirmedPublisher
from shared.topology import Topology

log = get_logger(component="receiver")
_building = threading.Lock()
# A person waits for the jump: BFUS gets 10 s to answer, not the 60 s a migration allows.
JUMP_BFUS_TIMEOUT = (3.05, 10.0)


def config() -> Config:
    return current_app.config["BFUS_LIME"]


def publisher() -> ConfirmedPublisher:
    return current_app.extensions["publisher"]


def topology() -> Topology:
    return current_app.extensions["topology"]


def customer_keys() -> dict[str, str]:
    """Limetype -> the Lime property holding its BFUS customer number (a Lime event's
    partition), from the mapping once."""
    return current_app.extensions["customer_keys"]


def lime() -> LimeClient:
    """This process's Lime client (the lime section), made on first use: only the jump
    calls Lime from the receiver."""
    with _building:
        found = current_app.extensions.get("lime")
        if found is None:
            found = current_app.extensions["lime"] = LimeClient(config().lime, pool_size=config().receiver.threads)
        return found


def bfus() -> BfusClient:
    """This process's BFUS client (the bfus section), made on first use: only the jump
    calls BFUS from the receiver."""
    with _building:
        found = current_app.extensions.get("bfus")
        if found is None:
            found = current_app.extensions["bfus"] = BfusClient(config().bfus, timeout=JUMP_BFUS_TIMEOUT)
        return found


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
    started = time.perf_counter()
    try:
        publisher().publish(topology().exchange, routing_key, body, properties)
    finally:
        metrics.confirmed(time.perf_counter() - started)
