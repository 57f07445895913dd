"""The small machinery under the worker: lanes, the circuit breaker, the token bucket,
retries and the publisher's encoding check."""

from __future__ import annotations

import threading
from typing import Any

import pika
import pytest

from shared.lime import CircuitBreaker, LimeUnavailable
from shared.publisher import MessageUnencodable, check_encodable
from shared.ratelimit import TokenBucket
from shared.retry import Backoff, compute_backoff, retry
from shared.topology import _current_group_size
from worker.lanes import Lane


def test_a_lane_applies_in_order_and_survives_an_error() -> None:
    seen: list[int] = []
    done = threading.Event()

    def work(item: Any, superseded: list[Any]) -> None:
        if item == 2:
            raise RuntimeError("a bug")
        seen.append(item)
        if item == 4:
            done.set()

    lane = Lane("test", work)
    for item in range(5):
        lane.put(item)  # type: ignore[arg-type]
    assert done.wait(5)
    assert seen == [0, 1, 3, 4]
    lane.close()
    lane.join(5)


def test_a_lane_forgets_what_it_has_not_started() -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def work(item: Any, superseded: list[Any]) -> None:
        started.set()
        release.wait(5)
        seen.append(item)

    lane = Lane("test", work)
    for item in range(3):
        lane.put(item)  # type: ignore[arg-type]
    assert started.wait(5)
    assert not lane.idle and lane.drop_queued() == 2
    release.set()
    lane.close()
    lane.join(5)
    assert seen == [0]


class Folding:
    """Deliveries named like "A1" (object A, message 1); ``defer``: whether the handler
    lets one wait."""

    def __init__(self, defer: bool = True):
        self.defer = defer

    def object_of(self, delivery: Any) -> tuple[str, str, int] | None:
        return ("customer", delivery[0], int(delivery[1:])) if delivery[0] != "X" else None

    def may_defer(self, delivery: Any) -> bool:
        return self.defer


def folded(items: list[str], folding: Folding) -> list[tuple[str, list[str]]]:
    calls: list[tuple[str, list[str]]] = []
    gate, done = threading.Event(), threading.Event()

    def work(item: Any, superseded: list[Any]) -> None:
        gate.wait(5)  # everything is queued before the lane looks behind its first item
        calls.append((item, list(superseded)))
        if sum(1 + len(older) for _, older in calls[1:]) == len(items):  # every item worked or covered
            done.set()

    lane = Lane("test", work, folding)
    lane.put("X0")  # type: ignore[arg-type]  # held at work until the rest is queued
    for item in items:
        lane.put(item)  # type: ignore[arg-type]
    gate.set()
    assert done.wait(5)
    lane.close()
    lane.join(5)
    return calls[1:]


def test_a_lane_writes_the_newest_of_an_object_with_the_older_ones_it_covers() -> None:
    assert folded(["A1", "B1", "A2", "A3", "X9", "B2"], Folding()) == [
        ("A3", ["A1", "A2"]), ("X9", []), ("B2", ["B1"])]


def test_a_lane_folds_nothing_the_handler_will_not_let_wait_nor_an_equal_id() -> None:
    assert folded(["A1", "A2"], Folding(defer=False)) == [("A1", []), ("A2", [])]
    assert folded(["A1", "A1"], Folding()) == [("A1", []), ("A1", [])]  # BFUS sent it twice: no fold


def test_a_lane_forgets_the_deliveries_it_set_aside_with_the_queue() -> None:
    """A1 waits for A2; while B1 is in the works the lane loses its deliveries (the
    connection went): A1 is forgotten with A2, unacked, for the broker to redeliver."""
    gate, working, release = threading.Event(), threading.Event(), threading.Event()
    calls: list[Any] = []

    def work(item: Any, superseded: list[Any]) -> None:
        calls.append((item, list(superseded)))
        if item == "X0":
            gate.wait(5)
        if item == "B1":
            working.set()
            release.wait(5)

    lane = Lane("test", work, Folding())
    for item in ("X0", "A1", "B1", "A2"):
        lane.put(item)  # type: ignore[arg-type]
    gate.set()
    assert working.wait(5)
    assert not lane.idle and lane.drop_queued() == 2
    release.set()
    lane.close()
    lane.join(5)
    assert calls == [("X0", []), ("B1", [])]


