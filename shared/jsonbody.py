"""Strict JSON for message bodies, read the same way by the receiver and the workers.

RFC 8259 JSON in UTF-8 and nothing looser: no ``NaN`` / ``Infinity`` literals, numbers
that fit (finite floats; integers within Python's digit limit), nesting at most
:data:`MAX_DEPTH` levels. A leading byte-order mark is ignored (RFC 8259 allows it).
Anything else raises :class:`JSONBodyError`, never another exception, so no body can
break the code that reads it.

Duplicate names are valid syntax (RFC 8259: names SHOULD be unique) but make a message
ambiguous. An object that has them decodes to :class:`DuplicateNames`, which says
which names repeat, so that validation can refuse it and name them.

:func:`unstorable` finds text Lime cannot store (lone surrogates, NUL and the other
control characters XML 1.0 excludes, U+FFFE, U+FFFF); :func:`storable` replaces it,
for text the integration writes itself.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32  # levels of arrays and objects, the envelope itself counting as one

_UNSTORABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class JSONBodyError(ValueError):
    """The body is not JSON this project accepts; the text says why."""


class DuplicateNames(dict):
    """An object in which ``duplicates`` appeared more than once (the last value kept)."""

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen: set[str] = set()
    marked = DuplicateNames(obj)
    marked.duplicates = tuple(dict.fromkeys(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return marked


def _constant(name: str) -> Any:
    raise JSONBodyError(f"{name} is not a JSON number (RFC 8259 has no NaN or Infinity).")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONBodyError(f"The number {text[:40]} is too large for a 64-bit float.")
    return value


def decode(body: bytes | str) -> Any:
    """The JSON value of ``body``, or :class:`JSONBodyError`."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise JSONBodyError(f"Body is not UTF-8 (byte {err.start} cannot start or continue a character).") from None
    else:
        text = body
    text = text.removeprefix("\ufeff")
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_float, object_pairs_hook=_object)
    except JSONBodyError:
        raise
    except RecursionError:
        raise JSONBodyError(f"Body is nested deeper than {MAX_DEPTH} levels.") from None
    except ValueError as err:  # JSONDecodeError, or an integer over Python's digit limit
        raise JSONBodyError(f"Body is not valid JSON: {err}") from None
    if depth(value) > MAX_DEPTH:
        raise JSONBodyError(f"Body is nested deeper than {MAX_DEPTH} levels.")
    return value


def loads_or_none(body: bytes | str) -> Any:
    """The JSON value of ``body``, or None when it is not JSON this project accepts."""
    try:
        return decode(body)
    except JSONBodyError:
        return None


def depth(value: Any) -> int:
    """Levels of arrays and objects in ``value`` (0 for a scalar); no recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def unstorable(text: str) -> str | None:
    """The first character of ``text`` Lime cannot store, described; None when all can."""
    found = _UNSTORABLE.search(text)
    return None if found is None else f"U+{ord(found.group()):04X} at position {found.start()}"


def storable(text: str) -> str:
    """``text`` with every character Lime cannot store replaced by U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text)
