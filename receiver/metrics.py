"""The receiver's Prometheus metrics and ``GET /metrics`` (receiver.metrics, on by
default). Under gunicorn every process counts into the multiprocess folder the
master chose (receiver/server.py), and whichever process answers ``/metrics`` shows
the sum over all of them (shared/metrics.py)."""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import Counter, Histogram

from shared.metrics import exposition, once

bp = Blueprint("metrics", __name__)
# Seconds: an answer is a broker confirm (milliseconds) unless the broker is slow or
# away (up to broker.confirm_timeout, then 503).
ANSWER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ReceiverMetrics:
    def __init__(self) -> None:
        self.requests = Counter("bfuslime_receiver_requests", "Requests answered, by endpoint (the route, "
                                "'other' for none) and status code.", ["endpoint", "status"])
        self.answer_seconds = Histogram("bfuslime_receiver_answer_seconds", "Time from a request's arrival in "
                                        "the app to its answer.", ["endpoint"], buckets=ANSWER_BUCKETS)
        self.confirm_seconds = Histogram("bfuslime_receiver_confirm_seconds", "Time RabbitMQ took to confirm "
                                         "a message (or to fail: then 503).", buckets=ANSWER_BUCKETS)
        self.invalid = Counter("bfuslime_receiver_invalid_messages", "Messages answered 400/422 and kept for the "
                               "failed-message log, by reason.", ["reason"])


metrics = once(ReceiverMetrics)


def instrument(app: Flask) -> None:
    """Count every answer of ``app`` and serve ``/metrics``. An app not instrumented
    (receiver.metrics off) counts nothing: :func:`confirmed` and :func:`kept_invalid`
    look for its metrics here."""
    app.register_blueprint(bp)
    app.extensions["metrics"] = metrics()  # made now: /metrics lists every metric from the start

    @app.before_request
    def started() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def answered(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        endpoint = request.url_rule.rule if request.url_rule is not None else "other"
        found = metrics()
        found.requests.labels(endpoint, str(response.status_code)).inc()
        if started is not None:
            found.answer_seconds.labels(endpoint).observe(time.perf_counter() - started)
        return response


def _of_app() -> ReceiverMetrics | None:
    return current_app.extensions.get("metrics")


def confirmed(seconds: float) -> None:
    found = _of_app()
    if found is not None:
        found.confirm_seconds.observe(seconds)


def kept_invalid(reason: str) -> None:
    found = _of_app()
    if found is not None:
        found.invalid.labels(reason).inc()


@bp.get("/metrics")
def show() -> Response:
    body, content_type = exposition()
    return Response(body, content_type=content_type)
