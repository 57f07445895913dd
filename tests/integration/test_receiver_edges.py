"""Bodies and clients the contract never imagined (issue 9): every body ends as 202 or
a kept 4xx, and no single message or client breaks a receiver process."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from builders import message, take_all
from sandbox.stack import RECEIVER_KEY, Stack, wait_for
from sandbox.tcpproxy import FreezableProxy


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack(partitions=4, config={"receiver": {"max_body_bytes": 200_000}})
    stack.start_receiver()
    return stack


def kept(stack: Stack) -> list[tuple[Any, bytes]]:
    return take_all(stack, stack.receiver_app.extensions["topology"].invalid_queue)


def envelope_text(data: str, **envelope: str) -> bytes:
    """A message written as JSON text, for what json.dumps cannot write."""
    fields = {"id": "8006", "timestamp": '"2026-11-24T09:15:02+01:00"', "objecttype": '"customer"',
              "operation": '"updated"', "key": '"100234"', "customerno": '"100234"', "data": data, **envelope}
    return ("{" + ", ".join(f'"{name.rstrip("_")}": {value}' for name, value in fields.items()) + "}").encode()


def test_an_id_beyond_64_bits_is_422_kept_and_the_process_keeps_queueing(stack: Stack) -> None:
    """Today's code: 503 'int too large to convert', then every later message 503."""
    response = stack.post(message(10**40))
    assert response.status_code == 422 and set(response.json()["fields"]) == {"id"}
    answers = [stack.post(message(100 + i)).status_code for i in range(20)]
    assert answers == [202] * 20
    [(props, body)] = kept(stack)
    assert json.loads(body)["id"] == 10**40
    assert props.headers["x-bfus-reason"] == "invalid_envelope"
    assert "id: Must be an integer from 1 to 9223372036854775807" in props.headers["x-bfus-error"]


@pytest.mark.parametrize("body, status, error", [
    pytest.param(b"[" * 100_000, 400, "invalid_json", id="100000-open-brackets"),
    pytest.param(envelope_text("[" * 5000 + "]" * 5000), 400, "invalid_json", id="5000-levels-in-data"),
    pytest.param(envelope_text('{"customerno": "1", "zipcode": NaN}'), 400, "invalid_json", id="NaN"),
    pytest.param(envelope_text('{"customerno": "1", "zipcode": -Infinity}'), 400, "invalid_json", id="Infinity"),
    pytest.param(envelope_text('{"customerno": "1", "zipcode": 1e999}'), 400, "invalid_json", id="float-overflow"),
    pytest.param(envelope_text('{"customerno": "1", "n": ' + "9" * 5000 + "}"), 400, "invalid_json",
                 id="5000-digit-integer"),
    pytest.param(b'{"id": 1, "key": "Malm\xf6"}', 400, "invalid_json", id="latin-1-bytes"),
    pytest.param(envelope_text('{"customerno": "1"}', id_='8006, "id": 8007'), 422, "invalid_envelope", id="id-twice"),
    pytest.param(envelope_text('{"customerno": "1"}', operation='"updated", "operation": "deleted"'), 422,
                 "invalid_envelope", id="operation-twice"),
    pytest.param(envelope_text('{"customerno": "1", "name": "\\ud800"}'), 422, "invalid_envelope",
                 id="lone-surrogate"),
    pytest.param(envelope_text('{"customerno": "1", "name": "a\\u0000b"}'), 422, "invalid_envelope", id="NUL"),
    pytest.param(envelope_text('{"customerno": "1"}', objecttype='"' + "a" * 300 + '"'), 422, "invalid_envelope",
                 id="objecttype-300-chars"),
])
def test_unusual_bodies_get_a_4xx_and_are_kept_whole(stack: Stack, body: bytes, status: int, error: str) -> None:
    response = stack.post(None, raw=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and response.json()["message"]
    [(props, stored)] = kept(stack)
    assert stored == body and props.headers["x-bfus-reason"] == error
    assert stack.post(message(9)).status_code == 202


def test_names_given_twice_are_named_in_the_answer(stack: Stack) -> None:
    response = stack.post(None, raw=envelope_text('{"customerno": "1"}', id_='8006, "id": 8007'))
    assert response.json()["fields"]["id"] == ["Given more than once; the message is ambiguous."]


def test_a_charset_other_than_utf8_is_415(stack: Stack) -> None:
    response = stack.post(message(5), headers={"Content-Type": "application/json; charset=iso-8859-1"})
    assert response.status_code == 415 and "UTF-8" in response.json()["message"]
    assert stack.post(message(6), headers={"Content-Type": "application/json; charset=UTF-8"}).status_code == 202


@pytest.mark.parametrize("written, queued_as", [("12.0", 12), ("1.2e1", 12), ("9007199254740991.0", 2**53 - 1)])
def test_an_id_written_with_a_zero_fraction_is_that_integer(stack: Stack, written: str, queued_as: int) -> None:
    """Found by schemathesis (issue 16): 12.0 is the integer 12 for JSON Schema and RFC
    8259, and was 422 "Not a valid integer"."""
    body = envelope_text('{"customerno": "1"}', id=written)
    response = stack.post(None, raw=body)
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "queued", "id": queued_as}
    topology = stack.receiver_app.extensions["topology"]
    [(props, stored)] = take_all(stack, topology.partition_queue(topology.partition_of("100234")))
    assert stored == body and props.message_id == str(queued_as) and props.headers["x-bfus-id"] == queued_as


