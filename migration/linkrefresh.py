"""``bfus-lime jump-links``: find the Lime objects whose jump link (docs/jump.md) is
missing or outdated (they predate the jump, or the secret, the receiver's public address
or the client changed since they were written) and, with ``--refresh``, write them.

It pages through each linked limetype in ``_id`` order, 50 objects per list call, and
writes one PUT of the link property per object to fix: ``pages/50 + fixed`` Lime
calls. The Lime client it gets is rate-limited apart from the workers' (the command
gives it half of ``lime.rate_limit`` unless told otherwise), so the live sync keeps
the rest of the budget. Objects without a BFUS key are not synced and keep no link.

Resumable: after each page the position (the next link Lime gave) and the counts so
far go to a checkpoint file, replaced atomically. A killed or stopped run continues
from the page it was on; the objects it had fixed there are found up to date and not
written again. A finished run removes its checkpoint, so the next run starts afresh;
a checkpoint made with other links (another secret, address or client) is ignored.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migration.errors import MigrationError, Stopped
from migration.run import FOLDER
from shared.jumplinks import JumpLinks
from shared.lime import LimeClient, LimeRejected, LimeUnavailable
from shared.logs import get_logger
from shared.mapping import ObjectMapper
from shared.retry import Backoff, retry, until

log = get_logger(component="jump-links")

OUTCOMES = ("up_to_date", "missing", "outdated", "not_synced", "failed")
PAGE_SIZE = 50  # Lime's largest page


@dataclass
class RefreshOptions:
    limetypes: tuple[str, ...] = ()  # empty: every limetype jump.links names
    write: bool = False  # False: only count what is missing or outdated
    checkpoint: Path = FOLDER / "jump-links.json"
    fresh: bool = False  # forget a stopped run's checkpoint


@dataclass
class RefreshReport:
    write: bool
    counts: dict[str, Counter] = field(default_factory=dict)  # limetype -> outcome -> objects
    written: Counter = field(default_factory=Counter)  # limetype -> links written
    failures: list[dict[str, Any]] = field(default_factory=list)
    lime_calls: int = 0  # this run's
    seconds: float = 0.0
    resumed: bool = False  # continued a stopped run (counts include it)
    stopped: bool = False

    @property
    def checked(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def to_fix(self, limetype: str) -> int:
        counts = self.counts.get(limetype, Counter())
        return counts["missing"] + counts["outdated"]


class LinkRefresh:
    def __init__(self, lime: LimeClient, links: JumpLinks, mappers: dict[str, ObjectMapper],
                 options: RefreshOptions, backoff: Backoff, stop: threading.Event | None = None,
                 on_page: Callable[[str, RefreshReport], None] | None = None):
        """``mappers``: the synced objecttypes (for each limetype's BFUS key property);
        ``backoff``: the pauses through Lime outages; ``on_page``: called after each
        page (progress)."""
        if not links.enabled:
            raise MigrationError("jump links are off: jump.secret, receiver.public_url and jump.links must be set "
                                 "(docs/jump.md)")
        configured = links.jump.links
        unknown = [lt for lt in options.limetypes if lt not in configured]
        if unknown:
            raise MigrationError(f"no link property configured for {', '.join(unknown)} (jump.links has "
                                 f"{', '.join(sorted(configured))})")
        self.lime = lime
        self.links = links
        self.keys = {m.limetype: m.key_property for m in mappers.values()}
        self.limetypes = options.limetypes or tuple(sorted(configured))
        self.options = options
        self.backoff = backoff
        self.stop = stop or threading.Event()
        self.on_page = on_page

    def identity(self) -> dict[str, str]:
        """What the links look like now (the address of id 0 per limetype: it changes
        with the secret, the public address and the client, and shows none of them)."""
        return {lt: self.links.url(lt, 0) for lt in sorted(self.links.jump.links)}

    def run(self) -> RefreshReport:
        started, calls_before = time.monotonic(), self.lime.calls
        report = RefreshReport(self.options.write)
        state = self._load(report)
        try:
            for limetype in self.limetypes:
                self._limetype(limetype, state, report)
        except Stopped:
            report.stopped = True
        finally:
            report.lime_calls = self.lime.calls - calls_before
            report.seconds = time.monotonic() - started
        if self.options.write and not report.stopped:
            self.options.checkpoint.unlink(missing_ok=True)
        return report

    def _limetype(self, limetype: str, state: dict[str, Any], report: RefreshReport) -> None:
        position = state["positions"].get(limetype, {})
        if position.get("done"):
            return
        counts = report.counts.setdefault(limetype, Counter())
        for objects, next_url in self.lime.pages(limetype, {"_sort": "_id"}, PAGE_SIZE, self._retrying,
                                                 position.get("next")):
            for obj in objects:
                counts[self._one(limetype, obj, report)] += 1
            state["positions"][limetype] = {"next": next_url, "done": next_url is None}
            self._save(state, report)
            if self.on_page is not None:
                self.on_page(limetype, report)
            if self.stop.is_set() and next_url is not None:
                raise Stopped()

    def _one(self, limetype: str, obj: dict[str, Any], report: RefreshReport) -> str:
        if obj.get(self.keys[limetype]) in (None, ""):
            return "not_synced"  # its jump would find no BFUS object: it gets its link once it is linked
        prop, want = self.links.jump.links[limetype], self.links.url(limetype, obj["_id"])
        have = obj.get(prop) or ""
        if have == want:
            return "up_to_date"
        outcome = "outdated" if have else "missing"
        if not self.options.write:
            return outcome
        if self.stop.is_set():
            raise Stopped()  # this page is done again on resuming: what it fixed is up to date by then
        try:
            self._retrying(lambda: self.lime.update(limetype, obj["_id"], {prop: want}))
        except LimeRejected as err:
            report.failures.append({"limetype": limetype, "id": obj["_id"], "error": f"Lime {err.status}: "
                                                                                     f"{err.message}"})
            return "failed"
        report.written[limetype] += 1
        return outcome

    def _retrying(self, call: Callable[[], Any]) -> Any:
        """``call`` through Lime outages and 429s; Stopped when asked to stop meanwhile."""
        def on_retry(err: Exception, pause: float) -> None:
            log.warning("lime_unavailable_waiting", attempt=self.backoff.attempt, pause=round(pause, 2),
                        error=str(err))

        try:
            result = retry(call, (LimeUnavailable,), self.backoff, until(self.stop), on_retry)
        except LimeUnavailable:
            raise Stopped() from None
        self.backoff.reset()
        return result

    # ------------------------------------------------------------------ checkpoint

    def _load(self, report: RefreshReport) -> dict[str, Any]:
        fresh = {"links": self.identity(), "positions": {}, "counts": {}, "written": {}}
        path = self.options.checkpoint
        if not self.options.write:
            return fresh  # counting writes nothing, not even a checkpoint
        if self.options.fresh or not path.exists():
            return fresh
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("jump_links_checkpoint_unreadable", path=str(path))
            return fresh
        if not isinstance(state, dict) or state.get("links") != fresh["links"]:
            log.info("jump_links_checkpoint_ignored", reason="made with other links", path=str(path))
            return fresh
        report.resumed = True
        report.counts = {lt: Counter(c) for lt, c in state.get("counts", {}).items()}
        report.written = Counter(state.get("written", {}))
        report.failures = list(state.get("failures", []))
        return state

    def _save(self, state: dict[str, Any], report: RefreshReport) -> None:
        if not self.options.write:
            return
        state.update(counts={lt: dict(c) for lt, c in report.counts.items()}, written=dict(report.written),
                     failures=report.failures[-100:])
        path = self.options.checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(state, ensure_ascii=False))
        os.replace(partial, path)  # a kill leaves the old checkpoint or the new one, never half of one
