"""``POST /lime/events`` over real HTTP and a real RabbitMQ: deliveries signed as the
Lime stand-in signs them (sandbox/lime/webhooks.py) are queued once, to the partition
of their Lime object, and answered 202; unsigned, wrongly signed and stale ones are
401 and queue nothing; a replayed v2 delivery id is 200 ``duplicate`` whichever
receiver process it reaches; a signed body that is not a Lime event is kept and 400;
a delivery the broker could not confirm is 503 and its id is not noted."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest
import requests
from flask import Flask

from builders import take_all
from receiver.app import close_app, create_app
from receiver.deliveries import Deliveries
from sandbox.lime.webhooks import signature_v1, signature_v2
from sandbox.serve import ServerThread
from sandbox.stack import Stack, wait_for
from sandbox.tcpproxy import FreezableProxy
from shared import headers as h
from shared.topology import Topology

SECRET = "lime-webhook-secret"
PREVIOUS = "lime-webhook-secret-before-rotation"
COMPANY = 4711


def lime_config(tmp_path: Path, **receiver: Any) -> dict[str, Any]:
    return {"receiver": {"lime_secret": SECRET, "lime_previous_secret": PREVIOUS,
                         "deliveries_db": str(tmp_path / "deliveries.sqlite"), **receiver}}


@pytest.fixture
def stack(make_stack: Callable[..., Stack], tmp_path: Path) -> Stack:
    stack = make_stack(partitions=4, config=lime_config(tmp_path))
    stack.start_receiver()
    return stack


# ----------------------------------------------------------------------------- helpers


def event_body(company: int = COMPANY, action: str = "update", name: str = "Acme AB") -> bytes:
    """A delivery body as the stand-in writes it (json.dumps of event and body)."""
    body: dict[str, Any] = {"id": company, "limetype": "company"}
    if action != "delete":
        body.update(values={"id": company, "name": name, "bfusstatus": "active"}, original_values={"name": "Acme"})
    return json.dumps({"event": f"company.{action}", "body": body}, ensure_ascii=False).encode()


def v1(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"X-Lime-Signature": signature_v1(secret, body)}


def v2(body: bytes, delivery: str, secret: str = SECRET, stamp: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if stamp is None else stamp
    return {"X-Lime-Signature": signature_v2(secret, delivery, stamp, body), "X-Lime-Delivery-Id": delivery,
            "X-Lime-Delivery-Timestamp": str(stamp)}


def send(url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    """POST a delivery as the stand-in does (sandbox/lime/webhooks.py Webhooks._send)."""
    sent = {"Content-Type": "application/json", "User-Agent": "lime-crm-standin-webhooks", **headers}
    return requests.post(f"{url}lime/events", data=body, headers=sent, timeout=30)


def topology(stack: Stack) -> Topology:
    return Topology.from_config(stack.config.broker)


def counts(stack: Stack) -> dict[str, int]:
    """Messages in every partition queue and the invalid queue, by queue."""
    names = [*topology(stack).partition_queues, topology(stack).invalid_queue]
    connection = pika.BlockingConnection(pika.URLParameters(stack.config.broker.url))
    try:
        channel = connection.channel()
        return {name: channel.queue_declare(name, passive=True).method.message_count for name in names}
    finally:
        connection.close()


def only(stack: Stack, queue: str, count: int = 1) -> dict[str, int]:
    """What :func:`counts` should say when ``queue`` holds ``count`` and the rest nothing."""
    expected = dict.fromkeys([*topology(stack).partition_queues, topology(stack).invalid_queue], 0)
    expected[queue] = count
    return expected


def nothing(stack: Stack) -> dict[str, int]:
    return dict.fromkeys([*topology(stack).partition_queues, topology(stack).invalid_queue], 0)


def partition_queue(stack: Stack, company: int = COMPANY) -> str:
    t = topology(stack)
    return t.partition_queue(t.partition_of(f"lime:company:{company}"))


def new_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def second_app(stack: Stack) -> Iterator[tuple[Flask, str]]:
    """Another receiver app of its own (own publisher, own Deliveries) on the same
    configuration, so the same deliveries_db, served on a port of its own."""
    app = create_app(stack.config)
    server = ServerThread(app).start()
    try:
        wait_for(lambda: app.extensions["publisher"].ready, 30, "the second receiver to reach RabbitMQ")
        yield app, server.url
    finally:
        server.stop()
        close_app(app)


# ----------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("scheme, secret", [("v2", SECRET), ("v1", SECRET), ("v2", PREVIOUS), ("v1", PREVIOUS)],
                         ids=["v2-current", "v1-current", "v2-previous-secret", "v1-previous-secret"])
def test_a_signed_update_is_202_and_queued_once_to_its_partition(stack: Stack, scheme: str, secret: str) -> None:
    body = event_body()
    delivery = new_id() if scheme == "v2" else hashlib.sha256(body).hexdigest()
    headers = v2(body, delivery, secret) if scheme == "v2" else v1(body, secret)
    assert counts(stack) == nothing(stack)

    response = send(stack.receiver_url, body, headers)

    assert response.status_code == 202, response.text
    assert response.json() == {"status": "queued", "delivery": delivery}
    queue = partition_queue(stack)
    assert counts(stack) == only(stack, queue)
    [(props, stored)] = take_all(stack, queue)
    assert stored == body
    assert props.headers[h.DIRECTION] == "to_bfus"
    assert props.headers[h.DELIVERY] == delivery
    assert props.message_id == delivery
    assert props.delivery_mode == 2 and props.content_type == "application/json"


def test_events_of_different_companies_go_to_their_own_partitions(stack: Stack) -> None:
    companies = list(range(1001, 1017))
    for company in companies:
        body = event_body(company)
        assert send(stack.receiver_url, body, v2(body, new_id())).status_code == 202
    expected = nothing(stack)
    for company in companies:
        expected[partition_queue(stack, company)] += 1
    assert len({queue for queue, count in expected.items() if count}) > 1  # the test spreads over partitions
    assert counts(stack) == expected
    for queue, count in expected.items():
        got = [json.loads(body)["body"]["id"] for _, body in take_all(stack, queue)] if count else []
        assert sorted(got) == sorted(c for c in companies if partition_queue(stack, c) == queue)


def test_a_delete_event_is_queued_like_an_update(stack: Stack) -> None:
    body = event_body(action="delete")
    assert send(stack.receiver_url, body, v2(body, new_id())).status_code == 202
    assert counts(stack) == only(stack, partition_queue(stack))


@pytest.mark.parametrize("signature, secret", [("v2", SECRET), ("v1", SECRET), ("v2", PREVIOUS)],
                         ids=["v2", "v1", "v2-previous-secret"])
def test_what_the_lime_stand_in_itself_delivers_is_queued(stack: Stack, signature: str, secret: str) -> None:
    """Lime's own sending path (sandbox/lime/webhooks.py), fired by an API write."""
    hooks = stack.lime.app.extensions["lime_webhooks"]
    api = {"X-API-Key": stack.lime.api_key}
    subscribed = requests.post(f"{stack.lime.api_url}subscription/", headers=api, timeout=10, json={
        "events": ["company.new", "company.update"], "target_url": f"{stack.receiver_url}lime/events",
        "secret": secret, "signature": signature})
    assert subscribed.status_code == 201, subscribed.text
    created = requests.post(f"{stack.lime.api_url}limeobject/company/", json={"name": "Acme AB"}, headers=api,
                            timeout=10)
    assert created.status_code == 201, created.text
    company = created.json()["_id"]
    wait_for(lambda: hooks.pending() == 0, 30, "the stand-in to deliver")
    assert hooks.stats["delivered"] == 1 and hooks.stats["failed_tries"] == 0
    queue = partition_queue(stack, company)
    assert counts(stack) == only(stack, queue)
    [(props, stored)] = take_all(stack, queue)
    assert json.loads(stored)["event"] == "company.new" and json.loads(stored)["body"]["id"] == company
    assert props.headers[h.DIRECTION] == "to_bfus"
    if signature == "v1":
        assert props.headers[h.DELIVERY] == hashlib.sha256(stored).hexdigest()
    else:
        uuid.UUID(props.headers[h.DELIVERY])  # the stand-in's delivery id


