"""The AMQP headers bfus-lime puts on its messages, named in one place, and values
that always encode: text passes through :func:`text` (bounded, only characters that
UTF-8 and Lime take), integers through :func:`integer` (signed 64-bit, as AMQP
tables carry them)."""

from __future__ import annotations

from typing import Any

from shared.jsonbody import storable

PREFIX = "x-bfus-"
ID = PREFIX + "id"  # the BFUS message id
OBJECTTYPE = PREFIX + "objecttype"
CUSTOMERNO = PREFIX + "customerno"
REASON = PREFIX + "reason"  # why a message failed (short code)
ERROR = PREFIX + "error"  # why, readable
STATUS = PREFIX + "status"  # the HTTP status the receiver answered an invalid message with
ATTEMPTS = PREFIX + "attempts"
SOURCE_QUEUE = PREFIX + "source-queue"  # the partition queue a dead letter came from
FAILED_AT = PREFIX + "failed-at"
FAILED_RECORD = PREFIX + "failed-record"  # the failed-message record in Lime
OWNER = PREFIX + "owner"  # argument of a partition lock queue: who holds it
PUBLISH_SEQ = PREFIX + "lime-publish-seq"  # the publisher's own sequence number
DIRECTION = PREFIX + "direction"  # to_bfus on a Lime event (absent: a BFUS change)
DELIVERY = PREFIX + "lime-delivery"  # a Lime webhook delivery's id (v2) or its body's hash (v1)

MAX_TEXT = 2000
_INT64 = (-(2**63), 2**63 - 1)


def text(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as header text: at most ``limit`` characters, every one encodable."""
    return storable(str(value))[:limit]


def integer(value: Any) -> int | None:
    """``value`` when it is an integer an AMQP table can carry, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]:
        return value
    return None