@pytest.mark.parametrize("written", ["12.5", "9007199254740992.0", "1e300", "true", '"12"'])
def test_an_id_that_is_no_exact_integer_is_still_422(stack: Stack, written: str) -> None:
    """From 2^53 on a float no longer names one integer (9007199254740993.0 reads as
    ...992), so such an id is refused rather than changed."""
    response = stack.post(None, raw=envelope_text('{"customerno": "1"}', id=written))
    assert response.status_code == 422 and set(response.json()["fields"]) == {"id"}
    assert len(kept(stack)) == 1


@pytest.mark.parametrize("method, path, allowed", [
    ("DELETE", "bfus/messages", {"POST", "OPTIONS"}),
    ("PUT", "lime/events", {"POST", "OPTIONS"}),
    ("POST", "healthz", {"GET", "HEAD", "OPTIONS"}),
])
def test_a_method_the_address_does_not_take_is_405_naming_those_it_takes(stack: Stack, method: str, path: str,
                                                                        allowed: set[str]) -> None:
    """Found by schemathesis (issue 16): the JSON 405 came without the Allow header RFC
    9110 requires."""
    response = requests.request(method, f"{stack.receiver_url}{path}", headers={"X-API-Key": RECEIVER_KEY},
                                json=message(5), timeout=10)
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed
    assert kept(stack) == []


