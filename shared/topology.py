"""RabbitMQ topology: a direct exchange routing each message to one of P partition
queues (quorum, single active consumer), a queue for messages the receiver could not
accept, the dead-letter exchange and queue, and the queue workers count each other
by. Declaring is idempotent.

Retries belong to the worker, not the broker: partition queues carry an explicit
delivery limit so high it is never reached (RabbitMQ 4 otherwise applies 20 and drops
or dead-letters the message; ``-1`` means unlimited on 4.x but dead-letters at once on
3.x, so it is not used). The broker itself never needs to dead-letter (the worker
dead-letters failed messages itself), so the default at-most-once strategy stays: the
at-least-once strategy trips a RabbitMQ 3.10 fault after `rabbitmqctl stop_app` /
`start_app` (its supervisor is gone, and every quorum queue declared with it then
fails with INTERNAL_ERROR)."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import pika
from pika.adapters.blocking_connection import BlockingChannel

from shared.config import BrokerConfig

INVALID_ROUTING_KEY = "invalid"
GROUP_SIZE = "x-quorum-initial-group-size"
PRECONDITION_FAILED = 406
DELIVERY_LIMIT = 2_147_483_647


def connection_parameters(broker: BrokerConfig, name: str) -> list[pika.URLParameters]:
    """One set of parameters per node of ``broker.url``, in its order: a
    ``BlockingConnection`` given the list connects to the first node that answers."""
    return [_parameters(url, broker, name) for url in broker.urls]


def node_address(params: pika.ConnectionParameters) -> str:
    """``host:port`` of a node, for logs (never its credentials)."""
    return f"{params.host}:{params.port}"


def _parameters(url: str, broker: BrokerConfig, name: str) -> pika.URLParameters:
    params = pika.URLParameters(url)
    params.heartbeat = broker.heartbeat
    params.connection_attempts = 1
    params.socket_timeout = 5
    params.blocked_connection_timeout = max(broker.confirm_timeout * 2, 10)
    params.client_properties = {"connection_name": name, "product": "bfus-lime"}
    return params


@dataclass(frozen=True)
class Topology:
    prefix: str
    partitions: int
    quorum_size: int = 0  # x-quorum-initial-group-size of new quorum queues (0: the broker's, every node)

    @classmethod
    def from_config(cls, broker: BrokerConfig) -> Topology:
        return cls(prefix=broker.prefix, partitions=broker.partitions, quorum_size=broker.quorum_size)

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.changes"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def invalid_queue(self) -> str:
        return f"{self.prefix}.invalid"

    @property
    def presence_queue(self) -> str:
        """Every worker consumes it (no message ever goes there): its consumer count
        is the number of live workers (classic and transient: worker/counted.py)."""
        return f"{self.prefix}.workers"

    @property
    def busy_queue(self) -> str:
        """A worker consumes it while it has messages in the works (no message ever goes
        there): its consumer count is the number of workers sharing Lime's budget now."""
        return f"{self.prefix}.busy"

    @property
    def migration_marker(self) -> str:
        """Exclusive queue a running migration holds (workers then look for reservations)."""
        return f"{self.prefix}.migration"

    def reservation_queue(self, partition: int) -> str:
        """Exclusive queue a migration holds while it writes ``partition``'s objects:
        workers give the partition up and do not take it until the queue is gone."""
        return f"{self.prefix}.migrate.{self.routing_key(partition)}"

    def handover_marker(self, partition: int) -> str:
        """Left by a worker that let ``partition`` go cleanly (nothing in flight); the
        next owner removes it. Its absence means the previous owner may have died
        with a request to Lime still under way."""
        return f"{self.prefix}.handedover.{self.routing_key(partition)}"

    def lock_queue(self, partition: int) -> str:
        """Exclusive queue held by the worker that owns ``partition``; the broker
        removes it when that worker's connection ends."""
        return f"{self.prefix}.lock.{self.routing_key(partition)}"

    def routing_key(self, partition: int) -> str:
        return f"p{partition:03d}"

    def partition_queue(self, partition: int) -> str:
        return f"{self.prefix}.changes.{self.routing_key(partition)}"

    @property
    def partition_queues(self) -> list[str]:
        return [self.partition_queue(p) for p in range(self.partitions)]

    def partition_named(self, queue: str) -> int | None:
        """The partition whose queue ``queue`` is (None for any other queue)."""
        prefix = f"{self.prefix}.changes.p"
        number = queue[len(prefix):] if queue.startswith(prefix) else ""
        return int(number) if number.isdigit() and int(number) < self.partitions else None

    def partition_of(self, partition_key: str) -> int:
        """Stable across processes and versions (CRC-32, not Python's salted hash)."""
        return zlib.crc32(partition_key.encode("utf-8")) % self.partitions

    def route(self, partition_key: str) -> str:
        """The routing key of the partition ``partition_key`` belongs to."""
        return self.routing_key(self.partition_of(partition_key))

    def quorum_arguments(self) -> dict:
        """A replicated queue: on a cluster it survives the loss of a minority of its
        nodes, and its consumers on the other nodes keep consuming."""
        group = {GROUP_SIZE: self.quorum_size} if self.quorum_size else {}
        return {"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT, **group}

    def work_queue_arguments(self) -> dict:
        return {
            **self.quorum_arguments(),
            "x-single-active-consumer": True,
            "x-dead-letter-exchange": self.dead_exchange,
        }

    def declare(self, connection: pika.BlockingConnection) -> None:
        channel = connection.channel()
        channel.exchange_declare(self.exchange, exchange_type="direct", durable=True)
        channel.exchange_declare(self.dead_exchange, exchange_type="fanout", durable=True)
        # Browsing the dead letters returns them to the queue, which counts as a delivery.
        channel = self._declare_quorum(connection, channel, self.dead_queue, self.quorum_arguments())
        channel.queue_bind(self.dead_queue, self.dead_exchange)
        channel = self._declare_quorum(connection, channel, self.invalid_queue, self.work_queue_arguments())
        channel.queue_bind(self.invalid_queue, self.exchange, routing_key=INVALID_ROUTING_KEY)
        # Counted by their consumers (worker/counted.py): classic and transient, so the
        # count is exact; an earlier version's durable one (it never holds a message) is
        # replaced.
        for counted in (self.presence_queue, self.busy_queue):
            try:
                channel.queue_declare(counted, durable=False)
            except pika.exceptions.ChannelClosedByBroker as err:
                if err.reply_code != PRECONDITION_FAILED:
                    raise
                channel = connection.channel()
                channel.queue_delete(counted)
                channel.queue_declare(counted, durable=False)
        for partition in range(self.partitions):
            queue = self.partition_queue(partition)
            channel = self._declare_quorum(connection, channel, queue, self.work_queue_arguments())
            channel.queue_bind(queue, self.exchange, routing_key=self.routing_key(partition))
        channel.close()

    @staticmethod
    def _declare_quorum(connection: pika.BlockingConnection, channel: BlockingChannel, queue: str,
                        arguments: dict) -> BlockingChannel:
        """Declare a quorum queue; one that exists with another group size (fixed when
        a queue is first declared: broker.quorum_size changed since, or left at 0)
        stays as it is. The channel to go on with."""
        try:
            channel.queue_declare(queue, durable=True, arguments=arguments)
            return channel
        except pika.exceptions.ChannelClosedByBroker as err:
            current = _current_group_size(err)
            if current is None:
                raise
        channel = connection.channel()
        others = {name: value for name, value in arguments.items() if name != GROUP_SIZE}
        channel.queue_declare(queue, durable=True, arguments={**others, **current})
        return channel


def _current_group_size(err: pika.exceptions.ChannelClosedByBroker) -> dict | None:
    """The group-size argument an existing queue was declared with, from the broker's
    refusal of another ("inequivalent arg 'x-quorum-initial-group-size' ...: received
    ... but current is the value '3' of type 'signedint'", or "... current is none");
    None when the refusal is about something else."""
    text = str(err.reply_text)
    if err.reply_code != PRECONDITION_FAILED or f"inequivalent arg '{GROUP_SIZE}'" not in text:
        return None
    if text.endswith("current is none"):
        return {}
    found = re.search(r"current is the value '(\d+)'", text)
    return {GROUP_SIZE: int(found.group(1))} if found else None


def declare_topology(broker: BrokerConfig) -> Topology:
    """Connect, declare everything, disconnect. Raises pika errors when the broker is away."""
    topology = Topology.from_config(broker)
    connection = pika.BlockingConnection(connection_parameters(broker, "bfus-lime topology"))
    try:
        topology.declare(connection)
    finally:
        if connection.is_open:
            connection.close()
    return topology
