"""Serving the receiver with gunicorn (threads in each of N processes). Each process
builds its own app, and so its own RabbitMQ connection, after the fork."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from shared.config import Config, load_config


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
        configure_logging(config.log.level, config.log.format)
        return create_app(config)


def serve(config: Config, config_path: str | None, host: str | None = None, port: int | None = None) -> None:
    options = {
        "bind": f"{host or config.receiver.host}:{port or config.receiver.port}",
        "workers": config.receiver.processes,
        "threads": config.receiver.threads,
        "worker_class": "gthread",
        "timeout": 60,
        "graceful_timeout": 15,
        "accesslog": None,  # access logs would carry nothing we need and cost a line per message
        "loglevel": "warning",
        "proc_name": "bfus-lime-receiver",
    }
    ReceiverServer(config_path, options).run()
