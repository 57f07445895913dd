"""The processed- and failed-message log records in Lime (contract.md §2): their
properties, the outcomes and statuses they take, and reading a record's status.
Written by the worker, read and changed by the dead-letter service and retention."""

from __future__ import annotations

from typing import Any

from shared.lime import option_key

PROCESSED_PROPERTIES = ("messageid", "objecttype", "operation", "key", "customerno", "bfustimestamp",
                        "processedtime", "outcome", "limetype", "limeobjectid", "company")
FAILED_PROPERTIES = ("messageid", "objecttype", "operation", "key", "customerno", "bfustimestamp", "failedtime",
                     "reason", "error", "payload", "attempts", "status", "company")
# With outbound on, both carry the direction, and a processed record what was sent.
DIRECTION_PROPERTIES = {"processed": ("direction", "detail"), "failed": ("direction",)}
FROM_BFUS = "from_bfus"
TO_BFUS = "to_bfus"
DIRECTIONS = (FROM_BFUS, TO_BFUS)

# Outcomes of a processed message.
APPLIED = "applied"
SKIPPED_STALE = "skipped_stale"
SKIPPED_DUPLICATE = "skipped_duplicate"
SKIPPED_NOT_CONFIGURED = "skipped_not_configured"
UNCHANGED = "unchanged"  # Lime held the message's values already: no write (worker.skip_unchanged)
SKIPPED_SUPERSEDED = "skipped_superseded"  # a newer waiting message of the object was written (worker.coalesce)
OUTCOMES = (APPLIED, SKIPPED_STALE, SKIPPED_DUPLICATE, SKIPPED_NOT_CONFIGURED, UNCHANGED, SKIPPED_SUPERSEDED)

# Statuses of a failed message: open ones still want a decision; closed ones are done
# (retention may purge those).
FAILED = "failed"
REQUEUED = "requeued"
RESOLVED = "resolved"
DISCARDED = "discarded"
STATUSES = (FAILED, REQUEUED, RESOLVED, DISCARDED)
OPEN = (FAILED, REQUEUED)
CLOSED = (RESOLVED, DISCARDED)


def status_of(record: dict[str, Any]) -> str:
    """A failed-message record's status key."""
    return str(option_key(record.get("status")) or "")