def test_the_breaker_opens_after_the_threshold_and_one_probe_closes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("shared.lime.time.monotonic", lambda: now[0])
    breaker = CircuitBreaker(threshold=3, initial=1.0, ceiling=4.0)
    for _ in range(3):
        breaker.before_call()
        breaker.failure()
    assert breaker.is_open and not breaker.probe_due()
    with pytest.raises(LimeUnavailable):
        breaker.before_call()
    now[0] += 1.0
    assert breaker.probe_due()
    breaker.before_call()  # the probe
    with pytest.raises(LimeUnavailable):
        breaker.before_call()  # one probe at a time
    breaker.failure()  # probe failed: wait twice as long
    now[0] += 1.5
    assert not breaker.probe_due()
    now[0] += 0.5
    breaker.before_call()
    breaker.success()
    assert not breaker.is_open
    breaker.before_call()


def test_the_token_bucket_spaces_calls_after_its_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [50.0]
    monkeypatch.setattr("shared.ratelimit.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("shared.ratelimit.time.sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    bucket = TokenBucket(rate=200.0, burst=2)
    waited = [bucket.acquire() for _ in range(6)]
    assert waited[:2] == [0.0, 0.0]
    assert waited[2:] == pytest.approx([0.005] * 4)
    clock[0] += 1.0  # a quiet second refills the burst, no more
    assert [bucket.acquire() for _ in range(3)] == pytest.approx([0.0, 0.0, 0.005])


def test_backoff_doubles_to_its_ceiling_with_jitter_below() -> None:
    for attempt, base in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 8.0)):
        for _ in range(20):
            assert base * 0.5 <= compute_backoff(attempt, 0.5, 8.0) <= base
    backoff = Backoff(0.5, 8.0)
    assert backoff.pause(retry_after=7.0) == 7.0 and backoff.attempt == 1


def test_retry_stops_when_the_wait_is_cut_short() -> None:
    calls = []

    def failing() -> None:
        calls.append(1)
        raise LimeUnavailable("down", retry_after=0.01)

    with pytest.raises(LimeUnavailable):
        retry(failing, (LimeUnavailable,), Backoff(1.0, 1.0), wait=lambda seconds: len(calls) < 3)
    assert len(calls) == 3
    assert retry(lambda: 42, (LimeUnavailable,), Backoff(1.0, 1.0), wait=lambda s: True) == 42


@pytest.mark.parametrize("headers", [{"n": 10**40}, {"t": "\ud800"}, {"k" * 300: 1}])
def test_a_publish_that_cannot_be_encoded_is_refused_before_it_is_sent(headers: dict[str, Any]) -> None:
    with pytest.raises(MessageUnencodable):
        check_encodable("bfus.changes", "p000", b"{}", pika.BasicProperties(headers=headers))
    check_encodable("bfus.changes", "p000", b"{}", pika.BasicProperties(headers={"n": 2**63 - 1, "t": "Å"}))


class FakeChannel:
    """A channel that records publishes, or raises for the ones told to."""

    is_open = True

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.raise_for: set[bytes] = set()

    def basic_publish(self, exchange: str, routing_key: str, body: bytes, properties: Any, mandatory: bool) -> None:
        if body in self.raise_for:
            raise RuntimeError("the socket went away half-way")
        self.sent.append(body)


def confirm(tag: int, multiple: bool = False, ack: bool = True) -> Any:
    method = pika.spec.Basic.Ack(tag, multiple) if ack else pika.spec.Basic.Nack(tag, multiple)
    return type("Frame", (), {"method": method})()


