"""Liveness and readiness: ready means connected to RabbitMQ and able to queue."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    ready = current_app.extensions["publisher"].ready
    response = jsonify({"status": "ready" if ready else "unavailable",
                        "broker": "connected" if ready else "disconnected"})
    response.status_code = 200 if ready else 503
    return response
