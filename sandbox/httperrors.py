"""Both stand-ins answer every error as JSON ``{"error": code, "message": text}``, the
way the services they stand in for do: unknown paths and methods included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request


def answer_http_errors_in_json(app: Flask, error: Callable[[int, str, str], Response]) -> None:
    """404, 405 and 413 (past MAX_CONTENT_LENGTH) through ``error(status, code, message)``,
    the app's own error answer."""

    @app.errorhandler(404)
    def not_found(_err: Any) -> Response:
        return error(404, "not_found", f"No such resource: {request.path}")

    @app.errorhandler(405)
    def not_allowed(_err: Any) -> Response:
        return error(405, "method_not_allowed", f"{request.method} is not allowed on {request.path}")

    @app.errorhandler(413)
    def too_large(_err: Any) -> Response:
        return error(413, "too_large", f"The body is larger than {app.config['MAX_CONTENT_LENGTH']} bytes.")
