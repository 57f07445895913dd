"""Builders the tests share: change messages, and reading what a queue holds."""

from __future__ import annotations

from typing import Any

import pika

from sandbox.stack import Stack
from shared.topology import connection_parameters


def message(mid: int = 1, customerno: str = "100234", **extra: Any) -> dict[str, Any]:
    return {
        "id": mid,
        "timestamp": "2026-11-24T09:15:02.123+01:00",
        "objecttype": "customer",
        "operation": "updated",
        "key": customerno,
        "customerno": customerno,
        "data": {"customerno": customerno, "name": "Åsa Öberg"},
        **extra,
    }


def take_all(stack: Stack, queue: str) -> list[tuple[Any, bytes]]:
    """Every message now in ``queue`` (test inspection; quorum queues with single
    active consumer do not allow basic.get, so consume what the queue counts)."""
    connection = pika.BlockingConnection(connection_parameters(stack.config.broker, "test"))
    try:
        channel = connection.channel()
        count = channel.queue_declare(queue, passive=True).method.message_count
        out: list[tuple[Any, bytes]] = []
        if count:
            for method, props, body in channel.consume(queue, auto_ack=True, inactivity_timeout=10):
                assert method is not None, f"only {len(out)} of {count} messages arrived from {queue}"
                out.append((props, body))
                if len(out) == count:
                    break
            channel.cancel()
        return out
    finally:
        connection.close()
