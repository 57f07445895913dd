"""Take one delivery to its end: applied and logged as processed, or logged as failed
and dead-lettered. Transient trouble (Lime or the broker away) is retried here, with
backoff, while the message is held, so the partition waits in order.

A 5xx from Lime usually means Lime is in trouble, but it can also be this message's
fault (a value Lime's server chokes on). The two are told apart by whether Lime
answers other requests meanwhile: see :class:`LimeErrors`."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import cached_property, partial
from typing import Any, TypeVar

import pika
import structlog

from shared import headers as h
from shared.bfus import BfusUnavailable
from shared.config import WorkerConfig
from shared.envelope import Envelope, EnvelopeError, parse_envelope
from shared.fingerprint import normal
from shared.jsonbody import loads_or_none
from shared.lime import LimeClient, LimeUnavailable
from shared.limeevents import parse_event
from shared.logrecords import FROM_BFUS, SKIPPED_SUPERSEDED, TO_BFUS
from shared.logs import get_logger
from shared.publisher import BrokerUnavailable, ConfirmedPublisher
from shared.retry import Backoff, retry
from shared.topology import Topology
from worker.apply import Applier, IdCache, Outcome, PermanentFailure
from worker.metrics import metrics
from worker.outbound import Outbound
from worker.records import LogWriter, MessageFacts

T = TypeVar("T")
log = get_logger(component="worker")


class Settle(Enum):
    ACK = "ack"  # done: processed or dead-lettered
    ABANDON = "abandon"  # leave unacked; the broker redelivers it


class Abandoned(Exception):
    pass


class LimeKeepsFailing(Exception):
    """Lime answered this message's request with 5xx too often while answering others."""

    def __init__(self, error: LimeUnavailable, strikes: int):
        super().__init__(str(error))
        self.error = error
        self.strikes = strikes


class LimeErrors:
    """Counts, per message, the 5xx answers Lime gave to one step of it in a row, but
    only those that came while Lime was answering other requests (any answer below
    500 since the message's previous strike, the circuit breaker's probe included;
    the first 5xx always counts). During an outage Lime answers nothing else, so a
    message stays at one strike however long it lasts and is never failed for it.
    Counts survive a redelivery of the message to this process."""

    def __init__(self, lime: LimeClient, limit: int, size: int = 10_000):
        self.lime = lime
        self.limit = limit
        self.size = size
        self._seen: OrderedDict[Any, tuple[int, int]] = OrderedDict()  # key -> (strikes, lime.answers then)
        self._lock = threading.Lock()

    def strike(self, key: Any, error: LimeUnavailable) -> None:
        """Note a 5xx for ``key``; raise LimeKeepsFailing once it has had ``limit``."""
        answers = self.lime.answers
        with self._lock:
            strikes, then = self._seen.pop(key, (0, -1))
            if strikes == 0 or answers > then:
                strikes, then = strikes + 1, answers
            self._seen[key] = (strikes, then)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
        if strikes >= self.limit:
            raise LimeKeepsFailing(error, strikes)

    def forget(self, key: Any) -> None:
        with self._lock:
            self._seen.pop(key, None)


