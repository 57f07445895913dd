"""The BFUS change-message envelope (contract.md §1), validated the same way by the
receiver and the worker."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

OPERATIONS = ("created", "updated", "deleted")


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


class _StrictInteger(fields.Integer):
    def _validated(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return value


class EnvelopeSchema(Schema):
    class Meta:
        unknown = EXCLUDE  # the receiver checks the envelope and nothing more

    id = _StrictInteger(required=True, validate=validate.Range(min=1, error="Must be a positive integer."))
    timestamp = fields.AwareDateTime(required=True, format="iso")
    objecttype = fields.String(
        required=True,
        validate=validate.Regexp(r"^[a-z][a-z0-9_]*$", error="Must match [a-z][a-z0-9_]*."),
    )
    operation = fields.String(required=True, validate=validate.OneOf(OPERATIONS))
    key = fields.String(required=True, validate=validate.Length(min=1, max=64))
    customerno = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))
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


def parse_envelope(body: bytes) -> Envelope:
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise EnvelopeError(400, "invalid_json", f"Body is not valid JSON: {err}") from None
    if not isinstance(message, dict):
        raise EnvelopeError(400, "invalid_json", "Body must be one JSON object (a change message).")
    return validate_envelope(message)


def validate_envelope(message: dict) -> Envelope:
    try:
        return _schema.load(message)
    except ValidationError as err:
        problems = err.messages if isinstance(err.messages, dict) else {"_schema": err.messages}
        names = ", ".join(sorted(problems))
        raise EnvelopeError(422, "invalid_envelope", f"Envelope invalid: {names}.", problems) from None
