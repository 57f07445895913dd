"""Serve a WSGI app over real HTTP from a background thread (tests, benchmarks and
the stand-ins' commands), with waitress: HTTP/1.1 keep-alive and a fixed pool of
threads, so clients reuse their connections as they would with a real Lime."""

from __future__ import annotations

import logging
import threading
from typing import Any

import waitress
from waitress import wasyncore

# Quiet: "task queue depth" notes under load, and the noise of connections cut by stop().
logging.getLogger("waitress").setLevel(logging.CRITICAL)


class ServerThread:
    """``stop()`` drops every connection and closes the socket (new connections are
    refused); ``start()`` again listens on the same port."""

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
