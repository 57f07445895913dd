"""Retention (GDPR: log payloads hold personal data): delete processed-message records
older than a number of days, and failed ones that are resolved or discarded and older
than that. Failed messages not yet resolved are never deleted. Deletes go page by
page through the Lime client, within its rate limit."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from dataclasses import dataclass

from shared.config import LimeConfig, RetentionConfig
from shared.lime import LimeClient
from shared.logrecords import CLOSED, OPEN
from shared.logs import get_logger

log = get_logger(component="worker")


@dataclass
class PurgeResult:
    processed: int = 0
    failed: int = 0
    kept_unresolved: int = 0
    cutoff: str = ""

    def summary(self) -> str:
        return (f"deleted {self.processed} processed and {self.failed} resolved or discarded failed-message records "
                f"older than {self.cutoff}; kept {self.kept_unresolved} unresolved failed ones that old")


def _delete_matching(lime: LimeClient, limetype: str, params: dict, page: int,
                     on_delete: Callable[[], None]) -> int:
    """Delete every object matching ``params``, a page at a time (always the first
    page: what was deleted no longer matches)."""
    deleted = 0
    while True:
        objects, _next = lime.list_page(limetype, {**params, "_limit": page, "_sort": "_id"})
        if not objects:
            return deleted
        for obj in objects:
            lime.delete(limetype, obj["_id"])
            deleted += 1
            on_delete()


def purge_logs(lime: LimeClient, config: LimeConfig, older_than_days: int, now: dt.datetime | None = None,
               page: int = 200, on_delete: Callable[[], None] = lambda: None) -> PurgeResult:
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    now = now or dt.datetime.now(dt.UTC)
    cutoff = (now - dt.timedelta(days=older_than_days)).isoformat()
    result = PurgeResult(cutoff=cutoff)
    result.processed = _delete_matching(lime, config.processed_limetype, {"max-processedtime": cutoff}, page,
                                        on_delete)
    for status in CLOSED:
        result.failed += _delete_matching(lime, config.failed_limetype,
                                          {"status": status, "max-failedtime": cutoff}, page, on_delete)
    for status in OPEN:
        result.kept_unresolved += sum(1 for _ in lime.iterate(
            config.failed_limetype, {"status": status, "max-failedtime": cutoff}, page_size=page))
    return result


def purge_on_schedule(lime: LimeClient, lime_config: LimeConfig, retention: RetentionConfig,
                      owns_partition_0: Callable[[], bool], stop: threading.Event) -> None:
    """Purge every ``retention.interval_hours`` (the first time after a minute), while
    this worker owns partition 0, so one worker at a time does it. Runs until ``stop``."""
    interval = retention.interval_hours * 3600
    wait = min(60.0, interval)
    while not stop.wait(wait):
        wait = interval
        if not owns_partition_0():
            continue
        try:
            result = purge_logs(lime, lime_config, retention.days)
            log.info("log_records_purged", deleted_processed=result.processed, deleted_failed=result.failed,
                     kept_unresolved=result.kept_unresolved)
        except Exception as err:  # Lime away: next time
            log.warning("log_purge_failed", error=str(err))
