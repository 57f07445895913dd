"""What a migration did: counts per objecttype and outcome, failures, Lime and BFUS
calls, time; written as JSON and printed as a table."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("created", "updated", "unchanged", "newer_in_lime", "failed")
DONE = {"created", "updated", "unchanged", "newer_in_lime"}


@dataclass
class Report:
    started: str
    dry_run: bool
    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # this run
    failures: list[dict[str, str]] = field(default_factory=list)
    resumed: int = 0
    resumed_counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # earlier runs
    options: str = ""  # the flags that chose what is migrated
    lime_calls: int = 0
    bfus_calls: int = 0
    seconds: float = 0.0
    stopped: bool = False

    @property
    def objects(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def totals(self) -> dict[str, dict[str, int]]:
        """Outcomes of this run and of the earlier runs it continued, by objecttype."""
        out: dict[str, Counter] = defaultdict(Counter)
        for counts in (self.resumed_counts, self.counts):
            for objecttype, outcomes in counts.items():
                out[objecttype].update(outcomes)
        return {t: dict(c) for t, c in out.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "options": self.options,
            "dry_run": self.dry_run,
            "stopped_before_the_end": self.stopped,
            "seconds": round(self.seconds, 1),
            "objects": self.objects,
            "already_done_before_this_run": self.resumed,
            "counts": {t: dict(c) for t, c in self.counts.items()},
            "totals_with_earlier_runs": self.totals(),
            "lime_calls": self.lime_calls,
            "lime_calls_per_object": round(self.lime_calls / self.objects, 4) if self.objects else None,
            "bfus_calls": self.bfus_calls,
            "failures": self.failures,
        }
