"""Publishing with publisher confirms and a deadline.

pika is not thread-safe, so one background thread owns one connection (an asynchronous
``SelectConnection``); any thread calls :meth:`ConfirmedPublisher.publish`, which
returns only when the broker has confirmed the message, or raises
:class:`BrokerUnavailable` when it is not connected, refuses the message, or does not
confirm in time, and :class:`MessageUnencodable` when the message itself cannot be
sent (nothing is sent then). The thread reconnects by itself.

Confirms name messages by the channel's own count of what it published, so the
publisher counts only publishes that really went out. Whenever it cannot be sure its
count matches the channel's (a publish that raised half-way, confirms that stop
coming), it resets the connection: what was in flight fails with BrokerUnavailable,
and counting starts again on a new channel.

:attr:`ConfirmedPublisher.ready` is the honest health: connected, and not
:data:`TIMEOUTS_BEFORE_RESET` confirm timeouts in a row. :meth:`unready_for` says for
how long it has not been, so that a server can replace a process stuck that way."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial

import pika
from pika import frame, spec
from pika.channel import Channel

from shared import headers as h
from shared.config import BrokerConfig
from shared.logs import get_logger
from shared.retry import Backoff
from shared.topology import connection_parameters, node_address

log = get_logger(component="publisher")
TIMEOUTS_BEFORE_RESET = 3  # confirm timeouts in a row after which the connection is reset
# Nacks in a row after which the connection is reset: a channel that first published to
# a quorum queue while it had no leader (its node just lost) kept being refused after a
# new leader was elected, where a new channel is not (RabbitMQ 3.10).
NACKS_BEFORE_RESET = 3


class BrokerUnavailable(Exception):
    """The message is not stored: the broker is away, refused it, or did not confirm."""


class PublishTimeout(BrokerUnavailable):
    pass


class PublishRejected(BrokerUnavailable):
    pass


class MessageUnencodable(ValueError):
    """The message cannot be sent as AMQP (a header value out of range, text that is
    not UTF-8, a name too long): the message is at fault, not the broker."""


def check_encodable(exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties) -> None:
    """Marshal the frames of a publish as pika would, or raise MessageUnencodable."""
    try:
        frame.Method(1, spec.Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)).marshal()
        frame.Header(1, len(body), properties).marshal()
    except Exception as err:  # struct.error, OverflowError, UnicodeEncodeError, TypeError, AssertionError ...
        raise MessageUnencodable(f"{type(err).__name__}: {err}") from None


class ConfirmedPublisher:
    def __init__(
        self,
        broker: BrokerConfig,
        name: str,
        on_connect: Callable[[], object] | None = None,
    ) -> None:
        self._params = connection_parameters(broker, name)
        self._node = 0  # index in self._params of the node connected to, or tried next
        self._timeout = broker.confirm_timeout
        self._on_connect = on_connect
        self._name = name
        self._connection: pika.SelectConnection | None = None
        self._channel: Channel | None = None
        self._pending: dict[int, Future] = {}
        self._returned: set[int] = set()
        self._seq = 0  # publishes the current channel really sent
        self._ready = threading.Event()
        self._timeouts = 0  # confirm timeouts in a row
        self._nacks = 0  # nacks in a row (loop thread)
        self._health = threading.Lock()
        self.confirmed: Counter[str] = Counter()  # messages the broker confirmed, by exchange
        self._unready_since: float | None = time.monotonic()
        self._was_ready = False  # ready at some point of the current connection
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public

    def start(self) -> ConfirmedPublisher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"publisher:{self._name}", daemon=True)
            self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        """Connected, with a channel in confirm mode, and confirms coming."""
        return self._ready.is_set()

    def unready_for(self) -> float:
        """Seconds since this publisher was last ready (0 while it is)."""
        since = self._unready_since
        return 0.0 if since is None or self.ready else time.monotonic() - since

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
        headers = {**(properties.headers or {}), h.PUBLISH_SEQ: 0}
        props = pika.BasicProperties(**{**properties.__dict__, "headers": headers})
        check_encodable(exchange, routing_key, body, props)
        try:
            connection.ioloop.add_callback_threadsafe(
                partial(self._publish_in_loop, future, exchange, routing_key, body, props)
            )
        except Exception as err:  # the loop is gone
            raise BrokerUnavailable(f"RabbitMQ connection closed ({err})") from None
        try:
            future.result(self._timeout if timeout is None else timeout)
        except FutureTimeout:
            self._timed_out(connection)
            raise PublishTimeout("RabbitMQ did not confirm the message in time") from None
        with self._health:
            self._timeouts = 0
            self.confirmed[exchange] += 1

    def _timed_out(self, connection: pika.SelectConnection) -> None:
        with self._health:
            self._timeouts += 1
            reset = self._timeouts >= TIMEOUTS_BEFORE_RESET
            if reset:
                self._timeouts = 0
        if reset:
            self._not_ready()
            try:
                connection.ioloop.add_callback_threadsafe(
                    partial(self._reset, f"{TIMEOUTS_BEFORE_RESET} confirm timeouts in a row"))
            except Exception:
                pass  # the loop is gone already

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
        backoff = Backoff(0.2, 5.0)
        tried = 0  # nodes tried since the last connection that worked
        while not self._stopping.is_set():
            params = self._params[self._node]
            try:
                if self._on_connect is not None:
                    try:
                        self._on_connect()
                    except pika.exceptions.AMQPChannelError as err:
                        # The broker answers but refused a declaration: publish anyway (what
                        # cannot be routed is refused per message, and the caller says 503).
                        log.error("broker_declare_failed", error=str(err))
                self._connection = pika.SelectConnection(
                    params,
                    on_open_callback=self._on_open,
                    on_open_error_callback=self._on_open_error,
                    on_close_callback=self._on_closed,
                )
                self._connection.ioloop.start()
            except Exception as err:
                log.warning("broker_connect_failed", node=node_address(params), error=str(err) or type(err).__name__)
            self._not_ready()
            self._channel = None
            self._fail_pending(BrokerUnavailable("RabbitMQ connection lost before confirm"))
            # The next node of broker.url next (the same one when there is one).
            self._node = (self._node + 1) % len(self._params)
            tried += 1
            if self._was_ready:
                self._was_ready = False
                backoff.reset()
                tried = 1
                log.warning("broker_connection_lost", node=node_address(params))
            if tried < len(self._params):
                continue  # another node may answer at once
            tried = 0
            if self._stopping.wait(backoff.pause()):
                break

    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_open_error(self, connection: pika.SelectConnection, error: Exception) -> None:
        log.debug("broker_open_failed", error=str(error))
        connection.ioloop.stop()

    def _on_closed(self, connection: pika.SelectConnection, reason: Exception) -> None:
        self._not_ready()
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
        with self._health:
            self._timeouts = 0
            self._unready_since = None
        self._was_ready = True
        self._ready.set()
        log.info("broker_connected", connection=self._name, node=node_address(self._params[self._node]))

    def _not_ready(self) -> None:
        with self._health:
            self._ready.clear()
            if self._unready_since is None:
                self._unready_since = time.monotonic()

    def _reset(self, why: str) -> None:
        """The channel's count and ours may differ: fail what is in flight and start
        again on a new connection (loop thread)."""
        log.warning("broker_publisher_reset", connection=self._name, why=why)
        self._not_ready()
        self._fail_pending(BrokerUnavailable(f"RabbitMQ connection reset ({why})"))
        connection = self._connection
        self._close_in_loop()
        if connection is not None:
            # A connection whose peer stopped answering never finishes closing: give up on it.
            connection.ioloop.call_later(self._timeout, partial(self._abandon, connection))

    def _abandon(self, connection: pika.SelectConnection) -> None:
        if not connection.is_closed:
            log.warning("broker_connection_abandoned", connection=self._name)
            connection.ioloop.stop()

    def _on_channel_closed(self, channel: Channel, reason: Exception) -> None:
        self._not_ready()
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
        props.headers[h.PUBLISH_SEQ] = self._seq + 1
        try:
            channel.basic_publish(exchange, routing_key, body, props, mandatory=True)
        except Exception as err:  # checked encodable: the channel or connection is at fault
            self._reset(f"a publish raised {type(err).__name__}")  # not ready before the caller hears of it
            future.set_exception(BrokerUnavailable(f"publish failed: {type(err).__name__}: {err}"))
            return
        self._seq += 1  # the channel sent it: its delivery tag is this number
        self._pending[self._seq] = future

    def _on_return(self, _channel: Channel, method, properties: pika.BasicProperties, _body: bytes) -> None:
        seq = (properties.headers or {}).get(h.PUBLISH_SEQ)
        if isinstance(seq, int):
            self._returned.add(seq)
        log.error("broker_returned_message", exchange=method.exchange, routing_key=method.routing_key)

    def _on_confirm(self, frame) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        tags = [t for t in self._pending if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        self._nacks = 0 if acked else self._nacks + 1
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
        if self._nacks >= NACKS_BEFORE_RESET:
            self._nacks = 0
            self._reset(f"{NACKS_BEFORE_RESET} nacks in a row")

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
