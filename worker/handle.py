"""Take one delivery to its end: applied and logged as processed, or logged as failed
and dead-lettered. Transient trouble (Lime or the broker away) is retried here, with
backoff, while the message is held, so the partition waits in order."""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable, TypeVar

import pika
import structlog

from shared.config import WorkerConfig
from shared.envelope import EnvelopeError, parse_envelope
from shared.lime import LimeUnavailable
from shared.logs import get_logger
from shared.publisher import BrokerUnavailable, ConfirmedPublisher
from shared.topology import Topology
from worker.apply import Applier, IdCache, Outcome, PermanentFailure
from worker.records import LogWriter, MessageFacts

T = TypeVar("T")
log = get_logger(component="worker")


class Settle(Enum):
    ACK = "ack"  # done: processed or dead-lettered
    ABANDON = "abandon"  # leave unacked; the broker redelivers it


class Abandoned(Exception):
    pass


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
        value = (self.properties.headers or {}).get("x-bfus-failed-record")
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def delivery_count(self) -> int:
        """How often the broker delivered it before (quorum queues count)."""
        return int((self.properties.headers or {}).get("x-delivery-count", 0))


def backoff(attempt: int, initial: float, ceiling: float) -> float:
    """Exponential backoff with jitter: about initial * 2^(attempt-1), at most ceiling."""
    base = min(ceiling, initial * (2 ** min(attempt - 1, 30)))
    return base * random.uniform(0.5, 1.0)


