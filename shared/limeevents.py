"""A Lime webhook delivery (contract.md §3): ``{"event": "company.update", "body":
{"id", "limetype", "values", "original_values"}}``, validated the same way by the
receiver (which answers 400 and keeps what fails) and the worker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pika
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from shared import headers as h
from shared.config import MappingConfig
from shared.envelope import MAX_ID, MAX_PROBLEMS, EnvelopeError, StrictInteger, content_problems, decode_object
from shared.lime import option_key
from shared.logrecords import TO_BFUS

ACTIONS = ("new", "update", "delete", "restore")
_NAME = r"^[a-z][a-z0-9_]*$"


@dataclass(frozen=True)
class LimeEvent:
    limetype: str
    action: str  # new | update | delete | restore
    id: int  # the Lime object's id
    values: dict[str, Any] = field(default_factory=dict)  # every property after the write (absent for delete)

    def partition_key(self, customer_keys: Mapping[str, str] | None = None) -> str:
        """What orders the event, as :func:`shared.envelope.partition_key` orders BFUS's
        messages. An object linked to a BFUS customer (``customer_keys``: limetype ->
        the Lime property holding the customer number, :func:`customer_keys`) goes to
        its customer's partition: one lane then applies BFUS's messages about the
        customer and sends the company's Lime edits one after the other, so neither
        writes the company while the other is between its read and its write. Any
        other object (a company not linked yet) by itself."""
        prop = (customer_keys or {}).get(self.limetype)
        number = option_key(self.values.get(prop)) if prop else None
        if isinstance(number, str | int) and not isinstance(number, bool) and str(number).strip():
            return str(number)
        return f"lime:{self.limetype}:{self.id}"


def customer_keys(mapping: MappingConfig) -> dict[str, str]:
    """The limetype of BFUS's customers in Lime -> its customer-number property
    (empty when customers are not mapped)."""
    spec = mapping.objects.get("customer")
    return {spec.limetype: spec.key} if spec is not None else {}


class _BodySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_ID))
    limetype = fields.String(required=True, validate=[validate.Regexp(_NAME), validate.Length(max=64)])
    values = fields.Dict(load_default=None, allow_none=True)
    original_values = fields.Dict(load_default=None, allow_none=True)


class _EventSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    event = fields.String(required=True, validate=validate.Regexp(
        rf"^[a-z][a-z0-9_]*\.({'|'.join(ACTIONS)})$",
        error=f"Must be <limetype>.<action>, the action one of {', '.join(ACTIONS)}; e.g. company.update."))
    body = fields.Nested(_BodySchema, required=True)


_schema = _EventSchema()


def queue_properties(delivery: str) -> pika.BasicProperties:
    """How a Lime event is queued (by the receiver, and by the sweep): persistent, for
    BFUS, named by its delivery (Lime's v2 delivery id, else what stands for it)."""
    delivery = h.text(delivery, 200)
    return pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                                message_id=delivery, headers={h.DIRECTION: TO_BFUS, h.DELIVERY: delivery})


def parse_event(body: bytes) -> LimeEvent:
    """The event in a delivery's raw body, or EnvelopeError (400) saying what is wrong."""
    message = decode_object(body, "a Lime webhook delivery")
    problems = content_problems(message)
    try:
        loaded = _schema.load(message)
    except ValidationError as err:
        problems.update({name: [str(text)] for name, text in _flat(err.messages)})
    if problems:
        text = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in sorted(problems.items())[:MAX_PROBLEMS])
        raise EnvelopeError(400, "invalid_event", f"Lime event invalid: {text}", problems)
    limetype, _, action = loaded["event"].partition(".")
    inner = loaded["body"]
    if inner["limetype"] != limetype:
        raise EnvelopeError(400, "invalid_event", f"Lime event invalid: body.limetype is '{inner['limetype']}' "
                            f"but the event is for '{limetype}'.")
    return LimeEvent(limetype, action, inner["id"], inner.get("values") or {})


def _flat(messages: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(messages, dict):
        return [pair for key, sub in messages.items() for pair in _flat(sub, f"{prefix}.{key}" if prefix else key)]
    if isinstance(messages, list):
        return [(prefix, " ".join(map(str, messages)))]
    return [(prefix, str(messages))]
