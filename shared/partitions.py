"""The partition-lock protocol, spoken by the workers, the migration and ``bfus-lime
topology``, written once here. All of it is queues in RabbitMQ, so it needs nothing
but the broker and survives any process dying:

- **lock** ``<prefix>.lock.pNNN``: whoever holds this exclusive queue owns the
  partition (only its owner applies the partition's messages). The broker deletes it
  when the owner's connection ends, so a dead owner's partitions are free at once.
  Its ``x-bfus-owner`` argument names the owner (for the management API).
- **hand-over marker** ``<prefix>.handedover.pNNN``: an owner that lets a partition go
  with nothing in flight leaves this durable queue before deleting the lock; the next
  owner that finds it knows no request of the previous owner can still land, and
  need not wait for one.
- **migration marker** ``<prefix>.migration`` and **reservations**
  ``<prefix>.reserve.pNNN``: a migration holds the marker while it runs and a
  reservation for each partition it wants; workers give reserved partitions up and
  do not take them until the reservation is gone.

A declaration the broker refuses closes its AMQP channel: :class:`ControlChannel`
replaces the channel and reports the refusal's reply code (405: the queue is
exclusive to another connection, i.e. held elsewhere; 404: it does not exist)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pika
from pika.adapters.blocking_connection import BlockingChannel

from shared import headers
from shared.topology import Topology

T = TypeVar("T")
HELD_ELSEWHERE = 405
NOT_FOUND = 404


class ControlChannel:
    """Calls on one channel of ``connection`` that the broker may refuse."""

    def __init__(self, connection: pika.BlockingConnection):
        self.connection = connection
        self._channel: BlockingChannel | None = None

    def call(self, fn: Callable[[BlockingChannel], T]) -> tuple[T | None, int | None]:
        """(what ``fn`` returned, None), or (None, the reply code) when the broker refused."""
        if self._channel is None or not self._channel.is_open:
            self._channel = self.connection.channel()
        try:
            return fn(self._channel), None
        except pika.exceptions.ChannelClosedByBroker as err:
            self._channel = None
            return None, err.reply_code


class PartitionLocks:
    """One participant's side of the protocol: ``owner`` names it in the locks it takes."""

    def __init__(self, control: ControlChannel, topology: Topology, owner: str):
        self.control = control
        self.topology = topology
        self.owner = owner

    # ------------------------------------------------------------------ exclusive queues

    def _claim(self, queue: str) -> bool:
        """Hold the exclusive ``queue``; False when another connection holds it."""
        _, refused = self.control.call(lambda c: c.queue_declare(
            queue, exclusive=True, auto_delete=False, arguments={headers.OWNER: self.owner}))
        if refused not in (None, HELD_ELSEWHERE):
            raise pika.exceptions.ChannelClosedByBroker(refused, f"declaring {queue} was refused")
        return refused is None

    def held_elsewhere(self, queue: str) -> bool:
        """Whether another connection holds the exclusive ``queue``."""
        _, refused = self.control.call(lambda c: c.queue_declare(queue, passive=True))
        return refused == HELD_ELSEWHERE

    def _exists(self, queue: str) -> bool:
        _, refused = self.control.call(lambda c: c.queue_declare(queue, passive=True))
        return refused is None

    def _delete(self, queue: str) -> None:
        self.control.call(lambda c: c.queue_delete(queue))

    # ------------------------------------------------------------------ owners

    def take(self, partition: int) -> bool:
        """Hold the partition's lock; False when someone else does."""
        return self._claim(self.topology.lock_queue(partition))

    def handed_over_cleanly(self, partition: int) -> bool:
        """After :meth:`take`: whether the previous owner left a hand-over marker (it is
        removed, so it tells only this owner)."""
        marker = self.topology.handover_marker(partition)
        if not self._exists(marker):
            return False
        self._delete(marker)
        return True

    def hand_over(self, partition: int) -> None:
        """Let the partition go with nothing in flight: the marker, then the lock."""
        self.control.call(lambda c: c.queue_declare(self.topology.handover_marker(partition), durable=True))
        self._delete(self.topology.lock_queue(partition))

    def consumers(self, queue: str) -> int | None:
        """Consumers of ``queue`` now (None when the broker refused to say)."""
        count, _ = self.control.call(lambda c: c.queue_declare(queue, passive=True).method.consumer_count)
        return count

    def is_held(self, partition: int) -> bool:
        """Whether anyone holds the partition's lock (as seen from outside)."""
        return self.held_elsewhere(self.topology.lock_queue(partition))

    # ------------------------------------------------------------------ the migration

    def reserved(self) -> set[int]:
        """Partitions a running migration wants or writes (it holds their reservations)."""
        if not self.held_elsewhere(self.topology.migration_marker):
            return set()
        return {p for p in range(self.topology.partitions)
                if self.held_elsewhere(self.topology.reservation_queue(p))}

    def start_migration(self) -> bool:
        """Hold the migration marker; False when another migration holds it."""
        return self._claim(self.topology.migration_marker)

    def reserve(self, partition: int) -> None:
        self._claim(self.topology.reservation_queue(partition))

    def give_back(self, partition: int) -> None:
        """The migration is done with the partition: hand it over, drop the reservation."""
        self.hand_over(partition)
        self._delete(self.topology.reservation_queue(partition))

    def end_migration(self) -> None:
        self._delete(self.topology.migration_marker)

