"""The BFUS change-message envelope (contract.md §1), validated the same way by the
receiver and the worker."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

from shared.jsonbody import DuplicateNames, JSONBodyError, decode, storable, unstorable

OPERATIONS = ("created", "updated", "deleted")
MAX_ID = 2**63 - 1  # ids travel as signed 64-bit integers (AMQP headers, Lime)
MAX_NAME = 64  # objecttype, key and customerno
MAX_PROBLEMS = 20  # field problems named in one answer


@dataclass(frozen=True)
class Envelope:
    id: int
    timestamp: dt.datetime
    objecttype: str
    operation: str
    key: str
    customerno: str | None
    data: dict[str, Any]

    @property
    def partition_key(self) -> str:
        return partition_key(self.objecttype, self.key, self.customerno)


def partition_key(objecttype: str, key: str, customerno: str | None) -> str:
    """What orders an object's changes (and so picks its partition): the owning
    customer, else the object itself. The receiver and the migration both use it."""
    return customerno or f"{objecttype}:{key}"


# Below this a JSON number with a zero fraction (12.0, 1.2e1) names exactly one integer.
EXACT_FLOAT_INTEGERS = 2**53


class StrictInteger(fields.Integer):
    """An integer as JSON has one: ``12``, or the same number written ``12.0`` / ``1.2e1``
    (RFC 8259 and JSON Schema do not tell them apart) while below 2^53, where a float
    still names one integer exactly; never a string, true / false or a fraction."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and value.is_integer() and abs(value) < EXACT_FLOAT_INTEGERS:
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return value


class EnvelopeSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # the receiver checks the envelope and nothing more

    id = StrictInteger(required=True, validate=validate.Range(
        min=1, max=MAX_ID, error=f"Must be an integer from 1 to {MAX_ID} (a signed 64-bit integer)."))
    timestamp = fields.AwareDateTime(required=True, format="iso")
    objecttype = fields.String(
        required=True,
        validate=[validate.Regexp(r"^[a-z][a-z0-9_]*$", error="Must match [a-z][a-z0-9_]*."),
                  validate.Length(max=MAX_NAME)],
    )
    operation = fields.String(required=True, validate=validate.OneOf(OPERATIONS))
    key = fields.String(required=True, validate=validate.Length(min=1, max=MAX_NAME))
    customerno = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=MAX_NAME))
    data = fields.Dict(load_default=None, allow_none=True)

    @validates_schema
    def data_for_writes(self, message: dict, **_: Any) -> None:
        if message.get("operation") in ("created", "updated") and not message.get("data"):
            raise ValidationError("Must be the object's full state for created and updated.", "data")

    @post_load
    def make(self, message: dict, **_: Any) -> Envelope:
        message["data"] = message.get("data") or {}
        return Envelope(**message)


_schema = EnvelopeSchema()


class EnvelopeError(ValueError):
    """Not a usable message. ``status`` is the HTTP answer (400 or 422), ``reason`` the
    failed-message reason, ``fields`` the per-field messages for 422."""

    def __init__(self, status: int, reason: str, message: str, fields: dict | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.fields = fields or {}


def decode_object(body: bytes, what: str) -> dict:
    """The one JSON object ``body`` holds, or EnvelopeError 400 ``invalid_json``."""
    try:
        message = decode(body)
    except JSONBodyError as err:
        raise EnvelopeError(400, "invalid_json", str(err)) from None
    if not isinstance(message, dict):
        raise EnvelopeError(400, "invalid_json", f"Body must be one JSON object ({what}).")
    return message


def parse_envelope(body: bytes) -> Envelope:
    return validate_envelope(decode_object(body, "a change message"))


def validate_envelope(message: dict) -> Envelope:
    problems = content_problems(message)
    try:
        envelope = _schema.load(message)
    except ValidationError as err:
        found = err.messages if isinstance(err.messages, dict) else {"_schema": err.messages}
        problems = {**{name: _texts(found[name]) for name in found}, **problems}
    if problems:
        names = sorted(problems)[:MAX_PROBLEMS]
        if len(problems) > MAX_PROBLEMS:
            names.append("_more")
            problems["_more"] = [f"{len(problems) - MAX_PROBLEMS} more problems not listed."]
        shown = {name: problems[name] for name in names}
        text = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in shown.items())
        raise EnvelopeError(422, "invalid_envelope", f"Envelope invalid: {text}", shown) from None
    return envelope


def content_problems(message: dict) -> dict[str, list[str]]:
    """Names given more than once, and text Lime cannot store, anywhere in the
    message, by path (``data.name``, ``data.lines[2]``)."""
    problems: dict[str, list[str]] = {}
    stack: list[tuple[str, Any]] = [("", message)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, DuplicateNames):
            for name in node.duplicates:
                problems[_join(path, name)] = ["Given more than once; the message is ambiguous."]
        if isinstance(node, dict):
            for name, child in node.items():
                bad = unstorable(name)
                if bad:
                    problems[_join(path, name)] = [f"The name holds a character Lime cannot store ({bad})."]
                stack.append((_join(path, name), child))
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", child) for i, child in enumerate(node))
        elif isinstance(node, str):
            bad = unstorable(node)
            if bad:
                problems[path] = [f"Holds a character Lime cannot store ({bad})."]
    return problems


def _join(path: str, name: str) -> str:
    name = storable(name)[:MAX_NAME]
    return f"{path}.{name}" if path else name


def _texts(messages: Any) -> list[str]:
    """Marshmallow's messages for one field (a list, or a dict for nested ones) as text."""
    if isinstance(messages, dict):
        return [f"{key}: {' '.join(_texts(value))}" for key, value in messages.items()]
    if isinstance(messages, list):
        return [text for item in messages for text in _texts(item)]
    return [str(messages)]
