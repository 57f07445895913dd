"""The confirmed publisher against a real broker: a message that cannot be sent fails
alone, and a publish that goes wrong half-way resets the channel instead of leaving
every later confirm matched to the wrong message (issue 9)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pika
import pytest

from sandbox.stack import wait_for
from shared.config import build_config
from shared.publisher import BrokerUnavailable, ConfirmedPublisher, MessageUnencodable

QUEUE = "publisher-test"


@pytest.fixture
def publisher(amqp_url: str) -> Iterator[ConfirmedPublisher]:
    config = build_config({"broker": {"url": amqp_url, "confirm_timeout": 2.0}}, environ={})

    def declare() -> None:
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        connection.channel().queue_declare(QUEUE, durable=True)
        connection.close()

    publisher = ConfirmedPublisher(config.broker, "test", on_connect=declare).start()
    assert publisher.wait_ready(30)
    yield publisher
    publisher.stop()


def stored(amqp_url: str) -> list[bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        bodies = []
        while (got := channel.basic_get(QUEUE, auto_ack=True))[0] is not None:
            bodies.append(got[2])
        return bodies
    finally:
        connection.close()


def persistent(**headers: Any) -> pika.BasicProperties:
    return pika.BasicProperties(delivery_mode=2, headers=headers)


@pytest.mark.parametrize("headers", [{"n": 10**40}, {"text": "\ud800"}, {"x" * 300: 1}])
def test_a_message_that_cannot_be_encoded_fails_alone(publisher: ConfirmedPublisher, amqp_url: str,
                                                      headers: dict) -> None:
    """Today's code: 'int too large to convert', and every later publish times out."""
    with pytest.raises(MessageUnencodable):
        publisher.publish("", QUEUE, b"bad", persistent(**headers))
    for i in range(20):
        publisher.publish("", QUEUE, f"good {i}".encode(), persistent(n=i))
    assert publisher.ready
    assert stored(amqp_url) == [f"good {i}".encode() for i in range(20)]


def test_a_publish_that_raises_resets_the_channel_and_later_confirms_match(
        publisher: ConfirmedPublisher, amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    publisher.publish("", QUEUE, b"first", persistent())
    original = pika.channel.Channel.basic_publish
    calls = {"n": 0}

    def flaky(self: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the socket went away half-way")  # as if frames were partly written
        original(self, *args, **kwargs)

    monkeypatch.setattr(pika.channel.Channel, "basic_publish", flaky)
    with pytest.raises(BrokerUnavailable, match="publish failed"):
        publisher.publish("", QUEUE, b"lost", persistent())
    wait_for(lambda: publisher.ready, 30, "the publisher to reconnect")
    for i in range(5):
        publisher.publish("", QUEUE, f"after {i}".encode(), persistent())
    assert stored(amqp_url) == [b"first"] + [f"after {i}".encode() for i in range(5)]
