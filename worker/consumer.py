"""The consuming side: one pika connection owned by the main thread, one channel per
queue (so a queue can be let go by closing its channel), and one *lane* thread per
queue that applies its deliveries strictly in order. Lanes settle a delivery by
asking the connection's thread to ack it (``add_callback_threadsafe``, the only pika
call that may cross threads).

Every worker subscribes to every partition; single active consumer makes the broker
deliver each partition to one of them, the others standing by."""

from __future__ import annotations

import collections
import threading
import time
from functools import partial
from typing import Callable

import pika
from pika.adapters.blocking_connection import BlockingChannel

from shared.config import Config
from shared.logs import get_logger
from shared.topology import Topology, connection_parameters
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


class Worker:
    def __init__(self, config: Config, handler: MessageHandler, name: str = "worker"):
        self.config = config
        self.handler = handler
        self.name = name
        self.topology = Topology.from_config(config.broker)
        self.queues = [*self.topology.partition_queues, self.topology.invalid_queue]
        self._params = connection_parameters(config.broker, f"bfus-lime {name}")
        self._lanes: dict[str, Lane] = {}
        self._connection: pika.BlockingConnection | None = None
        self._generation = 0
        self._stop = threading.Event()  # stop taking messages
        self._abandon = threading.Event()  # give up on in-flight retries
        self._connected = threading.Event()
        self.settled = 0

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask for a graceful stop (any thread, signal handlers included)."""
        self._stop.set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # ------------------------------------------------------------------ main loop

    def run(self) -> None:
        delay = 0.5
        log.info("worker_starting", worker=self.name, queues=len(self.queues))
        while not self._stop.is_set():
            try:
                self._consume()
                delay = 0.5
            except (pika.exceptions.AMQPError, OSError) as err:
                log.warning("broker_connection_lost", worker=self.name, error=str(err) or type(err).__name__)
            finally:
                self._connected.clear()
                self._connection = None
                self._generation += 1  # deliveries of the old connection can no longer be acked
                for lane in self._lanes.values():
                    lane.drop_queued()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2, 10.0)
        self._abandon.set()
        for lane in self._lanes.values():
            lane.close()
        for lane in self._lanes.values():
            lane.join(5)
        log.info("worker_stopped", worker=self.name, settled=self.settled)

    def _consume(self) -> None:
        connection = pika.BlockingConnection(self._params)
        self._connection = connection
        generation = self._generation
        try:
            self.topology.declare(connection.channel())
            for queue in self.queues:
                channel = connection.channel()
                channel.basic_qos(prefetch_count=self.config.worker.prefetch)
                channel.basic_consume(
                    queue, on_message_callback=partial(self._on_message, queue, generation), auto_ack=False
                )
            self._connected.set()
            log.info("worker_consuming", worker=self.name)
            while not self._stop.is_set():
                connection.process_data_events(time_limit=0.2)
            self._finish_in_flight(connection)
        finally:
            if connection.is_open:
                try:
                    connection.close()
                except Exception:
                    pass

    def _finish_in_flight(self, connection: pika.BlockingConnection) -> None:
        """Graceful stop: drop what has not started, let in-flight messages settle
        (their acks run here), then return so the connection closes."""
        dropped = sum(lane.drop_queued() for lane in self._lanes.values())
        deadline = time.monotonic() + self.config.worker.shutdown_timeout
        log.info("worker_draining", worker=self.name, returned_to_queue=dropped)
        while time.monotonic() < deadline:
            if all(lane.idle for lane in self._lanes.values()):
                break
            connection.process_data_events(time_limit=0.1)
            for lane in self._lanes.values():
                lane.drop_queued()
        else:
            log.warning("worker_drain_timeout", worker=self.name)
            self._abandon.set()
        connection.process_data_events(time_limit=0)

    # ------------------------------------------------------------------ deliveries

    def _on_message(self, queue: str, generation: int, channel: BlockingChannel, method, properties, body) -> None:
        delivery = Delivery(
            queue=queue,
            delivery_tag=method.delivery_tag,
            redelivered=method.redelivered,
            properties=properties,
            body=body,
            generation=generation,
            channel=channel,
        )
        lane = self._lanes.get(queue)
        if lane is None:
            lane = self._lanes[queue] = Lane(queue, self._work)
        lane.put(delivery)

    def _work(self, delivery: Delivery) -> None:
        if delivery.generation != self._generation:
            return  # from a closed connection: it will be redelivered
        settle = self.handler.handle(delivery, partial(self._pause, delivery.generation))
        if settle is Settle.ACK:
            self._ack(delivery)

    def _pause(self, generation: int, seconds: float) -> bool:
        """Wait between retries; False when the message must be let go."""
        if self._abandon.wait(seconds):
            return False
        return generation == self._generation

    def _ack(self, delivery: Delivery) -> None:
        connection = self._connection
        if connection is None or delivery.generation != self._generation:
            return
        def ack() -> None:
            if delivery.channel.is_open and delivery.generation == self._generation:
                delivery.channel.basic_ack(delivery.delivery_tag)
                self.settled += 1
        try:
            connection.add_callback_threadsafe(ack)
        except Exception:
            pass  # connection gone: the broker redelivers, the log record check dedupes
