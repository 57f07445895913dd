"""The consuming side of a worker: one pika connection, owned by the main thread.

Each tick the worker's :class:`~worker.ownership.Ownership` decides which partitions
it holds (fair share, hand-over, pausing while Lime is down; the lock protocol is
shared/partitions.py). Each owned partition has a *lane* (worker/lanes.py): a thread
applying its deliveries strictly in order. Lanes settle a delivery by queueing its ack;
the connection's thread sends the queued acks at each turn of its loop (at most 0.1 s
apart), and a lane wakes it (``add_callback_threadsafe``, the only pika call that may
cross threads) only when half a prefetch window waits: one wake-up per ack cost the
worker about as much CPU as the rest of pika's work for the message (docs/operations.md
"CPU")."""

from __future__ import annotations

import threading
import time
from functools import partial

import pika
from pika.adapters.blocking_connection import BlockingChannel

from shared.config import BrokerConfig, LimeConfig, WorkerConfig
from shared.lime import LimeClient
from shared.logs import get_logger
from shared.partitions import ControlChannel, PartitionLocks
from shared.retry import Backoff
from shared.topology import Topology, connection_parameters
from worker.apply import IdCache
from worker.budget import Budget
from worker.counted import Counted
from worker.handle import Delivery, MessageHandler, Settle
from worker.lanes import Lane
from worker.ownership import Owned, Ownership

log = get_logger(component="worker")


