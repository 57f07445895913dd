"""sandbox/serve.py: the stand-ins' HTTP servers (waitress in a thread, uvicorn on a
loop in a thread)."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from waitress.adjustments import Adjustments

from sandbox.serve import LoopServerThread, QuietChannel, ServerThread

CHUNKS = 20  # an answer written in this many pieces: as many times the buffer fills while a request writes
CLIENTS, REQUESTS = 4, 50  # keep-alive connections at once, requests on each


def chunked(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(CHUNKS * 1024))])
    for _ in range(CHUNKS):
        yield b"x" * 1024


def big(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(8 * 1024 * 1024))])
    for _ in range(4):
        yield b"y" * (2 * 1024 * 1024)


def fetch_all(port: int, requests: int, bodies: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(requests):
        conn.request("GET", "/")
        bodies.append(len(conn.getresponse().read()))
    conn.close()


def serve_concurrently(app: Any, clients: int, requests: int, **options: Any) -> list[int]:
    bodies: list[int] = []
    with ServerThread(app, options=options) as server:
        threads = [threading.Thread(target=fetch_all, args=(server.port, requests, bodies))
                   for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    return bodies


def test_the_loop_leaves_a_connection_alone_while_its_request_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """waitress's own channel sends from its main loop whenever the buffer holds
    something, and spins (hundreds of turns per request, found taken by the request's
    thread) while requests answer at once; here it turns about once per request."""
    turns = 0
    handle_write = QuietChannel.handle_write

    def counted(self: QuietChannel) -> None:
        nonlocal turns
        turns += 1
        handle_write(self)

    monkeypatch.setattr(QuietChannel, "handle_write", counted)
    bodies = serve_concurrently(chunked, CLIENTS, REQUESTS)
    assert bodies == [CHUNKS * 1024] * (CLIENTS * REQUESTS)
    assert turns <= 2 * CLIENTS * REQUESTS


def test_an_answer_larger_than_the_buffer_is_sent_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the high watermark the request waits for the loop to send: the loop must
    not leave that connection alone then (the answer would never end)."""
    small = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)]  # the request cannot send it all itself
    monkeypatch.setattr(Adjustments, "socket_options", [*Adjustments.socket_options, *small])
    bodies = serve_concurrently(big, 2, 3, outbuf_high_watermark=64 * 1024)
    assert bodies == [8 * 1024 * 1024] * 6


class Held:
    """An ASGI app: ``/`` answers at once, ``/held`` only when released (never, here)."""

    def __init__(self) -> None:
        self.arrived = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/held":
            self.arrived.set()
            await asyncio.Event().wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def test_the_loop_server_drops_every_connection_when_stopped_and_serves_again_on_its_port() -> None:
    app = Held()
    server = LoopServerThread(app).start()
    port = server.port
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    idle.request("GET", "/")
    assert idle.getresponse().read() == b"ok"  # kept alive
    outcome: list[BaseException | bytes] = []

    def wait_held() -> None:
        held = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            held.request("GET", "/held")
            outcome.append(held.getresponse().read())
        except (OSError, http.client.HTTPException) as err:
            outcome.append(err)

    waiting = threading.Thread(target=wait_held)
    waiting.start()
    assert app.arrived.wait(10)
    server.stop()
    waiting.join(10)
    assert not waiting.is_alive() and isinstance(outcome[0], (OSError, http.client.HTTPException))  # cut, not hung
    with pytest.raises((OSError, http.client.HTTPException)):
        idle.request("GET", "/")
        idle.getresponse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=10)
    with server.start():
        assert server.port == port
        again = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        again.request("GET", "/")
        assert again.getresponse().read() == b"ok"