@dataclass
class Delivery:
    queue: str
    delivery_tag: int
    redelivered: bool
    properties: pika.BasicProperties
    body: bytes
    generation: int
    channel: Any = None
    cache: IdCache = field(default_factory=IdCache)  # the partition's key -> Lime object cache
    grace: float = 0.0  # seconds to wait before applying it (see Worker._on_message)

    @property
    def failed_record(self) -> int | None:
        """The failed-message record of a requeued message (set by `dlq requeue`)."""
        return h.integer(self.headers.get(h.FAILED_RECORD))

    @cached_property
    def change(self) -> Envelope | None:
        """The BFUS change this delivery carries, when coalescing may fold it into a
        newer one: a first delivery from BFUS (not redelivered, not requeued) with a
        valid envelope. None otherwise."""
        if self.redelivered or self.direction == TO_BFUS or self.failed_record is not None:
            return None
        try:
            return parse_envelope(self.body)
        except EnvelopeError:
            return None

    @cached_property
    def key(self) -> str:
        """Names the message across redeliveries (for :class:`LimeErrors`)."""
        return hashlib.blake2b(self.body, digest_size=16).hexdigest()

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}

    @property
    def raw(self) -> str:
        """The body as text, for the failed-message record."""
        return self.body.decode("utf-8", errors="replace")

    @property
    def direction(self) -> str:
        return TO_BFUS if self.headers.get(h.DIRECTION) == TO_BFUS else FROM_BFUS

    @property
    def delivery_count(self) -> int:
        """How often the broker delivered it before (quorum queues count)."""
        return int(self.headers.get("x-delivery-count", 0))


