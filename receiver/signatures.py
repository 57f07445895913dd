"""Checking a Lime webhook delivery's signature (contract.md §3), over the raw body
bytes, in constant time, with the current secret and, while a new one is rolled
out, the previous one:

- v1: ``X-Lime-Signature: sha256=<hex HMAC-SHA256 of the body>``. It carries no time
  and no id, so it cannot expire and replays cannot be told apart; the worker's
  reading of the current state makes a replay harmless.
- v2: ``X-Lime-Signature: v2=<hex>`` over ``v2:{delivery id}:{unix time}:{sha256 hex
  of the body}``, with ``X-Lime-Delivery-Id`` and ``X-Lime-Delivery-Timestamp``;
  a time more than ``max_age`` seconds away from ours is refused."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

MAX_DELIVERY_ID = 200


class SignatureError(Exception):
    """Not signed by Lime with a secret we know (or too old); the text says which
    check failed, never which secret was tried."""


@dataclass(frozen=True)
class Signed:
    scheme: str  # v1 | v2
    delivery_id: str | None  # v2 only


def _matches(expected: list[str], given: str) -> bool:
    """Compared with every candidate, always, each in constant time."""
    found = False
    for candidate in expected:
        found |= hmac.compare_digest(candidate.encode(), given.encode())
    return found


def verify(headers: Mapping[str, str], body: bytes, secrets: list[str], now: float, max_age: float) -> Signed:
    headers = {name.lower(): value for name, value in headers.items()}
    secrets = [s for s in secrets if s]
    if not secrets:
        raise SignatureError("This receiver takes no Lime events: receiver.lime_secret is not set.")
    given = headers.get("x-lime-signature", "").strip()
    if not given:
        raise SignatureError("The delivery is not signed (no X-Lime-Signature).")
    scheme, _, digest = given.partition("=")
    if scheme == "sha256":
        expected = [hmac.new(s.encode(), body, hashlib.sha256).hexdigest() for s in secrets]
        if not _matches(expected, digest.lower()):
            raise SignatureError("The signature does not match the body.")
        return Signed("v1", None)
    if scheme != "v2":
        raise SignatureError("Unknown signature scheme (expected sha256= or v2=).")
    delivery_id = headers.get("x-lime-delivery-id", "")
    stamp = headers.get("x-lime-delivery-timestamp", "")
    if not delivery_id or len(delivery_id) > MAX_DELIVERY_ID or not delivery_id.isprintable():
        raise SignatureError("A v2 signature needs X-Lime-Delivery-Id.")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise SignatureError("A v2 signature needs X-Lime-Delivery-Timestamp (unix seconds).")
    signed = f"v2:{delivery_id}:{stamp}:{hashlib.sha256(body).hexdigest()}".encode()
    expected = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    if not _matches(expected, digest.lower()):
        raise SignatureError("The signature does not match the body, delivery id and timestamp.")
    if abs(now - int(stamp)) > max_age:
        raise SignatureError(f"The delivery's timestamp is more than {max_age:g} seconds from now.")
    return Signed("v2", delivery_id)
