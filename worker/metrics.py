"""The worker's Prometheus metrics (docs/operations.md, "Metrics"), served by each
worker process on its own port (worker.metrics_port; shared/metrics.py). The Lime
client's own (calls, their time, rate-limit waits) are in shared/metrics.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from shared.metrics import once

# Seconds from BFUS's change to its write in Lime: seconds when all is well, minutes
# in a burst, hours after an outage.
LAG_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)


class WorkerMetrics:
    def __init__(self) -> None:
        self.messages = Counter("bfuslime_worker_messages", "Messages settled (their log record written), by "
                                "objecttype and outcome: applied, unchanged, skipped_superseded, skipped_stale, "
                                "skipped_duplicate, failed; and to_bfus for Lime edits sent to BFUS.",
                                ["objecttype", "outcome"])
        self.failures = Counter("bfuslime_worker_failures", "Messages failed (a failed record and a dead letter), "
                                "by reason.", ["reason"])
        self.retries = Counter("bfuslime_worker_retries", "Steps tried again after Lime, BFUS or the broker did "
                               "not take them, by step.", ["step"])
        self.lag = Histogram("bfuslime_worker_lag_seconds", "Time from a BFUS change (its timestamp) to its "
                             "message's settling in Lime.", buckets=LAG_BUCKETS)
        self.circuit_open = Gauge("bfuslime_worker_circuit_open", "1 while the circuit breaker holds Lime calls "
                                  "back (Lime unreachable or failing), else 0.", multiprocess_mode="max")
        self.partitions_owned = Gauge("bfuslime_worker_partitions_owned", "Partitions this worker process "
                                      "consumes.", multiprocess_mode="sum")
        self.partitions = Gauge("bfuslime_worker_partitions", "Partitions the topology has (broker.partitions).",
                                multiprocess_mode="max")

    def settled(self, objecttype: str, outcome: str, bfus_time: dt.datetime | None = None) -> None:
        self.messages.labels(objecttype or "unknown", outcome).inc()
        if bfus_time is not None:
            self.lag.observe(max(0.0, (dt.datetime.now(dt.UTC) - bfus_time).total_seconds()))

    def failed(self, objecttype: str, reason: str) -> None:
        self.settled(objecttype, "failed")
        self.failures.labels(reason).inc()

    def watch(self, partitions: int, owned: Callable[[], int], circuit_open: Callable[[], bool]) -> None:
        """Gauges read when scraped, from this process's worker."""
        self.partitions.set(partitions)
        self.partitions_owned.set_function(owned)
        self.circuit_open.set_function(lambda: 1.0 if circuit_open() else 0.0)


metrics = once(WorkerMetrics)
