"""Serving the receiver: gunicorn manages the processes (N of them, replaced when one
dies), and inside each process waitress serves HTTP.

Why waitress inside gunicorn rather than gunicorn's own threads: waitress reads a
whole request, headers and body, on its event loop before it gives the request to a
thread, so a client that sends its headers and then stalls (or drips its body) holds
a socket, not one of the few threads; and it drops a connection that has been
silent for ``receiver.read_timeout`` seconds. A chunked body is counted like one with
Content-Length, so the size limit answers 413 for both.

Each process builds its own app, and so its own RabbitMQ connection, after the fork.
A process whose publisher has not been ready for ``receiver.unready_exit_after``
seconds stops itself, and gunicorn starts a fresh one."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.base import Worker
from waitress import create_server, wasyncore
from waitress.server import BaseWSGIServer

from shared.config import Config, load_config
from shared.logs import get_logger
from shared.metrics import process_exited, use_multiprocess_dir

log = get_logger(component="receiver")


def waitress_options(config: Config, threads: int) -> dict[str, Any]:
    """How waitress serves the receiver (in every shape: gunicorn processes, tests)."""
    receiver = config.receiver
    return {
        "threads": threads,
        "channel_timeout": receiver.read_timeout,
        "cleanup_interval": max(0.5, min(receiver.read_timeout / 2, 30)),
        # Bodies up to this size reach the app, which answers 413 over max_body_bytes with
        # an error object; waitress answers bigger ones 413 itself without reading them.
        "max_request_body_size": 4 * receiver.max_body_bytes,
        "max_request_header_size": 64 * 1024,
        "connection_limit": 1000,
        "asyncore_use_poll": True,  # no select() limit on file descriptors
        "ident": "bfus-lime",
        "expose_tracebacks": False,
    }


class ReceiverWorker(Worker):
    """A gunicorn worker that serves with waitress (see the module's text)."""

    def run(self) -> None:
        app = self.wsgi
        config: Config = app.config["BFUS_LIME"]
        socket_map: dict[int, Any] = {}
        create_server(app, map=socket_map, sockets=[s.sock for s in self.sockets],
                      **waitress_options(config, self.cfg.threads))
        listeners = [d for d in socket_map.values() if isinstance(d, BaseWSGIServer)]
        exit_after = config.receiver.unready_exit_after
        publisher = app.extensions["publisher"]
        while self.alive:
            self.notify()
            wasyncore.loop(timeout=1.0, map=socket_map, use_poll=True, count=1)
            if self.ppid != os.getppid():
                break
            if exit_after and publisher.unready_for() > exit_after:
                log.error("receiver_process_exiting", reason="cannot publish", seconds=round(publisher.unready_for()))
                break
        self._drain(socket_map, listeners)

    def _drain(self, socket_map: dict[int, Any], listeners: list[BaseWSGIServer]) -> None:
        """Stop accepting, finish the requests already read, then close."""
        for listener in listeners:
            listener.accepting = False
            listener.del_channel()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < deadline and any(
            getattr(c, "requests", None) or getattr(c, "total_outbufs_len", 0) for c in list(socket_map.values())
        ):
            self.notify()
            wasyncore.loop(timeout=0.2, map=socket_map, use_poll=True, count=1)
        if listeners:
            listeners[0].task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(socket_map)
        from receiver.app import close_app

        close_app(self.wsgi)


class ReceiverServer(BaseApplication):
    def __init__(self, config_path: str | None, options: dict[str, Any]):
        self.config_path = config_path
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from receiver.app import create_app
        from shared.logs import configure_logging

        config = load_config(self.config_path, need=("receiver.api_key",))
        configure_logging(config.log.level, config.log.format, extra={"pid": os.getpid()})
        return create_app(config)


def metrics_folder(config: Config) -> tuple[Path, bool]:
    """Where the processes keep their metric values (receiver.metrics_dir, else a fresh
    temporary folder), emptied; and whether it was made here (removed at the end)."""
    if not config.receiver.metrics_dir:
        return Path(tempfile.mkdtemp(prefix="bfus-lime-metrics-")), True
    folder = Path(config.receiver.metrics_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db"):  # an earlier run's: its counts would be added again
        old.unlink()
    return folder, False


def _child_exit(_server: Any, worker: Any) -> None:
    process_exited(worker.pid)


def serve(config: Config, config_path: str | None, host: str | None = None, port: int | None = None) -> None:
    folder, made = metrics_folder(config) if config.receiver.metrics else (None, False)
    if folder is not None:
        use_multiprocess_dir(folder)  # before the fork: every process counts into it
    options = {
        "bind": f"{host or config.receiver.host}:{port or config.receiver.port}",
        "workers": config.receiver.processes,
        "threads": config.receiver.threads,
        "worker_class": "receiver.server.ReceiverWorker",
        "timeout": 60,
        "graceful_timeout": 15,
        "accesslog": None,  # access logs would carry nothing we need and cost a line per message
        "loglevel": "warning",
        "proc_name": "bfus-lime-receiver",
        "child_exit": _child_exit,
    }
    master = os.getpid()
    try:
        ReceiverServer(config_path, options).run()
    finally:
        # A gunicorn process leaves through here too (its exit unwinds the forked stack):
        # only the master, at the very end, removes the folder.
        if made and folder is not None and os.getpid() == master:
            shutil.rmtree(folder, ignore_errors=True)
