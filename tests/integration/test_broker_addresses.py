"""Several broker addresses and the quorum group size, on the session's broker: a
client given a node that does not answer goes on to the next, and declaring the
topology over queues an earlier version declared keeps working (issue 15)."""

from __future__ import annotations

import socket

import pika

from sandbox.broker import BrokerHandle
from shared.config import build_config
from shared.publisher import ConfirmedPublisher
from shared.topology import Topology, connection_parameters, declare_topology


def closed_port_url(amqp_url: str) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vhost = amqp_url.rsplit("/", 1)[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/{vhost}"


def test_clients_skip_a_node_that_does_not_answer(amqp_url: str) -> None:
    config = build_config({"broker": {"url": f"{closed_port_url(amqp_url)},{amqp_url}", "partitions": 2}}, {})
    topology = declare_topology(config.broker)  # a BlockingConnection over the list
    publisher = ConfirmedPublisher(config.broker, "test").start()
    try:
        assert publisher.wait_ready(30)
        publisher.publish(topology.exchange, topology.routing_key(0), b"{}", pika.BasicProperties(delivery_mode=2))
    finally:
        publisher.stop()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        assert connection.channel().queue_declare(topology.partition_queue(0), passive=True).method.message_count == 1
    finally:
        connection.close()


def test_declaring_again_keeps_queues_an_earlier_version_declared(amqp_url: str, rabbitmq: BrokerHandle) -> None:
    """Before issue 15: no group size, and the counting queues durable. A group size
    now (or another one later) keeps the existing queues; the counting queues, which
    never hold a message, become transient (worker/counted.py)."""
    old = Topology("bfus", 2)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare(old.presence_queue, durable=True)
        channel.queue_declare(old.busy_queue, durable=True)
        old.declare(connection)
        channel.close()
        for size in (3, 5, 0):
            config = build_config({"broker": {"url": amqp_url, "partitions": 2, "quorum_size": size}}, {})
            declared = pika.BlockingConnection(connection_parameters(config.broker, "test"))
            Topology.from_config(config.broker).declare(declared)
            declared.close()
    finally:
        connection.close()
    for queue in (old.dead_queue, old.partition_queue(1)):
        assert rabbitmq.queue_info(amqp_url, queue)["type"] == "quorum", queue
    for queue in (old.presence_queue, old.busy_queue):
        assert not rabbitmq.queue_info(amqp_url, queue)["durable"], queue
