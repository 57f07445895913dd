"""Serve an app over real HTTP from a background thread (tests, benchmarks and the
stand-ins' commands), with HTTP/1.1 keep-alive, so clients reuse their connections as
they would with a real Lime:

- ``ServerThread``: a WSGI app, with waitress and a fixed pool of threads;
- ``LoopServerThread``: an ASGI app, with uvicorn on an event loop (uvloop) of its own
  (the Lime stand-in: sandbox/lime/front.py).

Both listen before ``start()`` returns, and ``stop()`` drops every connection and closes
the socket (new connections are refused); ``start()`` again listens on the same port."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
from typing import Any

import uvicorn
import uvloop
import waitress
from waitress import wasyncore
from waitress.channel import HTTPChannel

# Quiet: "task queue depth" notes under load, and the noise of connections cut by stop().
logging.getLogger("waitress").setLevel(logging.CRITICAL)
# Quiet too: uvicorn's requests cancelled by stop() (an outage in a test).
logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)


class QuietChannel(HTTPChannel):
    """waitress's connection, without its busy loop while a request answers.

    A request's thread appends its answer to the connection's buffer and sends it
    itself, both under the buffer's lock. waitress's main loop sees the buffer filled
    in between, finds the lock taken and asks again at once, holding the interpreter
    lock while the request's thread waits for it: with two requests at a time, several
    hundred turns per request and several ms of CPU (tests/unit/test_serve.py). Here the
    loop leaves a connection alone while its request writes, unless the buffer has
    reached its high watermark (the request then waits for the loop to send it below
    that), and is woken when the request leaves something unsent."""

    _writing = False

    def write_soon(self, data: bytes) -> int:
        self._writing = True
        try:
            return super().write_soon(data)
        finally:
            self._writing = False
            if self.total_outbufs_len:
                self.server.pull_trigger()

    def writable(self) -> bool:
        if self._writing and self.total_outbufs_len < self.adj.outbuf_high_watermark \
                and not (self.will_close or self.close_when_flushed):
            return False
        return bool(super().writable())


class ServerThread:
    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, threads: int = 32,
                 options: dict[str, Any] | None = None):
        self.app = app
        self.host = host
        self.port = port
        self.options = {"threads": threads, "ident": "bfus-lime", "connection_limit": 500, "asyncore_use_poll": True,
                        **(options or {})}
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> ServerThread:
        if self._server is not None:
            return self
        self._server = waitress.create_server(self.app, host=self.host, port=self.port, **self.options)
        self._server.channel_class = QuietChannel
        self.port = self._server.effective_port
        self._thread = threading.Thread(target=self._server.run, daemon=True, name=f"http:{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            wasyncore.close_all(server._map)  # the socket and every connection: clients see it gone
            server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        self._thread = None  # its loop ends within a second, once it sees nothing left to serve

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class LoopServerThread:
    """An ASGI app served by uvicorn (httptools) on a uvloop loop in a thread of its own."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> LoopServerThread:
        if self._server is not None:
            return self
        family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
        # Listening from here on: connections wait in the backlog until the loop accepts them.
        sock = socket.create_server((self.host, self.port), family=family, backlog=2048)
        self.port = sock.getsockname()[1]
        self._socket = sock
        config = uvicorn.Config(self.app, http="httptools", lifespan="off", log_config=None, access_log=False,
                                proxy_headers=False, server_header=False, headers=[("Server", "bfus-lime")],
                                timeout_keep_alive=120)
        self._server = uvicorn.Server(config)
        self._running.clear()
        self._thread = threading.Thread(target=uvloop.run, args=(self._serve(self._server, sock),), daemon=True,
                                        name=f"http:{self.port}")
        self._thread.start()
        return self

    async def _serve(self, server: uvicorn.Server, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._running.set()
        await server.serve(sockets=[sock])

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._running.wait(10)
        assert self._loop is not None
        dropped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._loop.call_soon_threadsafe(_drop, server, self._socket, dropped)
        dropped.result(10)
        self._thread = None  # its loop ends within a few tenths of a second: uvicorn's shutdown

    def __enter__(self) -> LoopServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _drop(server: uvicorn.Server, sock: socket.socket | None, done: concurrent.futures.Future[None]) -> None:
    """In the loop: close the socket and every connection, and let uvicorn end."""
    try:
        if sock is not None:
            sock.close()
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
        server.should_exit = server.force_exit = True
        done.set_result(None)
    except BaseException as err:  # the caller waits on it
        done.set_exception(err)
