"""What the broker holds: partitions with their owners, consumers and depths (for
``bfus-lime topology`` and for tests). Uses the management API when
``broker.management_url`` is set (owner names, unacked counts), else AMQP only."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import requests

from shared import headers
from shared.config import BrokerConfig
from shared.partitions import ControlChannel, PartitionLocks
from shared.topology import Topology, connection_parameters

HELD = "(held)"  # owned, owner's name not known without the management API


@dataclass(frozen=True)
class QueueView:
    name: str
    ready: int
    unacked: int | None
    consumers: int
    owner: str | None  # partitions only: worker holding the lock, None when free
    leader: str | None = None  # quorum queues, with the management API: the leading node
    members: tuple[str, ...] = ()  # ... the nodes holding a replica
    online: tuple[str, ...] = ()  # ... those of them up now

    @property
    def quorum(self) -> int:
        """Replicas that must be up for the queue to take and deliver messages."""
        return len(self.members) // 2 + 1

    def replica_warning(self) -> str | None:
        """What is wrong with the queue's replicas, when the management API shows it."""
        if not self.members:
            return None
        down = [m for m in self.members if m not in self.online]
        if len(self.online) < self.quorum:
            return (f"{self.name}: only {len(self.online)} of {len(self.members)} replicas online, fewer than its "
                    f"quorum of {self.quorum}: it takes and delivers no message (down: {', '.join(down)})")
        if down:
            return (f"{self.name}: {len(down)} of {len(self.members)} replicas offline ({', '.join(down)}); it "
                    f"works while {self.quorum} are online")
        return None


def _vhost(url: str) -> str:
    return unquote(urlsplit(url).path.lstrip("/")) or "/"


def _management_views(broker: BrokerConfig, management_url: str) -> dict[str, dict]:
    parts = urlsplit(management_url)
    base = urlunsplit((parts.scheme, f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname, "", "", ""))
    amqp = urlsplit(broker.url)
    auth = (parts.username or amqp.username or "guest", parts.password or amqp.password or "guest")
    response = requests.get(
        f"{base}/api/queues/{quote(_vhost(broker.url), safe='')}",
        params={"columns": "name,messages_ready,messages_unacknowledged,consumers,arguments,leader,members,online"},
        auth=auth, timeout=10,
    )
    response.raise_for_status()
    return {q["name"]: q for q in response.json()}


def describe(broker: BrokerConfig, management_url: str | None = None) -> list[QueueView]:
    """Partition queues, then the invalid, dead-letter and presence queues."""
    topology = Topology.from_config(broker)
    names = [*topology.partition_queues, topology.invalid_queue, topology.dead_queue, topology.presence_queue]
    if management_url:
        queues = _management_views(broker, management_url)
        views = []
        for i, name in enumerate(names):
            q = queues.get(name, {})
            owner = None
            if i < topology.partitions:
                lock = queues.get(topology.lock_queue(i))
                owner = (lock.get("arguments") or {}).get(headers.OWNER, HELD) if lock else None
            views.append(QueueView(name, q.get("messages_ready", 0), q.get("messages_unacknowledged"),
                                   q.get("consumers", 0), owner, q.get("leader"), tuple(q.get("members") or ()),
                                   tuple(q.get("online") or ())))
        return views
    return _amqp_views(broker, topology, names)


def _amqp_views(broker: BrokerConfig, topology: Topology, names: list[str]) -> list[QueueView]:
    connection = pika.BlockingConnection(connection_parameters(broker, "bfus-lime topology"))
    try:
        channel = connection.channel()
        locks = PartitionLocks(ControlChannel(connection), topology, "bfus-lime topology")
        views = []
        for i, name in enumerate(names):
            ok = channel.queue_declare(name, passive=True).method
            owner = (HELD if locks.is_held(i) else None) if i < topology.partitions else None
            views.append(QueueView(name, ok.message_count, None, ok.consumer_count, owner))
        return views
    finally:
        connection.close()


def owners(broker: BrokerConfig, management_url: str) -> dict[int, str | None]:
    """Partition -> owning worker's name (None when free)."""
    views = describe(broker, management_url)
    return {i: v.owner for i, v in enumerate(views[: broker.partitions])}


def ready_count(broker: BrokerConfig, queue: str) -> int:
    """Messages ready in ``queue`` now (AMQP, no statistics delay)."""
    connection = pika.BlockingConnection(connection_parameters(broker, "bfus-lime inspect"))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()