class MessageHandler:
    def __init__(
        self,
        applier: Applier,
        records: LogWriter,
        publisher: ConfirmedPublisher,
        topology: Topology,
        config: WorkerConfig,
    ):
        self.applier = applier
        self.records = records
        self.publisher = publisher
        self.topology = topology
        self.config = config

    # ------------------------------------------------------------------ entry

    def handle(self, delivery: Delivery, sleep: Callable[[float], bool]) -> Settle:
        """``sleep(seconds)`` waits between retries; it returns False when the message
        must be abandoned (shutdown deadline, lost connection)."""
        structlog.contextvars.clear_contextvars()
        try:
            if delivery.queue == self.topology.invalid_queue:
                self._fail_invalid(delivery, sleep)
            else:
                self._handle_change(delivery, sleep)
            return Settle.ACK
        except Abandoned:
            log.info("message_abandoned", queue=delivery.queue, reason="will be redelivered")
            return Settle.ABANDON
        except Exception as err:  # a bug: fail the message rather than block its partition
            log.exception("message_internal_error", queue=delivery.queue)
            return self._fail_internal(delivery, err, sleep)
        finally:
            structlog.contextvars.clear_contextvars()

    def _fail_internal(self, delivery: Delivery, err: Exception, sleep: Callable[[float], bool]) -> Settle:
        facts = MessageFacts.guess(_loads(delivery.body))
        raw = delivery.body.decode("utf-8", errors="replace")
        error = f"Internal error while handling the message: {type(err).__name__}: {err}"
        try:
            self._fail(delivery, facts, "internal_error", error, raw, None, sleep, detail=type(err).__name__)
            return Settle.ACK
        except Abandoned:
            return Settle.ABANDON

    def _handle_change(self, delivery: Delivery, sleep: Callable[[float], bool]) -> None:
        raw = delivery.body.decode("utf-8", errors="replace")
        requeued = delivery.failed_record
        try:
            env = parse_envelope(delivery.body)
        except EnvelopeError as err:  # the receiver checked it; only a bad requeue gets here
            facts = MessageFacts.guess(_loads(delivery.body))
            self._fail(delivery, facts, err.reason, err.message, raw, None, sleep, detail=err.message)
            return
        structlog.contextvars.bind_contextvars(message_id=env.id, customerno=env.customerno or "")
        facts = MessageFacts.of(env)
        if delivery.redelivered or requeued is not None:
            # Logged already? (a redelivery after a lost ack; a requeued message applied by
            # an earlier copy). A requeued message has its failed record: look for a
            # processed one only.
            existing = self._retrying(lambda: self.records.existing(env.id, processed_only=requeued is not None),
                                      "find_log_record", sleep)
            if existing is not None:
                kind, record = existing
                log.info("message_already_logged", record=kind, record_id=record["_id"])
                if requeued is not None:
                    self._retrying(lambda: self.records.resolve(requeued, record["_id"], "applied earlier"),
                                   "resolve_failed", sleep)
                elif kind == "failed":
                    self._retrying(lambda: self._dead_letter(delivery, facts, record["reason"], record["error"],
                                                             record.get("attempts") or 1, record["_id"]),
                                   "dead_letter", sleep)
                return
        try:
            outcome: Outcome = self._retrying(lambda: self.applier.apply(env, delivery.cache), "apply", sleep)
        except PermanentFailure as failure:
            self._fail(delivery, facts, failure.reason, failure.error, raw, failure.company_id, sleep, failure.detail)
            return
        if outcome.outcome == "skipped_duplicate" and delivery.redelivered:
            # Our own write before a crash or lost connection: applied, only not yet logged.
            outcome = replace(outcome, outcome="applied")
        elif outcome.outcome in ("skipped_duplicate", "skipped_stale") and not delivery.redelivered and requeued is None:
            # BFUS sent it again, or an old one came back: one log record per message id.
            existing = self._retrying(lambda: self.records.existing(env.id), "find_log_record", sleep)
            if existing is not None:
                log.info("message_already_logged", outcome=outcome.outcome, record=existing[0])
                return
        processed = self._retrying(lambda: self.records.processed(facts, outcome), "log_processed", sleep)
        if requeued is not None:
            self._retrying(lambda: self.records.resolve(requeued, processed, outcome.outcome), "resolve_failed", sleep)
        log.info("message_processed", outcome=outcome.outcome, objecttype=env.objecttype, operation=env.operation,
                 deliveries=delivery.delivery_count + 1, requeued=requeued is not None)

    def _fail_invalid(self, delivery: Delivery, sleep: Callable[[float], bool]) -> None:
        headers = delivery.properties.headers or {}
        facts = MessageFacts.guess(_loads(delivery.body))
        reason = str(headers.get("x-bfus-reason", "invalid_message"))
        error = str(headers.get("x-bfus-error", "The receiver did not accept this message."))
        raw = delivery.body.decode("utf-8", errors="replace")
        self._fail(delivery, facts, reason, error, raw, None, sleep, detail=error)

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
    ) -> None:
        """The failed-message record in Lime (a requeued message updates its own: one
        record per message), then the dead letter. ``detail`` goes to the log line;
        ``error`` (which may quote personal data) only to Lime."""
        attempts = int((delivery.properties.headers or {}).get("x-bfus-attempts", 0)) + 1
        record = delivery.failed_record
        if record is None:
            record = self._retrying(lambda: self.records.failed(facts, reason, error, raw, attempts, company_id),
                                    "log_failed", sleep)
        else:
            self._retrying(lambda: self.records.failed_again(record, reason, error, attempts), "log_failed", sleep)
        self._retrying(lambda: self._dead_letter(delivery, facts, reason, error, attempts, record), "dead_letter",
                       sleep)
        log.warning("message_failed", reason=reason, detail=detail, attempts=attempts, record_id=record)

    def _dead_letter(self, delivery: Delivery, facts: MessageFacts, reason: str, error: str, attempts: int,
                     record_id: int) -> None:
        headers = {
            "x-bfus-reason": reason,
            "x-bfus-error": error[:2000],
            "x-bfus-attempts": attempts,
            "x-bfus-source-queue": delivery.queue,
            "x-bfus-failed-at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "x-bfus-objecttype": facts.objecttype,
            "x-bfus-customerno": facts.customerno,
            "x-bfus-failed-record": record_id,
        }
        if facts.messageid is not None:
            headers["x-bfus-id"] = facts.messageid
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=str(facts.messageid) if facts.messageid is not None else None,
            headers=headers,
        )
        self.publisher.publish(self.topology.dead_exchange, delivery.queue, delivery.body, props)

    # ------------------------------------------------------------------ retry

    def _retrying(self, step: Callable[[], T], what: str, sleep: Callable[[float], bool]) -> T:
        """Run ``step`` until it gets past Lime or broker trouble. Before each try the
        delivery must still be ours (its channel open): a worker that lost it leaves
        the rest to the next owner instead of writing behind its back."""
        attempt = 0
        while True:
            if not sleep(0):
                raise Abandoned()
            try:
                return step()
            except (LimeUnavailable, BrokerUnavailable) as err:
                attempt += 1
                retry_after = getattr(err, "retry_after", None)
                pause = retry_after if retry_after else backoff(attempt, self.config.retry_initial, self.config.retry_max)
                log.warning("waiting_to_retry", step=what, attempt=attempt, pause=round(pause, 2), error=str(err))
                if not sleep(pause):
                    raise Abandoned() from None


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
