"""JSON error answers: ``{"error": code, "message": text}`` (plus ``fields`` for 422)."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> Response:
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response
