"""The consuming side of a worker.

One pika connection, owned by the main thread. Partitions are spread over the live
workers without manual assignment:

- every worker consumes the presence queue, so its consumer count is the number of
  live workers N, and a fair share is ceil(P / N) partitions;
- a worker owns a partition while it holds that partition's *lock queue*, an
  exclusive queue the broker deletes when the owner's connection ends (a killed
  worker's partitions are free again at once);
- each tick a worker below its fair share takes free partitions, and one above it
  lets the excess go: it stops taking messages from the partition, lets the one in
  flight settle, closes the partition's channel (unacked messages return to the
  queue in order) and only then deletes the lock, so the next owner starts exactly
  where it stopped.

Each owned partition has a *lane*: a thread applying its deliveries strictly in order.
Lanes settle a delivery by asking the connection's thread to ack it
(``add_callback_threadsafe``, the only pika call that may cross threads).

While Lime is down (the Lime client's circuit breaker is open) the worker stops
taking messages: it closes its partitions' channels, so no delivery is held for long
(no consumer timeout, no growing delivery count) and keeps the locks; it resumes
when a probe finds Lime back."""

from __future__ import annotations

import collections
import math
import random
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel

from shared import headers
from shared.config import Config
from shared.lime import LimeClient
from shared.logs import get_logger
from shared.retry import Backoff
from shared.topology import Topology, connection_parameters
from worker.apply import IdCache
from worker.handle import Delivery, MessageHandler, Settle

log = get_logger(component="worker")


class Lane:
    """Applies one queue's deliveries, in order, on its own thread."""

    def __init__(self, name: str, work: Callable[[Delivery], None]):
        self.name = name
        self._work = work
        self._items: collections.deque[Delivery] = collections.deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"lane:{name}", daemon=True)
        self._thread.start()

    def put(self, delivery: Delivery) -> None:
        with self._cond:
            self._items.append(delivery)
            self._cond.notify()

    def drop_queued(self) -> int:
        """Forget deliveries not yet started (they stay unacked and come back)."""
        with self._cond:
            dropped = len(self._items)
            self._items.clear()
            return dropped

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._busy and not self._items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                delivery = self._items.popleft()
                self._busy = True
            try:
                self._work(delivery)
            except Exception:  # a bug must not kill the lane; the message comes back
                log.exception("lane_error", lane=self.name)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


@dataclass
class Owned:
    """A partition this worker holds the lock of."""

    index: int
    channel: BlockingChannel | None  # None while paused (Lime down) or closed by the broker
    cache: IdCache
    releasing: bool = False
    # Taken over from a worker that may have died mid-request: the first message waits
    # until that request can no longer land (see _on_message).
    needs_grace: bool = True


