"""The migration's hold on partitions (the lock protocol of shared/partitions.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import pika

from migration.errors import MigrationError, Stopped
from shared.config import BrokerConfig
from shared.partitions import ControlChannel, PartitionLocks
from shared.topology import Topology, connection_parameters


class PartitionHold:
    """Holds partitions in RabbitMQ the way a worker does, after asking the workers to
    give them up (shared/partitions.py), so that no live change is applied to a
    partition's objects while the migration writes them."""

    def __init__(self, broker: BrokerConfig, wait: float = 300.0):
        self.topology = Topology.from_config(broker)
        self.wait = wait
        self.connection = pika.BlockingConnection(connection_parameters(broker, "bfus-lime migration"))
        self.locks = PartitionLocks(ControlChannel(self.connection), self.topology, "migration")
        self.held: set[int] = set()
        if not self.locks.start_migration():
            self.connection.close()
            raise MigrationError("another migration is running (it holds the migration marker in RabbitMQ)")

    def take(self, partitions: Iterable[int], stop: threading.Event) -> None:
        """Ask the workers to give these partitions up, then hold every one of them."""
        partitions = list(partitions)
        for partition in partitions:
            self.locks.reserve(partition)
        deadline = time.monotonic() + self.wait
        for partition in partitions:
            while not self.locks.take(partition):
                if stop.is_set():
                    raise Stopped()
                if time.monotonic() > deadline:
                    raise MigrationError(f"partition {partition} was not given up by its worker within "
                                         f"{self.wait:.0f}s")
                self.connection.process_data_events(time_limit=0.2)
            self.held.add(partition)

    def give_back(self, partition: int) -> None:
        # Nothing is in flight: the next worker need not wait for a dead owner's request.
        self.locks.give_back(partition)
        self.held.discard(partition)

    def close(self) -> None:
        """Give back what is still held (a stopped migration) and end the hold."""
        if self.connection.is_open:
            try:
                for partition in sorted(self.held):
                    self.give_back(partition)
                self.locks.end_migration()
            finally:
                self.connection.close()
