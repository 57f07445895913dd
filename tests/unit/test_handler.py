"""The message handler with a store-backed Lime and a recording publisher: one
delivery to its end, the log record and dead letter it leaves, retries, and how a 5xx
is told apart from an outage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pika
import pytest
import structlog

from builders import message
from fakes import RecordingPublisher, StoreLime
from shared import headers as h
from shared.config import build_config
from shared.lime import LimeUnavailable
from shared.limemeta import check_against_lime
from shared.logs import configure_logging
from shared.topology import Topology
from worker.apply import Applier, IdCache
from worker.handle import Delivery, LimeErrors, MessageHandler, Settle
from worker.records import LogWriter

CONFIG = build_config({"worker": {"retry_initial": 0.001, "retry_max": 0.002, "lime_error_attempts": 3}}, environ={})
TOPOLOGY = Topology.from_config(CONFIG.broker)


class Waits:
    """The handler's sleep: counts the waits, says stop after ``limit`` real ones."""

    def __init__(self, limit: int = 10_000):
        self.limit = limit
        self.waits = 0

    def __call__(self, seconds: float) -> bool:
        if seconds:
            self.waits += 1
        return self.waits <= self.limit


@pytest.fixture
def lime(tmp_path: Path) -> StoreLime:
    return StoreLime(tmp_path / "lime.db")


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def handler(lime: StoreLime, publisher: RecordingPublisher, limetypes: dict[str, Any]) -> MessageHandler:
    mappers = check_against_lime(CONFIG, limetypes)
    return MessageHandler(Applier(lime, mappers), LogWriter(lime, CONFIG.lime), publisher, TOPOLOGY,  # type: ignore[arg-type]
                          CONFIG.worker, LimeErrors(lime, CONFIG.worker.lime_error_attempts))  # type: ignore[arg-type]


def delivery(body: dict[str, Any] | bytes, queue: str = TOPOLOGY.partition_queue(0), redelivered: bool = False,
             cache: IdCache | None = None, **headers: Any) -> Delivery:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Delivery(queue, 1, redelivered, pika.BasicProperties(headers=headers), raw, 0,
                    cache=cache if cache is not None else IdCache())


def company(mid: int, name: str = "Ebba Lund AB", customerno: str = "100234") -> dict[str, Any]:
    return message(mid, customerno, data={"customerno": customerno, "name": name, "customertype": "company"})


def records(lime: StoreLime) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return lime.objects(CONFIG.lime.processed_limetype), lime.objects(CONFIG.lime.failed_limetype)


def test_a_change_is_applied_then_logged_once(handler: MessageHandler, lime: StoreLime) -> None:
    cache = IdCache()
    assert handler.handle(delivery(company(1), cache=cache), Waits()) is Settle.ACK
    assert handler.handle(delivery(company(2, "Ebba Lund Holding AB"), cache=cache), Waits()) is Settle.ACK
    [obj] = lime.objects("company")
    assert obj["name"] == "Ebba Lund Holding AB"
    processed, failed = records(lime)
    assert [(r["messageid"], r["outcome"]["key"]) for r in processed] == [(1, "applied"), (2, "applied")]
    assert not failed
    # first message: find + create + log; second: update + log (the cache knows the company)
    assert lime.calls == {"GET": 1, "POST": 3, "PUT": 1}


def test_a_mapping_error_becomes_a_failed_record_and_a_dead_letter(handler: MessageHandler, lime: StoreLime,
                                                                   publisher: RecordingPublisher) -> None:
    bad = message(3, data={"customerno": "100234", "name": "X", "einvoice": "perhaps"})
    source = TOPOLOGY.partition_queue(0)
    assert handler.handle(delivery(bad, source), Waits()) is Settle.ACK
    [record] = records(lime)[1]
    assert record["reason"] == "mapping_error" and "einvoice" in record["error"]
    [(exchange, key, body, props)] = publisher.published
    assert (exchange, key) == (TOPOLOGY.dead_exchange, source) and json.loads(body)["id"] == 3
    assert props.headers[h.REASON] == "mapping_error" and props.headers[h.FAILED_RECORD] == record["_id"]


def test_a_message_lime_answers_5xx_while_answering_others_fails_as_lime_error(
        handler: MessageHandler, lime: StoreLime, publisher: RecordingPublisher) -> None:
    lime.fail("POST", LimeUnavailable("Lime answered 500", status=500), times=None,
              when=lambda limetype, values: limetype == "company")
    waits = Waits()
    assert handler.handle(delivery(company(4)), waits) is Settle.ACK
    [record] = records(lime)[1]
    assert record["reason"] == "lime_error" and "3 times in a row" in record["error"]
    assert not lime.objects("company") and len(publisher.published) == 1
    assert waits.waits == 2  # strikes 1 and 2 waited; the third failed it


def test_an_outage_of_every_request_never_fails_a_message(handler: MessageHandler, lime: StoreLime,
                                                           publisher: RecordingPublisher) -> None:
    for method in ("GET", "POST", "PUT"):
        lime.fail(method, LimeUnavailable("Lime answered 503", status=503), times=None)
    assert handler.handle(delivery(company(5)), Waits(limit=30)) is Settle.ABANDON
    assert records(lime) == ([], []) and publisher.published == []