# ----------------------------------------------------------------------------- refused


Signing = Callable[[bytes], dict[str, str]]


def without(name: str, sign: Signing) -> Signing:
    return lambda body: {k: v for k, v in sign(body).items() if k != name}


# (how the delivery is signed, the body sent, what the 401 says); signed when the test
# runs, so that only the named fault makes it fail
REFUSALS = [
    pytest.param(lambda body: {}, None, "not signed", id="unsigned"),
    pytest.param(lambda body: v1(body, "not-the-secret"), None, "does not match", id="v1-wrong-secret"),
    pytest.param(lambda body: v2(body, new_id(), "not-the-secret"), None, "does not match", id="v2-wrong-secret"),
    pytest.param(v1, event_body(name="Acme AC"), "does not match", id="v1-body-changed"),
    pytest.param(lambda body: v2(body, new_id()), event_body(name="Acme AC"), "does not match",
                 id="v2-body-changed"),
    pytest.param(lambda body: v2(body, new_id(), stamp=int(time.time()) - 301), None, "more than 300 seconds",
                 id="v2-301s-old"),
    pytest.param(lambda body: v2(body, new_id(), PREVIOUS, stamp=int(time.time()) - 86_400), None,
                 "more than 300 seconds", id="v2-a-day-old-previous-secret"),
    pytest.param(lambda body: v2(body, new_id(), stamp=int(time.time()) + 3600), None, "more than 300 seconds",
                 id="v2-an-hour-ahead"),
    pytest.param(lambda body: {**v2(body, new_id()), "X-Lime-Delivery-Id": ""}, None, "X-Lime-Delivery-Id",
                 id="v2-without-delivery-id"),
    pytest.param(without("X-Lime-Delivery-Timestamp", lambda body: v2(body, new_id())), None,
                 "X-Lime-Delivery-Timestamp", id="v2-without-timestamp"),
    pytest.param(lambda body: {"X-Lime-Signature": "sha1=" + hashlib.sha1(body).hexdigest()}, None,
                 "Unknown signature scheme", id="unknown-scheme"),
    pytest.param(lambda body: {"Authorization": f"Bearer {SECRET}"}, None, "not signed", id="secret-as-bearer"),
]


