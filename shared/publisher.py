"""Publishing with publisher confirms and a deadline.

pika is not thread-safe, so one background thread owns one connection (an asynchronous
``SelectConnection``); any thread calls :meth:`ConfirmedPublisher.publish`, which
returns only when the broker has confirmed the message, or raises
:class:`BrokerUnavailable` when it is not connected, refuses the message, or does not
confirm in time. The thread reconnects by itself."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from typing import Callable

import pika
from pika.channel import Channel

from shared.config import BrokerConfig
from shared.logs import get_logger
from shared.topology import connection_parameters

_SEQ_HEADER = "x-bfus-lime-publish-seq"
log = get_logger(component="publisher")


class BrokerUnavailable(Exception):
    """The message is not stored: the broker is away, refused it, or did not confirm."""


class PublishTimeout(BrokerUnavailable):
    pass


class PublishRejected(BrokerUnavailable):
    pass


class ConfirmedPublisher:
    def __init__(
        self,
        broker: BrokerConfig,
        name: str,
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self._params = connection_parameters(broker, name)
        self._timeout = broker.confirm_timeout
        self._on_connect = on_connect
        self._name = name
        self._connection: pika.SelectConnection | None = None
        self._channel: Channel | None = None
        self._pending: dict[int, Future] = {}
        self._returned: set[int] = set()
        self._seq = 0
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public

    def start(self) -> "ConfirmedPublisher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"publisher:{self._name}", daemon=True)
            self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        timeout: float | None = None,
    ) -> None:
        """Block until the broker confirmed the message; raise BrokerUnavailable otherwise."""
        connection = self._connection
        if not self._ready.is_set() or connection is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        future: Future = Future()
        headers = dict(properties.headers or {})
        props = pika.BasicProperties(**{**properties.__dict__, "headers": headers})
        try:
            connection.ioloop.add_callback_threadsafe(
                partial(self._publish_in_loop, future, exchange, routing_key, body, props)
            )
        except Exception as err:  # the loop is gone
            raise BrokerUnavailable(f"RabbitMQ connection closed ({err})") from None
        try:
            future.result(self._timeout if timeout is None else timeout)
        except FutureTimeout:
            raise PublishTimeout("RabbitMQ did not confirm the message in time") from None

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        connection = self._connection
        if connection is not None:
            try:
                connection.ioloop.add_callback_threadsafe(self._close_in_loop)
            except Exception:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ loop thread

    def _run(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                if self._on_connect is not None:
                    try:
                        self._on_connect()
                    except pika.exceptions.AMQPChannelError as err:
                        # The broker answers but refused a declaration: publish anyway (what
                        # cannot be routed is refused per message, and the caller says 503).
                        log.error("broker_declare_failed", error=str(err))
                self._connection = pika.SelectConnection(
                    self._params,
                    on_open_callback=self._on_open,
                    on_open_error_callback=self._on_open_error,
                    on_close_callback=self._on_closed,
                )
                self._connection.ioloop.start()
            except Exception as err:
                log.warning("broker_connect_failed", error=str(err) or type(err).__name__)
            was_ready = self._ready.is_set()
            self._ready.clear()
            self._channel = None
            self._fail_pending(BrokerUnavailable("RabbitMQ connection lost before confirm"))
            if was_ready:
                delay = 0.2
                log.warning("broker_connection_lost")
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, 5.0)

    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, connection: pika.SelectConnection, error: Exception) -> None:
        log.debug("broker_open_failed", error=str(error))
        connection.ioloop.stop()

    def _on_closed(self, connection: pika.SelectConnection, reason: Exception) -> None:
        self._ready.clear()
        connection.ioloop.stop()

    def _on_channel_open(self, channel: Channel) -> None:
        self._seq = 0
        self._pending.clear()
        self._returned.clear()
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=lambda _frame: self._set_ready(channel))

    def _set_ready(self, channel: Channel) -> None:
        self._channel = channel
        self._ready.set()
        log.info("broker_connected", connection=self._name)

    def _on_channel_closed(self, channel: Channel, reason: Exception) -> None:
        self._ready.clear()
        self._channel = None
        self._fail_pending(BrokerUnavailable(f"RabbitMQ channel closed: {reason}"))
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()

    def _close_in_loop(self) -> None:
        connection = self._connection
        if connection is not None and connection.is_open:
            connection.close()
        elif connection is not None:
            connection.ioloop.stop()

    def _publish_in_loop(
        self, future: Future, exchange: str, routing_key: str, body: bytes, props: pika.BasicProperties
    ) -> None:
        channel = self._channel
        if channel is None or not channel.is_open:
            future.set_exception(BrokerUnavailable("RabbitMQ channel is not open"))
            return
        self._seq += 1
        props.headers[_SEQ_HEADER] = self._seq
        self._pending[self._seq] = future
        try:
            channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
        except Exception as err:
            self._pending.pop(self._seq, None)
            future.set_exception(BrokerUnavailable(f"publish failed: {err}"))

    def _on_return(self, _channel: Channel, method, properties: pika.BasicProperties, _body: bytes) -> None:
        seq = (properties.headers or {}).get(_SEQ_HEADER)
        if isinstance(seq, int):
            self._returned.add(seq)
        log.error("broker_returned_message", exchange=method.exchange, routing_key=method.routing_key)

    def _on_confirm(self, frame) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tags = [t for t in self._pending if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            future = self._pending.pop(tag, None)
            if future is None or future.done():
                continue
            if not acked:
                future.set_exception(PublishRejected("RabbitMQ refused the message (nack)"))
            elif tag in self._returned:
                self._returned.discard(tag)
                future.set_exception(PublishRejected("RabbitMQ could not route the message (no queue bound)"))
            else:
                future.set_result(None)

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
