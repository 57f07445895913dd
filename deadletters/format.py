"""How failed messages are shown, in the terminal and on the web pages: ages, age
filters, payloads. Plain functions; bad input raises ValueError."""

from __future__ import annotations

import datetime as dt
import json
import re

from shared.jsonbody import loads_or_none

_AGE = re.compile(r"^(\d+)\s*([dhm])$")


def parse_age(text: str | None) -> dt.timedelta | None:
    """``2d``, ``12h``, ``30m`` as a duration (None for nothing); ValueError otherwise."""
    if not text:
        return None
    match = _AGE.match(text.strip())
    if not match:
        raise ValueError(f"'{text}' is not an age: use a number with d, h or m, e.g. 2d, 12h, 30m")
    number, unit = int(match.group(1)), match.group(2)
    return {"d": dt.timedelta(days=number), "h": dt.timedelta(hours=number), "m": dt.timedelta(minutes=number)}[unit]


def age(stamp: str | None) -> str:
    """How long ago an ISO time was: 3d, 5h, 12m, 40s."""
    if not stamp:
        return "-"
    seconds = (dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(stamp)).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def pretty_payload(payload: str) -> str:
    """The payload indented when it is JSON this project reads, else as it is."""
    message = loads_or_none(payload)
    return payload if message is None else json.dumps(message, indent=2, ensure_ascii=False)
