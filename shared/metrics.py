"""Prometheus metrics shared by the receiver, the worker and the migration: the Lime
client's (every process calls Lime), and how a process shows its metrics.

Names start ``bfuslime_`` and carry their unit; labels take a few fixed values
(method, status class, step), never a customer number or an id. The receiver's
metrics are in receiver/metrics.py, the worker's in worker/metrics.py; the list with
what each means is in docs/operations.md, "Metrics".

Processes: a worker or a migration serves its own ``/metrics`` port (:func:`serve`);
the receiver's gunicorn processes write their values to files in one folder
(:func:`use_multiprocess_dir`, called by the gunicorn master before it forks) and
any of them answers ``/metrics`` with the sum over all (:func:`exposition`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Seconds: a Lime call on a LAN is milliseconds, Lime Cloud tens to hundreds, a
# timeout tens of seconds.
LIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
T = TypeVar("T")


def once(make: Callable[[], T]) -> Callable[[], T]:
    """``make()`` on the first call, the same object after. Metrics are made on first
    use, not on import: in the receiver that is in each gunicorn process, after the
    master chose multiprocess mode (:func:`use_multiprocess_dir`)."""
    made: list[T] = []
    lock = threading.Lock()

    def get() -> T:
        with lock:
            if not made:
                made.append(make())
            return made[0]

    return get


class LimeMetrics:
    def __init__(self) -> None:
        self.requests = Counter("bfuslime_lime_requests", "Lime REST calls by method and answer (status code, or "
                                "'unreachable' when none came).", ["method", "status"])
        self.seconds = Histogram("bfuslime_lime_request_seconds", "Time for a Lime REST call to be answered.",
                                 ["method"], buckets=LIME_BUCKETS)
        self.waits = Counter("bfuslime_lime_rate_limit_waits", "Lime calls that waited for the rate limit's slot.")
        self.wait_seconds = Counter("bfuslime_lime_rate_limit_wait_seconds",
                                    "Seconds Lime calls waited for the rate limit (lime.rate_limit, the budget).")
        self.budget = Gauge("bfuslime_lime_budget_requests_per_second", "Lime calls per second all processes "
                            "behind one address may make together (lime.rate_limit).", multiprocess_mode="max")

    def answered(self, method: str, status: int | str, seconds: float) -> None:
        """One Lime call ended: ``status`` is Lime's code, or 'unreachable'."""
        self.requests.labels(method, str(status)).inc()
        self.seconds.labels(method).observe(seconds)

    def waited(self, seconds: float) -> None:
        if seconds > 0:
            self.waits.inc()
            self.wait_seconds.inc(seconds)


lime_metrics = once(LimeMetrics)


def use_multiprocess_dir(path: str | Path) -> None:
    """Metrics made after this (in this process and the ones it forks) keep their
    values in files under ``path``, summed by :func:`exposition`. The folder should be
    empty at start: files left by an earlier run would be counted again."""
    os.environ[MULTIPROC_ENV] = str(path)
    values.ValueClass = values.MultiProcessValue()  # as if the variable had been set before the first import


def process_exited(pid: int) -> None:
    """A gunicorn process ended: its live gauges no longer count (its counters do)."""
    if MULTIPROC_ENV in os.environ:
        multiprocess.mark_process_dead(pid)


def exposition(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The text format of every metric and its content type: summed over the
    processes in multiprocess mode."""
    if MULTIPROC_ENV in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve(port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` (this process's registry) on ``port`` from a daemon thread;
    returns the server (``server.server_port`` is the port when 0 picked one)."""
    server, _thread = start_http_server(port, addr=host)
    return server