def test_an_outage_of_writes_never_fails_a_message(handler: MessageHandler, lime: StoreLime,
                                                    publisher: RecordingPublisher) -> None:
    """Reads answer, every write 500: even the failed record cannot be written, so it
    is Lime's writes that are down, not this message."""
    lime.fail("POST", LimeUnavailable("Lime answered 500", status=500), times=None)
    assert handler.handle(delivery(company(6)), Waits(limit=30)) is Settle.ABANDON
    assert records(lime) == ([], []) and publisher.published == []


def test_a_redelivered_message_already_logged_is_not_logged_again(handler: MessageHandler, lime: StoreLime) -> None:
    assert handler.handle(delivery(company(7)), Waits()) is Settle.ACK
    calls = sum(lime.calls.values())
    assert handler.handle(delivery(company(7), redelivered=True), Waits()) is Settle.ACK
    assert len(records(lime)[0]) == 1
    assert sum(lime.calls.values()) - calls == 1  # only the look-up of its log record


def test_an_invalid_message_is_recorded_with_the_receivers_reason(handler: MessageHandler, lime: StoreLime,
                                                                  publisher: RecordingPublisher) -> None:
    error = "Envelope invalid: id: Not a valid integer."
    settle = handler.handle(delivery(b'{"id": "x"}', TOPOLOGY.invalid_queue,
                                     **{h.REASON: "invalid_envelope", h.ERROR: error}), Waits())
    assert settle is Settle.ACK
    [record] = records(lime)[1]
    assert (record["reason"], record["error"], record["payload"]) == ("invalid_envelope", error, '{"id": "x"}')
    assert len(publisher.published) == 1


def test_a_dead_letter_the_broker_refuses_is_retried_not_lost(handler: MessageHandler, lime: StoreLime,
                                                               publisher: RecordingPublisher) -> None:
    publisher.refuse = 2
    waits = Waits()
    assert handler.handle(delivery(b"not json", TOPOLOGY.invalid_queue), waits) is Settle.ACK
    assert len(publisher.published) == 1 and len(records(lime)[1]) == 1 and waits.waits == 2


def test_a_lost_delivery_is_abandoned_without_writing(handler: MessageHandler, lime: StoreLime) -> None:
    assert handler.handle(delivery(company(8)), Waits(limit=-1)) is Settle.ABANDON
    assert sum(lime.calls.values()) == 0


def test_lime_errors_count_only_while_lime_answers_others(lime: StoreLime) -> None:
    errors = LimeErrors(lime, limit=3)  # type: ignore[arg-type]
    err = LimeUnavailable("500", status=500)
    for _ in range(10):
        errors.strike("m", err)  # nothing answered in between: stays at one strike
    lime.answers += 1
    errors.strike("m", err)
    lime.answers += 1
    with pytest.raises(Exception, match="500"):
        errors.strike("m", err)
    errors.forget("m")
    errors.strike("m", err)  # counting starts again


def test_an_unchanged_message_posted_again_to_a_new_owner_is_logged_once(
        lime: StoreLime, publisher: RecordingPublisher, limetypes: dict[str, Any]) -> None:
    """Message 2 repeats message 1's snapshot: no write, logged unchanged, and Lime's
    watermark stays at 1. BFUS posts message 2 again and a worker with an empty cache
    (a new owner) gets it: Lime as read holds its values, and its record exists, so
    nothing more is logged."""
    mappers = check_against_lime(CONFIG, limetypes)
    skipping = MessageHandler(Applier(lime, mappers, skip_unchanged=True), LogWriter(lime, CONFIG.lime),  # type: ignore[arg-type]
                              publisher, TOPOLOGY, CONFIG.worker, LimeErrors(lime, 3))  # type: ignore[arg-type]
    cache = IdCache()
    for mid in (1, 2):
        assert skipping.handle(delivery(company(mid), cache=cache), Waits()) is Settle.ACK
    assert lime.calls["PUT"] == 0 and lime.objects("company")[0]["bfuslastmessageid"] == 1
    assert skipping.handle(delivery(company(2)), Waits()) is Settle.ACK
    processed, _ = records(lime)
    assert [(r["messageid"], r["outcome"]["key"]) for r in processed] == [(1, "applied"), (2, "unchanged")]


def test_every_log_line_of_a_message_names_it_and_its_partition(handler: MessageHandler, lime: StoreLime) -> None:
    """As the receiver's message_queued line does: a log system follows one message from
    the receiver to Lime by message_id, and sees which partition held it."""
    lime.fail("PUT", LimeUnavailable("Lime did not answer PUT in time"), times=1)
    cache = IdCache()
    handler.handle(delivery(company(1), cache=cache), Waits())
    configure_logging("info")  # the tests log warnings only
    try:
        with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as lines:
            assert handler.handle(delivery(company(2, "Nytt Namn AB"), TOPOLOGY.partition_queue(3), cache=cache),
                                  Waits()) is Settle.ACK
    finally:
        configure_logging("warning")
    events = [line["event"] for line in lines]
    assert "waiting_to_retry" in events and "message_processed" in events
    assert all(line.get("message_id") == 2 and line.get("partition") == 3 for line in lines), lines
