"""Dead letters: the failed-message records in Lime and the dead-letter queue, kept as
two views of one thing. Engineers list and inspect failed messages, requeue them once
the cause is fixed, or discard them; ``reconcile`` repairs any drift between the two
(after a crash in the middle of a requeue, say).

A record's status follows its dead letter:

    failed --requeue--> requeued --(applies)--> resolved    (linked to its processed record)
                                 \\--(fails again)--> failed  (attempts + 1, the same record)
    failed --discard--> discarded (with the reason why)

Each step is ordered so that a crash at any point leaves something ``reconcile`` can
finish: the record is marked before the message moves, and the dead letter is
removed (acked) only after its message is safely published elsewhere.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from shared import headers
from shared.config import BrokerConfig
from shared.envelope import EnvelopeError, parse_envelope
from shared.jsonbody import storable
from shared.lime import LimeClient, LimeRejected, LimeUnavailable, option_key
from shared.limeevents import parse_event
from shared.logrecords import CLOSED, DISCARDED, FAILED, FROM_BFUS, OPEN, REQUEUED, TO_BFUS, status_of
from shared.topology import INVALID_ROUTING_KEY, Topology, connection_parameters


def direction_of(record: dict[str, Any]) -> str:
    """A failed-message record's direction: ``to_bfus`` (a Lime change BFUS refused) or
    ``from_bfus`` (a BFUS change, also every record written before the log carried a
    direction, or with outbound off and no direction property in Lime)."""
    return TO_BFUS if option_key(record.get("direction")) == TO_BFUS else FROM_BFUS


@dataclass
class DeadLetter:
    tag: int
    body: bytes
    headers: dict[str, Any]

    @property
    def record_id(self) -> int | None:
        return headers.integer(self.headers.get(headers.FAILED_RECORD))

    @property
    def messageid(self) -> int | None:
        return headers.integer(self.headers.get(headers.ID))

    @property
    def direction(self) -> Any:
        return self.headers.get(headers.DIRECTION)


@dataclass
class Action:
    record_id: int | None
    messageid: int | None
    what: str
    found: bool = True  # False: no such failed record, so nothing is known of its message

    def __str__(self) -> str:
        record = f"record {self.record_id}" if self.record_id is not None else "no record"
        if not self.found:
            return f"{record}: {self.what}"
        message = f"message {self.messageid}" if self.messageid is not None else "message without id"
        return f"{record} ({message}): {self.what}"


@dataclass
class Taken:
    """Every dead letter, held unacked on one channel: ack what was dealt with, then
    close the channel and the rest go back to the queue, in order."""

    channel: BlockingChannel
    letters: list[DeadLetter]
    by_record: dict[int, list[DeadLetter]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for letter in self.letters:
            if letter.record_id is not None:
                self.by_record.setdefault(letter.record_id, []).append(letter)

    def ack(self, letters: Iterable[DeadLetter]) -> None:
        for letter in letters:
            self.channel.basic_ack(letter.tag)


class DeadLetters:
    def __init__(self, broker: BrokerConfig, lime: LimeClient, failed_limetype: str,
                 customer_keys: Mapping[str, str] | None = None):
        """``customer_keys``: where a Lime event goes back to (shared.limeevents.customer_keys)."""
        self.broker = broker
        self.lime = lime
        self.customer_keys = dict(customer_keys or {})
        self.topology = Topology.from_config(broker)
        self.limetype = failed_limetype

    # ------------------------------------------------------------------ Lime side

    def records(self, statuses: Iterable[str] = (FAILED,), reason: str | None = None,
                objecttype: str | None = None, customerno: str | None = None,
                older_than: dt.timedelta | None = None, direction: str | None = None) -> list[dict[str, Any]]:
        """Failed-message records, oldest first, filtered. The direction is filtered
        here, not by Lime: a record without one is ``from_bfus``, and a Lime without
        the direction property (outbound off) would refuse the filter."""
        out: list[dict[str, Any]] = []
        for status in statuses:
            params: dict[str, Any] = {"status": status, "_sort": "_id"}
            if reason:
                params["reason"] = reason
            if objecttype:
                params["objecttype"] = objecttype
            if customerno:
                params["customerno"] = customerno
            if older_than is not None:
                params["max-failedtime"] = (dt.datetime.now(dt.UTC) - older_than).isoformat()
            out.extend(r for r in self.lime.iterate(self.limetype, params, page_size=500)
                       if direction is None or direction_of(r) == direction)
        return sorted(out, key=lambda r: r["_id"])

    def record(self, record_id: int) -> dict[str, Any]:
        return self.lime.get(self.limetype, record_id)

    def _mark(self, record_id: int, values: dict[str, Any]) -> None:
        self.lime.update(self.limetype, record_id, values)

    # ------------------------------------------------------------------ queue side

    def _connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(connection_parameters(self.broker, "bfus-lime dead letters"))

    def take_all(self, connection: pika.BlockingConnection) -> Taken:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=0)
        count = channel.queue_declare(self.topology.dead_queue, passive=True).method.message_count
        letters: list[DeadLetter] = []
        if count:
            for method, props, body in channel.consume(self.topology.dead_queue, inactivity_timeout=5):
                if method is None:
                    break
                letters.append(DeadLetter(method.delivery_tag, body, dict(props.headers or {})))
                if len(letters) >= count:
                    break
        return Taken(channel, letters)

    def letters(self) -> list[DeadLetter]:
        """What the dead-letter queue holds now (it keeps holding it)."""
        connection = self._connect()
        try:
            return self.take_all(connection).letters
        finally:
            connection.close()  # unacked letters return to the queue

    def _routing_key(self, body: bytes, direction: Any = None) -> str:
        """Where a message goes back to: its partition, as the receiver routes it (a
        Lime event by its customer when its values name one, else by its Lime object; a
        BFUS message by its customer)."""
        try:
            if direction == TO_BFUS:
                key = parse_event(body).partition_key(self.customer_keys)
            else:
                key = parse_envelope(body).partition_key
        except EnvelopeError:
            return INVALID_ROUTING_KEY
        return self.topology.route(key)

    def _publish_back(self, channel: BlockingChannel, letter: DeadLetter, record: dict[str, Any]) -> None:
        kept = {k: v for k, v in letter.headers.items() if not k.startswith(headers.PREFIX) or k in (
            headers.REASON, headers.ERROR, headers.STATUS, headers.DIRECTION, headers.DELIVERY)}
        kept.update({headers.FAILED_RECORD: record["_id"], headers.ATTEMPTS: record.get("attempts") or 1})
        if letter.messageid is not None:
            kept[headers.ID] = letter.messageid
        props = pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                                     message_id=str(letter.messageid) if letter.messageid else None, headers=kept)
        routing_key = self._routing_key(letter.body, letter.direction)
        channel.basic_publish(self.topology.exchange, routing_key, letter.body, props, mandatory=True)

    # ------------------------------------------------------------------ commands

    def requeue(self, record_ids: Iterable[int] | None = None, reason: str | None = None,
                direction: str | None = None) -> list[Action]:
        """Send failed messages back to their partitions, oldest BFUS id first. None of
        ``record_ids``, ``reason`` and ``direction``: every failed message."""
        wanted = set(record_ids) if record_ids is not None else None
        candidates = [r for r in self.records((FAILED,), reason=reason, direction=direction)
                      if wanted is None or r["_id"] in wanted]
        unmatched = ("not a failed message (unknown, or resolved, discarded or requeued already)"
                     if reason is None and direction is None else
                     "not a failed message of that reason or direction (or resolved, discarded or requeued already)")
        actions = [Action(i, None, unmatched, found=False)
                   for i in sorted((wanted or set()) - {r["_id"] for r in candidates})]
        candidates.sort(key=lambda r: (r.get("messageid") is None, r.get("messageid") or 0, r["_id"]))
        connection = self._connect()
        try:
            taken = self.take_all(connection)
            publish = connection.channel()
            publish.confirm_delivery()
            for record in candidates:
                letters = taken.by_record.get(record["_id"], [])
                if not letters:
                    actions.append(Action(record["_id"], record.get("messageid"),
                                          "no dead letter in the queue for it; run `dlq reconcile`"))
                    continue
                self._mark(record["_id"], {"status": REQUEUED})
                self._publish_back(publish, letters[0], record)
                taken.ack(letters)
                actions.append(Action(record["_id"], record.get("messageid"),
                                      f"requeued to {self._routing_key(letters[0].body, letters[0].direction)}"))
        finally:
            connection.close()
        return actions

    def discard(self, record_ids: Iterable[int], why: str) -> list[Action]:
        """Give up on failed messages: kept in Lime as discarded (with why), gone from the queue."""
        if not why.strip():
            raise ValueError("say why the messages are discarded (--why)")
        actions = []
        connection = self._connect()
        try:
            taken = self.take_all(connection)
            for record_id in record_ids:
                try:
                    record = self.record(record_id)
                except LimeRejected as err:
                    actions.append(Action(record_id, None, f"no such failed-message record ({err.status})",
                                          found=False))
                    continue
                except LimeUnavailable as err:
                    actions.append(Action(record_id, None, f"left as it is: Lime did not answer ({err})",
                                          found=False))
                    continue
                if status_of(record) not in OPEN:
                    actions.append(Action(record_id, record.get("messageid"), f"left as it is: {status_of(record)}"))
                    continue
                self._mark(record_id, {"status": DISCARDED, "resolution": f"discarded: {why}"})
                taken.ack(taken.by_record.get(record_id, []))
                actions.append(Action(record_id, record.get("messageid"), "discarded"))
        finally:
            connection.close()
        return actions

    def reconcile(self) -> list[Action]:
        """Find and repair drift between the dead-letter queue and the Lime records."""
        fixes: list[Action] = []
        connection = self._connect()
        try:
            taken = self.take_all(connection)
            publish = connection.channel()
            publish.confirm_delivery()
            open_records = {r["_id"]: r for r in self.records(OPEN)}
            for letter in taken.letters:
                if letter.record_id is None:
                    self._record_orphan(publish, taken, letter, fixes)
            for record_id, letters in taken.by_record.items():
                record = open_records.get(record_id) or self._maybe_record(record_id)
                if record is None:
                    for letter in letters:
                        self._record_orphan(publish, taken, letter, fixes)
                    continue
                status = status_of(record)
                if status in CLOSED:
                    taken.ack(letters)
                    fixes.append(Action(record_id, record.get("messageid"),
                                        f"removed {len(letters)} dead letter(s) of a {status} message"))
                    continue
                if len(letters) > 1:
                    taken.ack(letters[1:])
                    fixes.append(Action(record_id, record.get("messageid"),
                                        f"removed {len(letters) - 1} duplicate dead letter(s)"))
                if status == REQUEUED:  # a requeue stopped between marking and moving
                    self._publish_back(publish, letters[0], record)
                    taken.ack(letters[:1])
                    fixes.append(Action(record_id, record.get("messageid"), "finished an interrupted requeue"))
            for record_id, record in open_records.items():
                if status_of(record) == FAILED and record_id not in taken.by_record:
                    fixes.append(self._rebuild_letter(publish, record))
        finally:
            connection.close()
        return fixes

    def _maybe_record(self, record_id: int) -> dict[str, Any] | None:
        from shared.lime import LimeRejected

        try:
            return self.record(record_id)
        except LimeRejected as err:
            if err.status == 404:
                return None
            raise

    def _record_orphan(self, channel: BlockingChannel, taken: Taken, letter: DeadLetter, fixes: list[Action]) -> None:
        """A dead letter with no record in Lime: record it, and mark the letter with it."""
        h = letter.headers
        values = {
            "messageid": letter.messageid,
            "objecttype": headers.text(h.get(headers.OBJECTTYPE, ""), 32),
            "key": "",
            "customerno": headers.text(h.get(headers.CUSTOMERNO, ""), 64),
            "failedtime": headers.text(h.get(headers.FAILED_AT) or dt.datetime.now(dt.UTC).isoformat()),
            "reason": headers.text(h.get(headers.REASON, "unknown"), 64),
            "error": headers.text(h.get(headers.ERROR, "")),
            "payload": storable(letter.body.decode("utf-8", errors="replace")),
            "attempts": headers.integer(h.get(headers.ATTEMPTS)) or 1,
            "status": FAILED,
        }
        if letter.direction == TO_BFUS:  # only outbound makes these, and outbound needs the property
            values["direction"] = TO_BFUS
        record = self.lime.create(self.limetype, values)
        props = pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                                     headers={**h, headers.FAILED_RECORD: record["_id"]})
        channel.basic_publish(self.topology.dead_exchange, headers.text(h.get(headers.SOURCE_QUEUE, ""), 255),
                              letter.body, props, mandatory=True)
        taken.ack([letter])
        fixes.append(Action(record["_id"], letter.messageid, "recorded a dead letter that had no record"))

    def _rebuild_letter(self, channel: BlockingChannel, record: dict[str, Any]) -> Action:
        """A failed record whose dead letter is gone: put one back from its payload."""
        payload = record.get("payload") or ""
        if "[personal data left out]" in payload or not payload:
            return Action(record["_id"], record.get("messageid"),
                          "its dead letter is missing and its payload in Lime is incomplete: cannot rebuild it")
        body = payload.encode("utf-8")
        rebuilt = {headers.FAILED_RECORD: record["_id"], headers.REASON: headers.text(record.get("reason", ""), 64),
                   headers.ERROR: headers.text(record.get("error") or ""),
                   headers.ATTEMPTS: record.get("attempts") or 1,
                   headers.OBJECTTYPE: headers.text(record.get("objecttype", ""), 64),
                   headers.CUSTOMERNO: headers.text(record.get("customerno", ""), 64)}
        if headers.integer(record.get("messageid")) is not None:
            rebuilt[headers.ID] = record["messageid"]
        if option_key(record.get("direction")) == TO_BFUS:
            rebuilt[headers.DIRECTION] = TO_BFUS
        props = pika.BasicProperties(content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                                     headers=rebuilt)
        channel.basic_publish(self.topology.dead_exchange, self._routing_key(body), body, props, mandatory=True)
        return Action(record["_id"], record.get("messageid"), "put back its missing dead letter")