class Worker:
    def __init__(self, config: Config, handler: MessageHandler, name: str = "worker",
                 lime: LimeClient | None = None):
        self.config = config
        self.handler = handler
        self.name = name
        self.lime = lime
        self.topology = Topology.from_config(config.broker)
        self._params = connection_parameters(config.broker, f"bfus-lime {name}")
        self._lanes: dict[str, Lane] = {}
        self._owned: dict[int, Owned] = {}
        self._connection: pika.BlockingConnection | None = None
        self._control: BlockingChannel | None = None
        self._refused_with: int | None = None  # reply code of the control channel's last refusal
        self._generation = 0
        self._stop = threading.Event()  # stop taking messages
        self._abandon = threading.Event()  # give up on in-flight retries
        self._connected = threading.Event()
        self._paused = False
        self._slots = threading.BoundedSemaphore(config.worker.concurrency)
        self._lock = threading.Lock()
        self.settled = 0
        self.max_delivery_count = 0

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask for a graceful stop (any thread, signal handlers included)."""
        self._stop.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def stopping(self) -> threading.Event:
        return self._stop

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def owned_partitions(self) -> list[int]:
        with self._lock:
            return sorted(p for p, o in self._owned.items() if not o.releasing)

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        backoff = Backoff(0.5, 10.0)
        log.info("worker_starting", worker=self.name, partitions=self.topology.partitions)
        while not self._stop.is_set():
            try:
                self._consume()
                backoff.reset()
            except (pika.exceptions.AMQPError, OSError) as err:
                log.warning("broker_connection_lost", worker=self.name, error=str(err) or type(err).__name__)
            finally:
                if self._connected.is_set():
                    backoff.reset()  # it was connected: the first pause is short again
                self._connection_gone()
            if self._stop.wait(backoff.pause()):
                break
        self._abandon.set()
        for lane in self._lanes.values():
            lane.close()
        for lane in self._lanes.values():
            lane.join(5)
        log.info("worker_stopped", worker=self.name, settled=self.settled)

    def _connection_gone(self) -> None:
        self._connected.clear()
        self._connection = None
        self._control = None
        with self._lock:
            self._generation += 1  # deliveries of the old connection can no longer be acked
            self._owned.clear()  # the broker dropped our locks with the connection
        for lane in self._lanes.values():
            lane.drop_queued()

    def _consume(self) -> None:
        connection = pika.BlockingConnection(self._params)
        self._connection = connection
        generation = self._generation
        try:
            self.topology.declare(connection.channel())
            self._control = connection.channel()
            connection.channel().basic_consume(self.topology.presence_queue, lambda *_: None, auto_ack=True)
            self._subscribe(connection, self.topology.invalid_queue, None, generation)
            self._connected.set()
            log.info("worker_consuming", worker=self.name)
            next_tick = 0.0
            interval = self.config.worker.rebalance_interval
            while not self._stop.is_set():
                connection.process_data_events(time_limit=min(0.1, interval))
                if time.monotonic() >= next_tick:
                    self._tick(connection, generation)
                    next_tick = time.monotonic() + interval
            self._finish(connection, generation)
        finally:
            if connection.is_open:
                try:
                    connection.close()
                except Exception:
                    pass

    # ------------------------------------------------------------------ partitions

    def _tick(self, connection: pika.BlockingConnection, generation: int) -> None:
        lime_down = self.lime is not None and self.lime.breaker.is_open
        if lime_down and self.lime is not None and self.lime.breaker.probe_due():
            self._probe_lime()
        reserved = self._reserved()
        for owned in list(self._owned.values()):
            if owned.channel is not None and not owned.channel.is_open:
                log.warning("partition_channel_closed", partition=owned.index, worker=self.name)
                owned.channel = None
            if owned.index in reserved and not owned.releasing:
                log.info("partition_reserved_by_migration", partition=owned.index, worker=self.name)
                owned.releasing = True
                self._lane(owned.index).drop_queued()
            if owned.releasing and self._lane(owned.index).idle:
                self._let_go(owned)
        self._pause_or_resume(connection, generation, lime_down)
        if not lime_down:
            self._rebalance(connection, generation, reserved)

    def _reserved(self) -> set[int]:
        """Partitions a running migration is writing (it holds their reservation queues)."""
        topology = self.topology
        if not self._queue_held(topology.migration_marker):
            return set()
        return {p for p in range(topology.partitions) if self._queue_held(topology.reservation_queue(p))}

    def _queue_held(self, queue: str) -> bool:
        """Whether another connection holds the exclusive ``queue`` (405 on a passive declare)."""
        return (self._control_call(lambda c: c.queue_declare(queue, passive=True)) is None
                and self._refused_with == 405)

    def _pause_or_resume(self, connection: pika.BlockingConnection, generation: int, lime_down: bool) -> None:
        if lime_down and not self._paused:
            log.warning("lime_down_pausing", worker=self.name, partitions=len(self._owned))
        elif not lime_down and self._paused:
            log.info("lime_back_resuming", worker=self.name, partitions=len(self._owned))
        self._paused = lime_down
        for owned in self._owned.values():
            if lime_down and owned.channel is not None:
                self._close_channel(owned)
            elif not lime_down and owned.channel is None and not owned.releasing:
                owned.channel = self._subscribe(connection, self.topology.partition_queue(owned.index),
                                                owned, generation)

    def _rebalance(self, connection: pika.BlockingConnection, generation: int, reserved: set[int]) -> None:
        workers = max(1, self._control_call(lambda c: c.queue_declare(
            self.topology.presence_queue, passive=True).method.consumer_count) or 1)
        fair = math.ceil(self.topology.partitions / workers)
        holding = [o for o in self._owned.values() if not o.releasing]
        if len(holding) > fair:
            for owned in sorted(holding, key=lambda o: o.index)[fair:]:
                log.info("partition_handover", partition=owned.index, worker=self.name, fair_share=fair)
                owned.releasing = True
                self._lane(owned.index).drop_queued()
            return
        wanted = fair - len(holding)
        if wanted <= 0:
            return
        candidates = [p for p in range(self.topology.partitions) if p not in self._owned and p not in reserved]
        random.shuffle(candidates)
        for partition in candidates:
            if wanted == 0:
                break
            queue = self.topology.partition_queue(partition)
            consumers = self._control_call(lambda c, q=queue: c.queue_declare(q, passive=True).method.consumer_count)
            if consumers == 0 and self._acquire(connection, partition, generation):
                wanted -= 1

    def _acquire(self, connection: pika.BlockingConnection, partition: int, generation: int) -> bool:
        lock = self.topology.lock_queue(partition)
        taken = self._control_call(
            lambda c: c.queue_declare(lock, exclusive=True, auto_delete=False, arguments={headers.OWNER: self.name})
        )
        if taken is None:
            return False  # another worker holds it
        marker = self.topology.handover_marker(partition)
        clean = self._control_call(lambda c: c.queue_declare(marker, passive=True)) is not None
        if clean:
            self._control_call(lambda c: c.queue_delete(marker))
        owned = Owned(partition, None, IdCache(), needs_grace=not clean)
        with self._lock:
            self._owned[partition] = owned
        owned.channel = self._subscribe(connection, self.topology.partition_queue(partition), owned, generation)
        log.info("partition_taken", partition=partition, worker=self.name)
        return True

    def _let_go(self, owned: Owned) -> None:
        """The hand-over: channel closed (unacked messages return in order), a note that
        nothing is in flight, then the lock."""
        self._close_channel(owned)
        self._control_call(lambda c: c.queue_declare(self.topology.handover_marker(owned.index), durable=True))
        self._control_call(lambda c: c.queue_delete(self.topology.lock_queue(owned.index)))
        with self._lock:
            self._owned.pop(owned.index, None)
        log.info("partition_released", partition=owned.index, worker=self.name)

    def _close_channel(self, owned: Owned) -> None:
        channel, owned.channel = owned.channel, None
        self._lane(owned.index).drop_queued()
        if channel is not None and channel.is_open:
            try:
                channel.close()
            except Exception:
                pass

    def _control_call(self, call: Callable[[BlockingChannel], object]) -> object | None:
        """A call on the control channel; None when the broker refused it (the
        channel is then replaced)."""
        connection = self._connection
        self._refused_with = None
        if connection is None:
            return None
        if self._control is None or not self._control.is_open:
            self._control = connection.channel()
        try:
            return call(self._control)
        except pika.exceptions.ChannelClosedByBroker as err:
            self._refused_with = err.reply_code
            self._control = connection.channel()
            return None

    def _subscribe(self, connection: pika.BlockingConnection, queue: str, owned: Owned | None,
                   generation: int) -> BlockingChannel:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.config.worker.prefetch)
        channel.basic_consume(queue, on_message_callback=partial(self._on_message, queue, owned, generation))
        return channel

    def _probe_lime(self) -> None:
        """Ask Lime whether it is back, without blocking the connection's thread."""
        lime = self.lime
        assert lime is not None

        def probe() -> None:
            try:
                lime.probe(self.config.lime.processed_limetype)
            except Exception:
                pass

        threading.Thread(target=probe, name="lime-probe", daemon=True).start()

    def _finish(self, connection: pika.BlockingConnection, generation: int) -> None:
        """Graceful stop: stop taking messages, let in-flight ones settle (their acks
        run here), then return so the connection closes."""
        for owned in self._owned.values():
            owned.releasing = True
            self._lane(owned.index).drop_queued()
        self._lane(self.topology.invalid_queue).drop_queued()
        deadline = time.monotonic() + self.config.worker.shutdown_timeout
        log.info("worker_draining", worker=self.name)
        while time.monotonic() < deadline:
            for owned in list(self._owned.values()):
                if self._lane(owned.index).idle:
                    self._let_go(owned)
            if not self._owned and self._lane(self.topology.invalid_queue).idle:
                break
            connection.process_data_events(time_limit=0.05)
        else:
            log.warning("worker_drain_timeout", worker=self.name, partitions=sorted(self._owned))
            self._abandon.set()
        connection.process_data_events(time_limit=0)

    # ------------------------------------------------------------------ deliveries

    def _lane(self, key: int | str) -> Lane:
        name = self.topology.partition_queue(key) if isinstance(key, int) else key
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = Lane(name, self._work)
        return lane

    def _on_message(self, queue: str, owned: Owned | None, generation: int, channel: BlockingChannel,
                    method, properties, body) -> None:
        if owned is not None and (owned.releasing or owned.channel is not channel):
            return  # letting this partition go: the message stays unacked and returns to the queue
        delivery = Delivery(
            queue=queue,
            delivery_tag=method.delivery_tag,
            redelivered=method.redelivered,
            properties=properties,
            body=body,
            generation=generation,
            channel=channel,
            cache=owned.cache if owned is not None else IdCache(size=1),
        )
        if owned is not None and owned.needs_grace:
            owned.needs_grace = False
            # The head of a partition taken over may still be in the works at its previous
            # owner (a request to Lime sent just before that worker died): let it land first.
            delivery.grace = self.config.lime.read_timeout + self.config.lime.connect_timeout if method.redelivered else 0.0
        self.max_delivery_count = max(self.max_delivery_count, delivery.delivery_count)
        self._lane(owned.index if owned is not None else queue).put(delivery)

    def _current(self, delivery: Delivery) -> bool:
        return delivery.generation == self._generation and delivery.channel.is_open

    def _work(self, delivery: Delivery) -> None:
        if not self._current(delivery):
            return  # its channel is gone: the broker redelivers it
        if delivery.grace:
            log.info("waiting_for_previous_owner", queue=delivery.queue, seconds=delivery.grace)
            if not self._pause(delivery, delivery.grace):
                return
        with self._slots:  # at most worker.concurrency messages in the works at once
            settle = self.handler.handle(delivery, partial(self._pause, delivery))
        if settle is Settle.ACK:
            self._ack(delivery)

    def _pause(self, delivery: Delivery, seconds: float) -> bool:
        """Wait between retries; False when the message must be let go (its channel
        closed, the connection lost, the shutdown deadline passed, or, for a real
        wait, the worker is stopping)."""
        deadline = time.monotonic() + seconds
        while True:
            if not self._current(delivery) or (seconds and self._stop.is_set()):
                return False  # stopping: a message waiting to retry has nothing in flight, let it go now
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if self._abandon.wait(min(left, 0.2)):
                return False

    def _ack(self, delivery: Delivery) -> None:
        connection = self._connection
        if connection is None or not self._current(delivery):
            return

        def ack() -> None:
            if self._current(delivery):
                delivery.channel.basic_ack(delivery.delivery_tag)
                self.settled += 1

        try:
            connection.add_callback_threadsafe(ack)
        except Exception:
            pass  # connection gone: the broker redelivers, the log record check dedupes