@pytest.mark.parametrize("sign, sent, why", REFUSALS)
def test_a_delivery_not_signed_by_lime_is_401_and_queues_nothing(stack: Stack, sign: Signing, sent: bytes | None,
                                                                 why: str) -> None:
    body = event_body()
    assert counts(stack) == nothing(stack)
    response = send(stack.receiver_url, body if sent is None else sent, sign(body))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "unauthorized" and why in response.json()["message"]
    assert SECRET not in response.text and PREVIOUS not in response.text
    assert counts(stack) == nothing(stack)


def test_a_refused_v2_delivery_id_is_not_noted(stack: Stack) -> None:
    """A stale copy is refused; the id stays free, so a fresh copy of it is queued."""
    body, delivery = event_body(), new_id()
    assert send(stack.receiver_url, body, v2(body, delivery, stamp=int(time.time()) - 301)).status_code == 401
    assert send(stack.receiver_url, body, v2(body, delivery, "wrong")).status_code == 401
    assert not Deliveries(stack.config.receiver.deliveries_db, 600).seen(delivery)
    response = send(stack.receiver_url, body, v2(body, delivery))
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert counts(stack) == only(stack, partition_queue(stack))


def test_without_a_lime_secret_every_delivery_is_401(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack(partitions=4, config={"receiver": {"deliveries_db": str(tmp_path / "deliveries.sqlite")}})
    stack.start_receiver()
    assert stack.config.receiver.lime_secret == "" and stack.config.receiver.lime_previous_secret == ""
    body = event_body()
    signed = (v1(body, ""), v2(body, new_id(), ""), v1(body), v2(body, new_id()), v2(body, new_id(), PREVIOUS))
    for headers in ({}, *signed):
        response = send(stack.receiver_url, body, headers)
        assert response.status_code == 401, response.text
        assert "lime_secret is not set" in response.json()["message"]
    assert counts(stack) == nothing(stack)
    # The same receiver still takes BFUS's messages.
    from builders import message

    assert stack.post(message(1)).status_code == 202


# ----------------------------------------------------------------------------- replays


def test_a_replayed_v2_delivery_is_queued_once_and_answered_duplicate(stack: Stack) -> None:
    body, delivery = event_body(), new_id()
    first = send(stack.receiver_url, body, v2(body, delivery, stamp=int(time.time()) - 20))
    assert first.status_code == 202 and first.json() == {"status": "queued", "delivery": delivery}
    for _ in range(3):  # Lime's retries: the same id, signed again with a fresh time
        again = send(stack.receiver_url, body, v2(body, delivery))
        assert again.status_code == 200, again.text
        assert again.json() == {"status": "duplicate", "delivery": delivery}
    again = send(stack.receiver_url, body, v2(body, delivery, PREVIOUS))  # whichever secret signs it
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    queue = partition_queue(stack)
    assert counts(stack) == only(stack, queue)
    [(props, _)] = take_all(stack, queue)
    assert props.headers[h.DELIVERY] == delivery


def test_another_delivery_id_with_the_same_body_is_queued(stack: Stack) -> None:
    """Only the id makes a replay: two writes with equal bodies are two events."""
    body = event_body()
    for delivery in (new_id(), new_id()):
        assert send(stack.receiver_url, body, v2(body, delivery)).json()["status"] == "queued"
    assert counts(stack) == only(stack, partition_queue(stack), 2)


def test_v1_deliveries_cannot_be_told_apart_and_are_queued_each_time(stack: Stack) -> None:
    """v1 carries no id (signatures.py): a replay is queued again, the worker's reading
    of the current state makes it harmless."""
    body = event_body()
    for _ in range(2):
        response = send(stack.receiver_url, body, v1(body))
        assert response.status_code == 202 and response.json()["status"] == "queued"
    assert counts(stack) == only(stack, partition_queue(stack), 2)


def test_a_replay_reaching_another_receiver_app_is_a_duplicate(stack: Stack, second_app: tuple[Flask, str]) -> None:
    app, other_url = second_app
    assert app.extensions is not stack.receiver_app.extensions
    body = event_body()
    one, two = new_id(), new_id()
    assert send(stack.receiver_url, body, v2(body, one)).json()["status"] == "queued"
    assert send(other_url, body, v2(body, two)).json()["status"] == "queued"
    for url, delivery in ((other_url, one), (stack.receiver_url, two)):
        again = send(url, body, v2(body, delivery))
        assert again.status_code == 200 and again.json() == {"status": "duplicate", "delivery": delivery}
    # Each app has a Deliveries of its own, both on the one file.
    mine, theirs = stack.receiver_app.extensions["deliveries"], app.extensions["deliveries"]
    assert mine is not theirs and mine.path == theirs.path == stack.config.receiver.deliveries_db
    assert counts(stack) == only(stack, partition_queue(stack), 2)


def test_a_replay_reaching_another_process_is_a_duplicate(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """``bfus-lime receiver`` (gunicorn) in a process of its own and a receiver app in
    this one, sharing receiver.deliveries_db."""
    stack = make_stack(partitions=4, config=lime_config(tmp_path))
    child = stack.spawn_receiver(processes=1, threads=2)
    app = create_app(stack.config)
    server = ServerThread(app).start()
    try:
        wait_for(lambda: app.extensions["publisher"].ready, 30, "the in-process receiver to reach RabbitMQ")
        body = event_body()
        one, two = new_id(), new_id()
        assert send(stack.receiver_url, body, v2(body, one)).json()["status"] == "queued"  # the child process
        assert send(server.url, body, v2(body, two)).json()["status"] == "queued"  # this process
        for url, delivery in ((server.url, one), (stack.receiver_url, two)):
            again = send(url, body, v2(body, delivery))
            assert again.status_code == 200 and again.json() == {"status": "duplicate", "delivery": delivery}
        assert counts(stack) == only(stack, partition_queue(stack), 2)
        assert "lime_event_duplicate" in child.log_text()
    finally:
        server.stop()
        close_app(app)


# ----------------------------------------------------------------------------- not a Lime event


@pytest.mark.parametrize("body, reason", [
    pytest.param(b'{"event": "company.update"}', "invalid_event", id="no-body"),
    pytest.param(b'{"event": "company.update", "body": {"limetype": "company"}}', "invalid_event", id="no-id"),
    pytest.param(b'{"event": "company.update", "body": {"id": 0, "limetype": "company"}}', "invalid_event",
                 id="id-0"),
    pytest.param(b'{"event": "company.update", "body": {"id": 5, "limetype": "person"}}', "invalid_event",
                 id="limetype-mismatch"),
    pytest.param(b'{"event": "company.frobnicate", "body": {"id": 5, "limetype": "company"}}', "invalid_event",
                 id="unknown-action"),
    pytest.param(b'{"event": "webhook.msg_dropped", "body": {"subscription": 1, "event": "company.update"}}',
                 "invalid_event", id="msg-dropped"),
    pytest.param(b"[1, 2]", "invalid_json", id="not-an-object"),
    pytest.param(b'{"event": ', "invalid_json", id="not-json"),
])
@pytest.mark.parametrize("scheme", ["v2", "v1"])
def test_a_signed_body_that_is_not_a_lime_event_is_400_and_kept(stack: Stack, body: bytes, reason: str,
                                                                scheme: str) -> None:
    delivery = new_id() if scheme == "v2" else hashlib.sha256(body).hexdigest()
    response = send(stack.receiver_url, body, v2(body, delivery) if scheme == "v2" else v1(body))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == reason and response.json()["message"]
    invalid = topology(stack).invalid_queue
    assert counts(stack) == only(stack, invalid)
    [(props, stored)] = take_all(stack, invalid)
    assert stored == body
    assert props.headers[h.DIRECTION] == "to_bfus"
    assert props.headers[h.DELIVERY] == delivery
    assert props.headers[h.REASON] == reason
    assert props.headers[h.STATUS] == 400
    assert props.headers[h.ERROR] == response.json()["message"]


def test_an_unsigned_body_that_is_not_a_lime_event_is_401_and_not_kept(stack: Stack) -> None:
    """The signature is checked first: what anyone can send is not stored."""
    response = send(stack.receiver_url, b'{"event": "company.update"}', {})
    assert response.status_code == 401
    assert counts(stack) == nothing(stack)


# ----------------------------------------------------------------------------- broker unavailable


def test_a_delivery_the_broker_did_not_confirm_is_503_and_its_retry_is_queued(
        make_stack: Callable[..., Stack], amqp_url: str, tmp_path: Path) -> None:
    broker = urlsplit(amqp_url)
    proxy = FreezableProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    try:
        config = lime_config(tmp_path)
        config["broker"] = {"url": amqp_url.replace(f":{broker.port}/", f":{proxy.port}/"), "confirm_timeout": 0.5}
        stack = make_stack(partitions=2, config=config)
        stack.start_receiver()
        body, delivery = event_body(), new_id()
        proxy.freeze()
        response = send(stack.receiver_url, body, v2(body, delivery))
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "unavailable" and response.headers["Retry-After"] == "1"
        assert not stack.receiver_app.extensions["deliveries"].seen(delivery)
        assert not Deliveries(stack.config.receiver.deliveries_db, 600).seen(delivery)
        proxy.thaw()
        wait_for(lambda: stack.receiver_app.extensions["publisher"].ready, 30, "the receiver to be ready")
        retry = send(stack.receiver_url, body, v2(body, delivery))  # Lime's retry, signed anew
        assert retry.status_code == 202, retry.text
        assert retry.json() == {"status": "queued", "delivery": delivery}
        assert Deliveries(stack.config.receiver.deliveries_db, 600).seen(delivery)
        assert send(stack.receiver_url, body, v2(body, delivery)).json()["status"] == "duplicate"
        # At least once: the unconfirmed copy may have reached the queue after all.
        queue = partition_queue(stack)
        held = counts(stack)
        assert held[queue] in (1, 2) and sum(held.values()) == held[queue]
        got = take_all(stack, queue)
        assert {props.headers[h.DELIVERY] for props, _ in got} == {delivery}
        assert all(stored == body for _, stored in got)
    finally:
        proxy.close()