class Worker:
    def __init__(self, broker: BrokerConfig, settings: WorkerConfig, lime_config: LimeConfig, handler: MessageHandler,
                 name: str = "worker", lime: LimeClient | None = None):
        self.broker = broker
        self.settings = settings
        self.lime_config = lime_config
        self.handler = handler
        self.name = name
        self.lime = lime
        self.topology = Topology.from_config(broker)
        self._params = connection_parameters(broker, f"bfus-lime {name}")
        self._lanes: dict[str, Lane] = {}
        self._ownership: Ownership | None = None  # of the current connection
        self._connection: pika.BlockingConnection | None = None
        self._generation = 0
        self._stop = threading.Event()  # stop taking messages
        self._abandon = threading.Event()  # give up on in-flight retries
        self._connected = threading.Event()
        self._slots = threading.BoundedSemaphore(settings.concurrency)
        self._lock = threading.Lock()
        self._acks: list[Delivery] = []  # settled by their lanes; sent by the connection's thread
        self._acks_lock = threading.Lock()
        self.settled = 0
        self.received = 0  # deliveries handed to a lane, less those given back (settled catches up when done)
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

    @property
    def working(self) -> bool:
        """Whether any of its lanes has messages in the works or waiting, or acks wait."""
        return bool(self._acks) or any(not lane.idle for lane in list(self._lanes.values()))

    def owned_partitions(self) -> list[int]:
        ownership = self._ownership
        return ownership.partitions() if ownership is not None else []

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
        self._ownership = None  # the broker dropped our locks with the connection
        with self._lock:
            self._generation += 1  # deliveries of the old connection can no longer be acked
        for lane in self._lanes.values():
            lane.drop_queued()
        with self._acks_lock:
            lost, self._acks = len(self._acks), []
        self._dropped(lost)  # acks the old connection can no longer send: the broker redelivers

    def _consume(self) -> None:
        connection = pika.BlockingConnection(self._params)
        self._connection = connection
        generation = self._generation
        try:
            self.topology.declare(connection)
            locks = PartitionLocks(ControlChannel(connection), self.topology, self.name)
            ownership = self._ownership = Ownership(
                self.name, self.topology, locks, self.lime, partial(self._subscribe_partition, connection, generation),
                self._lane, self.lime_config.processed_limetype, self._send_acks)
            presence = Counted(connection, self.topology.presence_queue)
            presence.join()
            budget = Budget(
                self.lime.bucket, self.lime_config.rate_limit, self.topology.busy_queue, self.topology.presence_queue,
                connection, locks.consumers) if self.lime is not None else None
            self._subscribe(connection, self.topology.invalid_queue, None, generation)
            self._connected.set()
            log.info("worker_consuming", worker=self.name)
            next_tick = 0.0
            interval = self.settings.rebalance_interval
            while not self._stop.is_set():
                connection.process_data_events(time_limit=min(0.1, interval))
                self._send_acks()
                if budget is not None and not budget.busy and self.working:
                    budget.look(True)  # count as busy now, not at the next tick
                if time.monotonic() >= next_tick:
                    presence.join()  # again, when its node went
                    ownership.tick()
                    if budget is not None:
                        budget.look(self.working)
                    next_tick = time.monotonic() + interval
            self._finish(connection, ownership)
        finally:
            if connection.is_open:
                try:
                    connection.close()
                except Exception:
                    pass

    def _subscribe_partition(self, connection: pika.BlockingConnection, generation: int,
                             owned: Owned) -> BlockingChannel:
        return self._subscribe(connection, self.topology.partition_queue(owned.index), owned, generation)

    def _subscribe(self, connection: pika.BlockingConnection, queue: str, owned: Owned | None,
                   generation: int) -> BlockingChannel:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.settings.prefetch)
        channel.basic_consume(queue, on_message_callback=partial(self._on_message, queue, owned, generation))
        return channel

    def _finish(self, connection: pika.BlockingConnection, ownership: Ownership) -> None:
        """Graceful stop: stop taking messages, let in-flight ones settle (their acks
        run here), then return so the connection closes."""
        ownership.release_all()
        self._lane(self.topology.invalid_queue).drop_queued()
        deadline = time.monotonic() + self.settings.shutdown_timeout
        log.info("worker_draining", worker=self.name)
        while time.monotonic() < deadline:
            if ownership.let_go_idle() and self._lane(self.topology.invalid_queue).idle:
                break
            connection.process_data_events(time_limit=0.05)
            self._send_acks()
        else:
            log.warning("worker_drain_timeout", worker=self.name, partitions=sorted(ownership.owned))
            self._abandon.set()
        self._send_acks()
        connection.process_data_events(time_limit=0)

    # ------------------------------------------------------------------ deliveries

    def _lane(self, key: int | str) -> Lane:
        name = self.topology.partition_queue(key) if isinstance(key, int) else key
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = Lane(name, self._work, self.handler if self.settings.coalesce else None,
                                            self._dropped)
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
            timeout = self.lime_config.read_timeout + self.lime_config.connect_timeout
            delivery.grace = timeout if method.redelivered else 0.0
        self.max_delivery_count = max(self.max_delivery_count, delivery.delivery_count)
        with self._lock:
            self.received += 1

        self._lane(owned.index if owned is not None else queue).put(delivery)

    def _dropped(self, count: int) -> None:
        """Deliveries that will not settle here (a lane forgot them unstarted, they were
        abandoned, or their channel went): the broker gives them back, to this worker or
        another."""
        with self._lock:
            self.received -= count

    def _current(self, delivery: Delivery) -> bool:
        return delivery.generation == self._generation and delivery.channel.is_open

    def _work(self, delivery: Delivery, superseded: list[Delivery]) -> None:
        """One delivery (with the older ones of its object it covers, when coalescing).
        What is not acked goes back to the broker (its channel closed, or abandoned)."""
        if not self._current(delivery) or (delivery.grace and not self._grace(delivery)):
            self._dropped(1 + len(superseded))  # the broker redelivers them
            return
        with self._slots:  # at most worker.concurrency messages in the works at once
            if superseded:
                settles = self.handler.handle_group(delivery, superseded, partial(self._wait, delivery))
            else:
                settles = [(delivery, self.handler.handle(delivery, partial(self._wait, delivery)))]
        for settled, settle in settles:
            if settle is Settle.ACK:
                self._ack(settled)
            else:
                self._dropped(1)

    def _grace(self, delivery: Delivery) -> bool:
        log.info("waiting_for_previous_owner", queue=delivery.queue, seconds=delivery.grace)
        return self._wait(delivery, delivery.grace)

    def _wait(self, delivery: Delivery, seconds: float) -> bool:
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
        """Queue its ack for the connection's thread; wake that thread when half a
        prefetch window waits (the broker sends no more while the window is full)."""
        connection = self._connection
        if connection is None or not self._current(delivery):
            self._dropped(1)
            return
        with self._acks_lock:
            self._acks.append(delivery)
            wake = len(self._acks) == max(1, self.settings.prefetch // 2)
        if wake:
            try:
                connection.add_callback_threadsafe(self._send_acks)
            except Exception:
                pass  # connection gone: _connection_gone lets go of what waits

    def _send_acks(self) -> None:
        """Ack what the lanes settled (the connection's thread only)."""
        if not self._acks:
            return
        with self._acks_lock:
            acks, self._acks = self._acks, []
        for delivery in acks:
            if not self._current(delivery):
                self._dropped(1)  # its channel or connection went: the broker redelivers, the log record dedupes
                continue
            try:
                delivery.channel.basic_ack(delivery.delivery_tag)
            except (pika.exceptions.ChannelClosed, pika.exceptions.ChannelWrongStateError):
                self._dropped(1)
                continue
            self.settled += 1