def test_readiness_fails_after_confirm_timeouts_in_a_row_and_returns(make_stack: Callable[..., Stack],
                                                                     amqp_url: str) -> None:
    """Today's code: /readyz says ready while every publish times out."""
    from shared.publisher import TIMEOUTS_BEFORE_RESET

    broker = urlsplit(amqp_url)
    proxy = FreezableProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    try:
        stack = make_stack(partitions=2, config={"broker": {"url": amqp_url.replace(
            f":{broker.port}/", f":{proxy.port}/"), "confirm_timeout": 0.5}})
        stack.start_receiver()
        assert stack.post(message(1)).status_code == 202
        proxy.freeze()
        for i in range(TIMEOUTS_BEFORE_RESET):
            assert requests.get(f"{stack.receiver_url}readyz", timeout=5).status_code == 200
            assert stack.post(message(2 + i)).status_code == 503
        ready = requests.get(f"{stack.receiver_url}readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["broker"] == "disconnected"
        started = time.monotonic()
        assert stack.post(message(9)).status_code == 503
        assert time.monotonic() - started < 0.5  # refused at once, not after another timeout
        proxy.thaw()
        wait_for(lambda: requests.get(f"{stack.receiver_url}readyz", timeout=5).status_code == 200, 60, "ready again")
        assert stack.post(message(10)).status_code == 202
    finally:
        proxy.close()


def test_admin_credentials_and_form_tokens_beyond_ascii_are_refused_not_500(make_stack: Callable[..., Stack]) -> None:
    """Found by schemathesis (issue 16): hmac.compare_digest raises TypeError for a str
    that is not ASCII, so a basic-auth name or password or a form's CSRF token with
    "é" in it was a 500 instead of 401 / 403."""
    stack = make_stack(partitions=2, config={"admin": {"user": "ops", "password": "s3cret"}})
    stack.start_receiver()
    admin = f"{stack.receiver_url}admin/"
    for user, password in (("opé", "s3cret"), ("ops", "s3crét"), ("ops", "\u00a0\U0001f600")):
        response = requests.get(admin, auth=(user.encode(), password.encode()), timeout=10)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic ")
    response = requests.post(f"{admin}failed/1/requeue", data={"csrf": "x\t\u0098é"}, auth=("ops", "s3cret"),
                             allow_redirects=False, timeout=10)
    assert response.status_code == 403 and response.json()["error"] == "error"


# ----------------------------------------------------------------------------- the production server


@pytest.fixture
def served(make_stack: Callable[..., Stack]) -> Iterator[Stack]:
    """The receiver as `bfus-lime receiver` runs it: 2 gunicorn processes x 2 threads."""
    stack = make_stack(partitions=4, config={"receiver": {"max_body_bytes": 8192, "read_timeout": 2.0}})
    stack.spawn_receiver(processes=2, threads=2)
    yield stack


def post(stack: Stack, body: Any, timeout: float = 5) -> requests.Response:
    return requests.post(f"{stack.receiver_url}bfus/messages", data=body, timeout=timeout,
                         headers={"Content-Type": "application/json", "X-API-Key": RECEIVER_KEY})


def chunks(body: bytes, size: int = 1000) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_a_chunked_body_over_the_limit_is_413_like_one_with_a_length(served: Stack) -> None:
    """Today's code: cut at the limit and answered 400 invalid_json."""
    big = json.dumps(message(1, data={"customerno": "1", "name": "x" * 20_000})).encode()
    for body in (big, chunks(big)):
        response = post(served, body)
        assert response.status_code == 413, response.text
        assert response.json()["error"] == "payload_too_large"
    assert post(served, chunks(json.dumps(message(2)).encode())).status_code == 202


def stalled_clients(stack: Stack, count: int) -> list[socket.socket]:
    """Half send their headers and part of a body, half part of their headers; then
    all stall."""
    port = urlsplit(stack.receiver_url).port
    clients = []
    for i in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            client.sendall(b"POST /bfus/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"X-API-Key: " + RECEIVER_KEY.encode() + b"\r\nContent-Length: 500\r\n\r\n{\"id\": 1")
        else:
            client.sendall(b"POST /bfus/messages HTTP/1.1\r\nHost: x\r\nContent-Ty")
        clients.append(client)
    return clients


def test_stalled_clients_cannot_starve_the_receiver(served: Stack) -> None:
    """Today's code (gunicorn threads): with more stalled clients than threads, posts
    and /healthz time out."""
    clients = stalled_clients(served, 12)  # 2 processes x 2 threads = 4 threads
    try:
        for i in range(10):
            started = time.monotonic()
            assert post(served, json.dumps(message(100 + i)).encode(), timeout=1).status_code == 202
            assert requests.get(f"{served.receiver_url}healthz", timeout=1).status_code == 200
            assert time.monotonic() - started < 1
        # receiver.read_timeout is 2 s: a silent client is dropped soon after, so a body
        # sent a minute after its headers is never taken.
        for client in clients:
            client.settimeout(10)
            try:
                assert client.recv(100) == b""
            except ConnectionResetError:
                pass
    finally:
        for client in clients:
            client.close()


def test_a_process_that_cannot_publish_is_replaced(make_stack: Callable[..., Stack], amqp_url: str) -> None:
    broker = urlsplit(amqp_url)
    proxy = FreezableProxy(broker.hostname or "127.0.0.1", broker.port or 5672)
    try:
        stack = make_stack(partitions=2, config={
            "broker": {"url": amqp_url.replace(f":{broker.port}/", f":{proxy.port}/"), "confirm_timeout": 0.5},
            "receiver": {"unready_exit_after": 2.0}})
        receiver = stack.spawn_receiver(processes=1, threads=2)
        [first] = receiver.processes()
        proxy.freeze()
        answers = [post(stack, json.dumps(message(1 + i)).encode()).status_code for i in range(3)]
        assert answers == [503, 503, 503]
        assert requests.get(f"{stack.receiver_url}readyz", timeout=5).status_code == 503
        wait_for(lambda: receiver.processes() - {first}, 30, "gunicorn to replace the process")
        assert "receiver_process_exiting" in receiver.log_text()
        proxy.thaw()
        receiver.wait_ready()
        assert post(stack, json.dumps(message(10)).encode()).status_code == 202
    finally:
        proxy.close()
