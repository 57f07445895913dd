"""Fingerprints of what BFUS last had of the fields that flow both ways (docs/design.md,
"No echo loops"). Every write the integration makes to a company from BFUS data (live
sync, migration) also writes, in one Lime text property, a short hash per such field
of the value it wrote. A Lime value whose hash differs from its fingerprint was
changed in Lime by someone else since: only those values are sent to BFUS. Our own
writes, and their webhooks, always match, so they are never sent back. Pure code."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from shared.lime import option_key


def normal(value: Any) -> Any:
    """A Lime value as compared: options by key, no value as empty text."""
    value = option_key(value)
    return "" if value is None else value


def digest(value: Any) -> str:
    encoded = json.dumps(normal(value), ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(encoded, digest_size=4).hexdigest()


def fingerprint(values: Mapping[str, Any], properties: tuple[str, ...]) -> str:
    """The fingerprint text of ``values`` (Lime property -> value) for ``properties``
    present in them."""
    return json.dumps({p: digest(values[p]) for p in sorted(properties) if p in values}, separators=(",", ":"))


def advanced(text: Any, values: Mapping[str, Any], properties: tuple[str, ...]) -> str:
    """The fingerprint ``text`` with ``properties`` at their ``values``: what BFUS has
    once they were sent to it (the other properties keep what BFUS last had)."""
    base = parse(text)
    base.update({p: digest(values.get(p)) for p in properties})
    return json.dumps(dict(sorted(base.items())), separators=(",", ":"))


def parse(text: Any) -> dict[str, str]:
    """A fingerprint property's value as property -> hash ({} when absent or not one)."""
    if not isinstance(text, str) or not text.startswith("{"):
        return {}
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {k: v for k, v in found.items() if isinstance(v, str)}


def changed(values: Mapping[str, Any], text: Any, properties: tuple[str, ...]) -> list[str]:
    """The properties whose value in ``values`` differs from what the fingerprint says
    BFUS last had. A property the fingerprint does not cover is never reported: with
    no known base, sending it could overwrite a newer BFUS value."""
    base = parse(text)
    return [p for p in properties if p in base and p in values and digest(values[p]) != base[p]]
