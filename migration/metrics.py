"""The migration's Prometheus metrics, served while it runs with ``bfus-lime migrate
--metrics-port N`` (shared/metrics.py); its rate is ``rate()`` of the count."""

from __future__ import annotations

from prometheus_client import Counter

from shared.metrics import once

objects = once(lambda: Counter("bfuslime_migration_objects", "Objects the migration settled, by objecttype and "
                               "outcome (created, updated, unchanged, newer_in_lime, failed).",
                               ["objecttype", "outcome"]))