def test_the_publisher_matches_confirms_to_what_the_channel_really_sent() -> None:
    """The channel numbers what it published 1, 2, 3 ...; a publish that raised was not
    sent, so it must not take a number (issue 9), and the publisher resets."""
    from concurrent.futures import Future

    from shared.config import build_config
    from shared.publisher import BrokerUnavailable, ConfirmedPublisher, PublishRejected

    publisher = ConfirmedPublisher(build_config({}, environ={}).broker, "unit")
    channel = FakeChannel()
    publisher._channel = channel  # type: ignore[assignment]
    first, second = Future(), Future()
    publisher._publish_in_loop(first, "x", "k", b"1", pika.BasicProperties(headers={}))
    channel.raise_for = {b"2"}
    publisher._publish_in_loop(second, "x", "k", b"2", pika.BasicProperties(headers={}))
    assert channel.sent == [b"1"] and publisher._seq == 1  # the failed one took no number
    with pytest.raises(BrokerUnavailable, match="publish failed"):
        second.result(0)
    with pytest.raises(BrokerUnavailable, match="reset"):
        first.result(0)  # in flight when the publisher reset: failed, so the caller answers 503
    assert not publisher.ready
    # On the next channel the confirms name the messages by what that channel sent.
    publisher._seq = 0
    fresh = [Future(), Future(), Future()]
    for i, future in enumerate(fresh, start=3):
        publisher._publish_in_loop(future, "x", "k", str(i).encode(), pika.BasicProperties(headers={}))
    publisher._on_confirm(confirm(2, multiple=True))
    publisher._on_confirm(confirm(3, ack=False))
    assert fresh[0].result(0) is None and fresh[1].result(0) is None
    with pytest.raises(PublishRejected):
        fresh[2].result(0)


class CountingChannel:
    """Consuming a queue counts one consumer more; closing, one fewer."""

    def __init__(self, consumers: dict[str, int]):
        self.consumers = consumers
        self.is_open = True

    def queue_declare(self, queue: str, durable: bool) -> None:
        assert queue in self.consumers and not durable

    def add_on_cancel_callback(self, callback: Any) -> None:
        pass

    def basic_consume(self, queue: str, callback: Any, auto_ack: bool) -> None:
        self.consumers[queue] += 1

    def close(self) -> None:
        self.is_open = False
        self.consumers["busy"] -= 1


class FakeConnection:
    def __init__(self, consumers: dict[str, int]):
        self.consumers = consumers

    def channel(self) -> CountingChannel:
        return CountingChannel(self.consumers)


def test_the_lime_budget_is_shared_by_the_busy_workers() -> None:
    """Four live workers, two of them busy: this one, idle, would start at a quarter;
    busy, it takes a third (three busy with it); after three idle looks it stops counting."""
    from worker.budget import IDLE_LOOKS, Budget

    consumers = {"busy": 2, "presence": 4}
    bucket = TokenBucket(40.0)
    budget = Budget(bucket, 40.0, "busy", "presence", FakeConnection(consumers), consumers.get)  # type: ignore[arg-type]
    assert budget.look(False) == 10.0 and bucket.rate == 10.0 and bucket.burst == 1.0
    assert budget.look(True) == pytest.approx(40 / 3) and consumers["busy"] == 3 and budget.busy
    for _ in range(IDLE_LOOKS - 1):
        budget.look(False)
    assert budget.busy
    budget.look(False)
    assert not budget.busy and consumers["busy"] == 2 and bucket.rate == 10.0


def test_a_quorum_queues_group_size_is_read_from_the_brokers_refusal() -> None:
    def refusal(text: str, code: int = 406) -> pika.exceptions.ChannelClosedByBroker:
        return pika.exceptions.ChannelClosedByBroker(code, text)

    stem = "PRECONDITION_FAILED - inequivalent arg 'x-quorum-initial-group-size' for queue 'bfus.dead' in vhost 'v': "
    assert _current_group_size(refusal(stem + "received none but current is the value '3' of type 'signedint'")) \
        == {"x-quorum-initial-group-size": 3}
    assert _current_group_size(refusal(stem + "received the value '3' of type 'signedint' but current is none")) == {}
    other = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost 'v': received ..."
    assert _current_group_size(refusal(other)) is None
    assert _current_group_size(refusal(stem + "current is none", code=404)) is None
