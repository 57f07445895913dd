"""A worker counted among the consumers of a queue no message goes to (the presence
queue: the live workers; the busy queue: those sharing Lime's budget now).

The queue is classic and transient, so its consumer count is exact: a quorum queue
keeps counting the consumers of a node that went down until the node is back (on
RabbitMQ 3.10), and the workers would then think there are more of them than there
are and leave partitions unowned. When the queue's node goes, the broker deletes the
queue and cancels its consumers on the other nodes; :meth:`Counted.join`, called each
tick, declares it again (on this worker's node) and consumes anew."""

from __future__ import annotations

import pika
from pika.adapters.blocking_connection import BlockingChannel

from shared.logs import get_logger

log = get_logger(component="worker")


class Counted:
    def __init__(self, connection: pika.BlockingConnection, queue: str):
        self.connection = connection
        self.queue = queue
        self._channel: BlockingChannel | None = None

    @property
    def joined(self) -> bool:
        return self._channel is not None and self._channel.is_open

    def join(self) -> None:
        """Be counted (again, when the broker cancelled the consumer or closed its channel)."""
        if self.joined:
            return
        channel = self.connection.channel()
        try:
            channel.queue_declare(self.queue, durable=False)
            channel.add_on_cancel_callback(self._cancelled)
            channel.basic_consume(self.queue, lambda *_: None, auto_ack=True)
        except pika.exceptions.ChannelClosedByBroker as err:
            log.warning("counted_queue_refused", queue=self.queue, error=str(err))
            return  # the next tick tries again
        self._channel = channel

    def leave(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and channel.is_open:
            channel.close()

    def _cancelled(self, _frame: object) -> None:
        log.info("counted_queue_gone", queue=self.queue)  # its node went: join again at the next tick
        self.leave()
