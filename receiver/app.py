"""The receiver's application factory. Under gunicorn each process calls it after the
fork, so each process owns its own RabbitMQ connection (pika is not fork- or
thread-safe)."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from deadletters import admin
from receiver import health, jump, lime_events, messages, metrics, openapi
from receiver.errors import error_response
from shared.config import Config, load_config
from shared.limeevents import customer_keys
from shared.publisher import ConfirmedPublisher
from shared.topology import Topology, declare_topology


def create_app(config: Config | None = None, publisher: ConfirmedPublisher | None = None) -> Flask:
    config = config or load_config(need=("receiver.api_key",))
    app = Flask("receiver", static_folder=None)  # no static files: no /static route
    app.config["BFUS_LIME"] = config
    app.config["MAX_CONTENT_LENGTH"] = config.receiver.max_body_bytes
    app.extensions["topology"] = Topology.from_config(config.broker)
    app.extensions["customer_keys"] = customer_keys(config.mapping)
    if publisher is None:
        publisher = ConfirmedPublisher(config.broker, "receiver", on_connect=lambda: declare_topology(config.broker))
        publisher.start()
    app.extensions["publisher"] = publisher
    app.register_blueprint(messages.bp)
    app.register_blueprint(lime_events.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(jump.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openapi.bp)
    if config.receiver.metrics:
        metrics.instrument(app)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        code = {413: "payload_too_large", 404: "not_found", 405: "method_not_allowed"}.get(err.code or 500, "error")
        message = err.description or err.name
        if err.code == 413:
            message = f"The message is larger than the limit of {config.receiver.max_body_bytes} bytes."
        allow = dict(err.get_headers()).get("Allow")  # a 405 names the methods the address takes (RFC 9110)
        return error_response(err.code or 500, code, message, {"Allow": allow} if allow else None)

    return app


def close_app(app: Flask) -> None:
    publisher: Any = app.extensions.get("publisher")
    if publisher is not None:
        publisher.stop()