class MessageHandler:
    def __init__(
        self,
        applier: Applier,
        records: LogWriter,
        publisher: ConfirmedPublisher,
        topology: Topology,
        config: WorkerConfig,
        lime_errors: LimeErrors,
        outbound: Outbound | None = None,
    ):
        self.applier = applier
        self.records = records
        self.publisher = publisher
        self.topology = topology
        self.config = config
        self.lime_errors = lime_errors
        self.outbound = outbound

    # ------------------------------------------------------------------ entry

    def handle(self, delivery: Delivery, sleep: Callable[[float], bool]) -> Settle:
        """``sleep(seconds)`` waits between retries; it returns False when the message
        must be abandoned (shutdown deadline, lost connection)."""
        return self._handle(delivery, sleep, (), [])

    # ------------------------------------------------------------------ coalescing

    def object_of(self, delivery: Delivery) -> tuple[str, str, int] | None:
        """(objecttype, key, message id) of a delivery coalescing may fold, else None."""
        env = delivery.change
        return (env.objecttype, env.key, env.id) if env is not None else None

    def may_defer(self, delivery: Delivery) -> bool:
        """Whether this delivery may wait for a newer one of its object, which then
        covers it: its object is in Lime already and the worker wrote or checked it
        itself since it took the partition (so no earlier owner logged this message
        without moving Lime's watermark), and the message is newer than what it wrote.
        Never a create of a new object: other messages in between may need it."""
        env = delivery.change
        mapper = self.applier.mappers.get(env.objecttype) if env is not None else None
        if env is None or mapper is None:
            return False
        known = delivery.cache.get(mapper.limetype, env.key)
        return known is not None and known.digest is not None and (known.watermark is None
                                                                   or env.id > known.watermark)

    def handle_group(self, newest: Delivery, superseded: list[Delivery],
                     sleep: Callable[[float], bool]) -> list[tuple[Delivery, Settle]]:
        """``newest`` and the older deliveries of its object it supersedes (in order):
        the newest is applied, and once its write has landed each older one is logged
        as skipped_superseded, then the newest; all settle together. Should the newest
        not be applied (it failed, or was a repeat), each older one is handled on its
        own, in order."""
        covered: list[Delivery] = []
        settle = self._handle(newest, sleep, superseded, covered)
        settles = [(newest, settle)]
        for older in superseded:
            settles.append((older, settle if older in covered else self.handle(older, sleep)))
        return settles

    def _handle(self, delivery: Delivery, sleep: Callable[[float], bool], superseded: Sequence[Delivery],
                covered: list[Delivery]) -> Settle:
        structlog.contextvars.clear_contextvars()
        partition = self.topology.partition_named(delivery.queue)  # on every line, as the receiver logged it
        structlog.contextvars.bind_contextvars(partition=delivery.queue if partition is None else partition)
        try:
            if delivery.queue == self.topology.invalid_queue:
                self._fail_invalid(delivery, sleep)
            elif delivery.direction == TO_BFUS:
                self._send_to_bfus(delivery, sleep)
            else:
                self._handle_change(delivery, sleep, superseded, covered)
            settle = Settle.ACK
        except Abandoned:
            log.info("message_abandoned", queue=delivery.queue, reason="will be redelivered")
            settle = Settle.ABANDON
        except Exception as err:  # a bug: fail the message rather than block its partition
            log.exception("message_internal_error", queue=delivery.queue)
            settle = self._fail_internal(delivery, err, sleep)
        finally:
            structlog.contextvars.clear_contextvars()
        if settle is Settle.ACK:
            self.lime_errors.forget(delivery.key)
        return settle

    def _fail_internal(self, delivery: Delivery, err: Exception, sleep: Callable[[float], bool]) -> Settle:
        facts = MessageFacts.guess(loads_or_none(delivery.body))
        raw = delivery.raw
        error = f"Internal error while handling the message: {type(err).__name__}: {err}"
        try:
            self._fail(delivery, facts, "internal_error", error, raw, None, sleep, detail=type(err).__name__)
        except Abandoned:
            return Settle.ABANDON
        except Exception:  # failing it failed too: keep the message as a dead letter at least
            log.exception("message_failing_failed", queue=delivery.queue)
            try:
                self._retrying(lambda: self._dead_letter(delivery, facts, "internal_error", error, 1, None),
                               "dead_letter", sleep)
            except Abandoned:
                return Settle.ABANDON
        return Settle.ACK

    def _handle_change(self, delivery: Delivery, sleep: Callable[[float], bool], superseded: Sequence[Delivery] = (),
                       covered: list[Delivery] | None = None) -> None:
        raw = delivery.raw
        requeued = delivery.failed_record
        try:
            env = delivery.change or parse_envelope(delivery.body)  # parsed once already when it could fold
        except EnvelopeError as err:  # the receiver checked it; only a bad requeue gets here
            facts = MessageFacts.guess(loads_or_none(delivery.body))
            self._fail(delivery, facts, err.reason, err.message, raw, None, sleep, detail=err.message[:200])
            return
        structlog.contextvars.bind_contextvars(message_id=env.id, customerno=env.customerno or "")
        facts = MessageFacts.of(env)
        while True:
            try:
                self._apply_and_log(delivery, env, facts, requeued, raw, sleep, superseded,
                                    covered if covered is not None else [])
                return
            except LimeKeepsFailing as err:
                error = (f"Lime answered {err.error.status} to this message {err.strikes} times in a row while it "
                         f"answered other requests: {err.error}")
                if self._fail(delivery, facts, "lime_error", error, raw, None, sleep,
                              detail=f"status {err.error.status}", probe=True):
                    return
            # Lime answered 5xx to the failed-message record too: its writes are down, not
            # this message. Keep it, and count again.
            self.lime_errors.forget(delivery.key)
            log.warning("lime_refuses_writes", waiting=self.config.retry_max)
            if not sleep(self.config.retry_max):
                raise Abandoned()

    def _apply_and_log(self, delivery: Delivery, env: Any, facts: MessageFacts, requeued: int | None, raw: str,
                       sleep: Callable[[float], bool], superseded: Sequence[Delivery] = (),
                       covered: list[Delivery] | None = None) -> None:
        def retrying(step: Callable[[], T], what: str) -> T:
            return self._retrying(step, what, sleep, delivery.key)

        if delivery.redelivered or requeued is not None:
            # Logged already? (a redelivery after a lost ack; a requeued message applied by
            # an earlier copy). A requeued message has its failed record: look for a
            # processed one only.
            existing = retrying(lambda: self.records.existing(env.id, processed_only=requeued is not None),
                                "find_log_record")
            if existing is not None:
                kind, record = existing
                log.info("message_already_logged", record=kind, record_id=record["_id"])
                if requeued is not None:
                    retrying(lambda: self.records.resolve(requeued, record["_id"], "applied earlier"), "resolve_failed")
                elif kind == "failed":
                    self._retrying(lambda: self._dead_letter(delivery, facts, record["reason"], record["error"],
                                                             record.get("attempts") or 1, record["_id"]),
                                   "dead_letter", sleep)
                return
        try:
            outcome: Outcome = retrying(lambda: self.applier.apply(env, delivery.cache), "apply")
        except PermanentFailure as failure:
            self._fail(delivery, facts, failure.reason, failure.error, raw, failure.company_id, sleep, failure.detail)
            return
        if outcome.outcome == "skipped_duplicate" and delivery.redelivered:
            # Our own write before a crash or lost connection: applied, only not yet logged.
            outcome = replace(outcome, outcome="applied")
        elif (outcome.outcome in ("skipped_duplicate", "skipped_stale") or (outcome.outcome == "unchanged"
                                                                             and outcome.read)) \
                and not delivery.redelivered and requeued is None:
            # BFUS sent it again, or an old one came back: one log record per message id. An
            # unchanged object as read may be this message's doing under an earlier owner
            # (it left Lime's watermark behind), so that is asked too.
            existing = retrying(lambda: self.records.existing(env.id), "find_log_record")
            if existing is not None:
                log.info("message_already_logged", outcome=outcome.outcome, record=existing[0])
                return
        for older in superseded:  # the newest's write has landed: it covers them
            self._log_superseded(older, env.id, outcome, retrying)
            if covered is not None:
                covered.append(older)
        processed = retrying(lambda: self.records.processed(facts, outcome), "log_processed")
        if requeued is not None:
            retrying(lambda: self.records.resolve(requeued, processed, outcome.outcome), "resolve_failed")
        log.info("message_processed", outcome=outcome.outcome, objecttype=env.objecttype, operation=env.operation,
                 deliveries=delivery.delivery_count + 1, requeued=requeued is not None)
        metrics().settled(env.objecttype, outcome.outcome, env.timestamp)

    def _log_superseded(self, older: Delivery, newest: int, outcome: Outcome,
                        retrying: Callable[[Callable[[], int], str], int]) -> None:
        env = older.change
        assert env is not None  # only a change coalescing may fold is superseded
        skipped = replace(outcome, outcome=SKIPPED_SUPERSEDED, read=False)
        retrying(lambda: self.records.processed(MessageFacts.of(env), skipped, f"superseded by message {newest}"),
                 "log_processed")
        log.info("message_processed", outcome=SKIPPED_SUPERSEDED, message_id=env.id, superseded_by=newest,
                 objecttype=env.objecttype)
        metrics().settled(env.objecttype, SKIPPED_SUPERSEDED, env.timestamp)

    def _send_to_bfus(self, delivery: Delivery, sleep: Callable[[float], bool]) -> None:
        """A Lime webhook event: bring BFUS up to date with the company (worker/outbound.py)."""
        raw = delivery.raw
        requeued = delivery.failed_record
        try:
            event = parse_event(delivery.body)
        except EnvelopeError as err:  # the receiver checked it; only a bad requeue gets here
            self._fail(delivery, MessageFacts(None, direction=TO_BFUS), err.reason, err.message, raw, None, sleep,
                       detail=err.message[:200])
            return
        structlog.contextvars.bind_contextvars(lime_id=event.id, limetype=event.limetype)
        outbound = self.outbound
        if outbound is None or event.limetype != outbound.limetype or event.action == "delete":
            why = "outbound off" if outbound is None else "not sent to BFUS" if event.action == "delete" else "limetype"
            log.info("lime_event_ignored", action=event.action, why=why)
            return
        if requeued is None and outbound.nothing_to_send(event.values):
            log.info("lime_event_nothing_to_send", action=event.action, calls=0)
            return
        customerno = str(normal(event.values.get(outbound.mapper.key_property)))
        facts = MessageFacts(None, outbound.mapper.objecttype, "updated" if customerno else "created", customerno,
                             customerno, None, TO_BFUS)
        try:
            sent = self._retrying(lambda: outbound.carry_out(outbound.plan(event.id)), "send_to_bfus", sleep,
                                  delivery.key)
        except PermanentFailure as failure:
            if failure.customerno:  # a swept event names only the company: the failure knows its customer
                facts = replace(facts, operation="updated", key=failure.customerno, customerno=failure.customerno)
            if requeued is None and self._refused_before(event.id, failure, sleep, delivery.key):
                return
            self._fail(delivery, facts, failure.reason, failure.error, raw, event.id, sleep, failure.detail)
            return
        if sent is None:
            log.info("lime_event_nothing_to_send", action=event.action)
            if requeued is not None:
                self._retrying(lambda: self.records.resolve(requeued, None, "nothing left to send"), "resolve_failed",
                               sleep, delivery.key)
            return
        self._retrying(lambda: outbound.remember(sent), "remember_sent", sleep, delivery.key)
        structlog.contextvars.bind_contextvars(customerno=sent.customerno)
        facts = replace(facts, operation=sent.operation, key=sent.customerno, customerno=sent.customerno)
        processed = self._retrying(lambda: self.records.sent(facts, sent, outbound.limetype, event.id),
                                   "log_processed", sleep, delivery.key)
        if requeued is not None:
            self._retrying(lambda: self.records.resolve(requeued, processed, "sent"), "resolve_failed", sleep,
                           delivery.key)
        log.info("sent_to_bfus", operation=sent.operation, fields=sorted(sent.fields), requeued=requeued is not None)
        metrics().settled(outbound.mapper.objecttype, TO_BFUS)

    def _refused_before(self, company_id: int, failure: PermanentFailure, sleep: Callable[[float], bool],
                        key: str) -> bool:
        """BFUS refused this company's state before, for the same reason, and that
        failed record is still open: it takes this refusal (BFUS's latest text, one
        more attempt) instead of a second record and dead letter. What goes to BFUS is
        the company as Lime has it when sent, so requeueing that one record sends
        whatever Lime holds then; another webhook or a sweep that meets the company
        again adds nothing to the failed-message log."""
        found = self._retrying(lambda: self.records.open_refusal(company_id, failure.reason), "find_refusal", sleep,
                               key)
        if found is None:
            return False
        attempts = (found.get("attempts") or 0) + 1
        self._retrying(lambda: self.records.failed_again(found["_id"], failure.reason, failure.error, attempts),
                       "log_failed", sleep, key)
        log.info("refusal_already_recorded", reason=failure.reason, record_id=found["_id"], attempts=attempts)
        return True

    def _fail_invalid(self, delivery: Delivery, sleep: Callable[[float], bool]) -> None:
        headers = delivery.headers
        facts = replace(MessageFacts.guess(loads_or_none(delivery.body)), direction=delivery.direction)
        reason = h.text(headers.get(h.REASON, "invalid_message"), 64)
        error = h.text(headers.get(h.ERROR, "The receiver did not accept this message."))
        raw = delivery.raw
        self._fail(delivery, facts, reason, error, raw, None, sleep, detail=error[:200])

    # ------------------------------------------------------------------ failure

    def _fail(
        self,
        delivery: Delivery,
        facts: MessageFacts,
        reason: str,
        error: str,
        raw: str,
        company_id: int | None,
        sleep: Callable[[float], bool],
        detail: str = "",
        probe: bool = False,
    ) -> bool:
        """The failed-message record in Lime (a requeued message updates its own: one
        record per message), then the dead letter. ``detail`` goes to the log line;
        ``error`` (which may quote personal data) only to Lime.

        Should Lime keep refusing the record with 5xx, a short one without the
        payload is written (the dead letter keeps the message whole), and failing
        that the dead letter goes alone (`dlq reconcile` records it later). With
        ``probe`` (for a message Lime answered 5xx too often) the record is also the
        proof that Lime takes writes: each version is tried until its first 5xx, and
        when both get one, nothing is failed and False is returned."""
        attempts = (h.integer(delivery.headers.get(h.ATTEMPTS)) or 0) + 1
        requeued = delivery.failed_record
        short = f"{reason}: Lime refused the whole failed-message record; the dead letter keeps the message."
        versions = ((error, raw, company_id, "failed"), (short, "", None, "failed-short"))
        record = requeued
        for text, payload, company, name in versions:
            key = None if probe else (name, delivery.key)
            try:
                if requeued is None:
                    write = partial(self.records.failed, facts, reason, text, payload, attempts, company)
                    record = self._retrying(write, "log_failed", sleep, key, give_up_on_5xx=probe)
                else:
                    self._retrying(partial(self.records.failed_again, requeued, reason, text, attempts),
                                   "log_failed", sleep, key, give_up_on_5xx=probe)
                break
            except LimeKeepsFailing as err:
                log.warning("failed_record_refused", version=name, status=err.error.status)
        else:
            if probe:
                return False
        self._retrying(lambda: self._dead_letter(delivery, facts, reason, error, attempts, record), "dead_letter",
                       sleep)
        log.warning("message_failed", reason=reason, detail=detail, attempts=attempts, record_id=record)
        metrics().failed(facts.objecttype or "", reason)
        return True

    def _dead_letter(self, delivery: Delivery, facts: MessageFacts, reason: str, error: str, attempts: int,
                     record_id: int | None) -> None:
        headers: dict[str, Any] = {
            h.REASON: h.text(reason, 64),
            h.ERROR: h.text(error),
            h.ATTEMPTS: attempts,
            h.SOURCE_QUEUE: delivery.queue,
            h.FAILED_AT: dt.datetime.now(dt.UTC).isoformat(),
            h.OBJECTTYPE: h.text(facts.objecttype, 64),
            h.CUSTOMERNO: h.text(facts.customerno, 64),
            h.FAILED_RECORD: record_id,
        }
        if facts.messageid is not None:
            headers[h.ID] = facts.messageid
        if delivery.direction == TO_BFUS:
            headers[h.DIRECTION] = TO_BFUS
            headers[h.DELIVERY] = h.text(delivery.headers.get(h.DELIVERY, ""), 200)
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=str(facts.messageid) if facts.messageid is not None else None,
            headers=headers,
        )
        self.publisher.publish(self.topology.dead_exchange, delivery.queue, delivery.body, props)

    # ------------------------------------------------------------------ retry

    def _retrying(self, step: Callable[[], T], what: str, sleep: Callable[[float], bool], key: Any = None,
                  give_up_on_5xx: bool = False) -> T:
        """Run ``step`` until it gets past Lime or broker trouble. Before each try the
        delivery must still be ours (its channel open): a worker that lost it leaves
        the rest to the next owner instead of writing behind its back. With ``key``,
        5xx answers count against the message (:class:`LimeErrors`), which raises
        LimeKeepsFailing when they are too many; ``give_up_on_5xx`` raises it at the first."""
        backoff = Backoff(self.config.retry_initial, self.config.retry_max)

        def attempt() -> T:
            if not sleep(0):
                raise Abandoned()
            result = step()
            if key is not None:
                self.lime_errors.forget(key)
            return result

        def on_retry(err: Exception, pause: float) -> None:
            if isinstance(err, LimeUnavailable) and (err.status or 0) >= 500:
                if give_up_on_5xx:
                    raise LimeKeepsFailing(err, 1)
                if key is not None:
                    self.lime_errors.strike(key, err)
            log.warning("waiting_to_retry", step=what, attempt=backoff.attempt, pause=round(pause, 2), error=str(err))
            metrics().retries.labels(what).inc()

        try:
            return retry(attempt, (LimeUnavailable, BrokerUnavailable, BfusUnavailable), backoff, sleep, on_retry)
        except (LimeUnavailable, BrokerUnavailable, BfusUnavailable):
            raise Abandoned() from None  # the wait was cut short: the delivery is no longer ours
