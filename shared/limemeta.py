"""Lime's limetype metadata: waiting for it, and checking the configuration against it
(the mapping, the two log limetypes, the jump's link properties). Used by the worker at start-up, the
migration and `bfus-lime check-config`."""

from __future__ import annotations

import threading
import time
from typing import Any

from shared.config import Config
from shared.lime import LimeClient, LimeUnavailable
from shared.logrecords import (
    DIRECTION_PROPERTIES,
    FAILED_PROPERTIES,
    OUTCOMES,
    PROCESSED_PROPERTIES,
    SKIPPED_SUPERSEDED,
    UNCHANGED,
)
from shared.logs import get_logger
from shared.mapping import MappingSetupError, ObjectMapper, build_mappers
from shared.retry import Backoff, retry, until

log = get_logger(component="lime")
LOG_PROPERTIES = {"processed": PROCESSED_PROPERTIES, "failed": FAILED_PROPERTIES}


def fetch_limetypes(lime: LimeClient, wait: float | None = 0.0, stop: threading.Event | None = None) -> dict[str, Any]:
    """Lime's limetype metadata; waits up to ``wait`` seconds (None: until ``stop``)
    for Lime to answer."""
    deadline = None if wait is None else time.monotonic() + wait
    stopped = until(stop or threading.Event())

    def wait_more(pause: float) -> bool:
        return (deadline is None or time.monotonic() + pause <= deadline) and stopped(pause)

    def on_retry(err: Exception, pause: float) -> None:
        log.warning("lime_not_ready", error=str(err), retry_in=round(pause, 2))

    return retry(lime.limetypes, (LimeUnavailable,), Backoff(0.5, 30.0), wait_more, on_retry)


def check_against_lime(config: Config, limetypes: dict[str, Any]) -> dict[str, ObjectMapper]:
    """Mappers for the configuration, or MappingSetupError listing every misfit,
    including the two log limetypes."""
    problems: list[str] = []
    for kind, limetype in (("processed", config.lime.processed_limetype), ("failed", config.lime.failed_limetype)):
        lt = limetypes.get(limetype)
        if lt is None:
            problems.append(f"lime.{kind}_limetype: Lime has no limetype '{limetype}'.")
            continue
        needed = LOG_PROPERTIES[kind] + (DIRECTION_PROPERTIES[kind] if config.outbound.enabled else ())
        if kind == "processed" and config.worker.coalesce and "detail" not in needed:
            needed += ("detail",)  # a superseded message's record names the message that superseded it
        missing = [p for p in needed if p not in lt["properties"]]
        if missing:
            problems.append(f"lime.{kind}_limetype: '{limetype}' lacks properties {', '.join(missing)}.")
        elif kind == "processed":
            problems.extend(_outcome_problems(config, limetype, lt["properties"]["outcome"]))
    try:
        mappers = build_mappers(config.mapping, limetypes, outbound=config.outbound.enabled)
    except MappingSetupError as err:
        problems.extend(err.problems)
        mappers = {}
    if config.outbound.enabled:
        problems.extend(_outbound_problems(config, limetypes, mappers))
    problems.extend(jump_problems(config, limetypes))
    if problems:
        raise MappingSetupError(problems)
    return mappers


def _outcome_problems(config: Config, limetype: str, meta: dict[str, Any]) -> list[str]:
    """An option ``outcome`` must offer every outcome the worker writes."""
    if meta.get("type") != "option":
        return []
    offered = {o.get("key") for o in meta.get("options") or [] if not o.get("inactive")}
    wanted = [o for o in OUTCOMES if (o != UNCHANGED or config.worker.skip_unchanged)
              and (o != SKIPPED_SUPERSEDED or config.worker.coalesce)]
    lacking = [o for o in wanted if o not in offered]
    if not lacking:
        return []
    return [f"lime.processed_limetype: the outcome option of '{limetype}' lacks {', '.join(lacking)} (add them in "
            f"Lime, or turn worker.skip_unchanged / worker.coalesce off)."]


def _outbound_problems(config: Config, limetypes: dict[str, Any], mappers: dict[str, ObjectMapper]) -> list[str]:
    customer = mappers.get("customer")
    if customer is None:
        return ["outbound.enabled: the customer mapping must be synced (mapping.objects.customer.sync) to send "
                "companies to BFUS."]
    problems = []
    if not customer.to_bfus:
        problems.append("mapping.objects.customer.to_bfus: no field flows to BFUS; list some or turn outbound off.")
    prop = config.outbound.create_when
    if prop:
        meta = limetypes[customer.limetype]["properties"].get(prop)
        if meta is None:
            problems.append(f"outbound.create_when: limetype '{customer.limetype}' has no property '{prop}'.")
        elif meta.get("type") != "yesno":
            problems.append(f"outbound.create_when: '{prop}' has type {meta.get('type')}, not yesno.")
    if not config.receiver.lime_secret:
        problems.append("receiver.lime_secret: Must be set when outbound is on (the webhook subscription's secret).")
    if not config.bfus.token:
        problems.append("bfus.token: Must be set when outbound is on.")
    return problems


def jump_problems(config: Config, limetypes: dict[str, Any]) -> list[str]:
    """The jump's link properties (jump.links) against Lime: each exists on its limetype
    and is a link property. The configuration itself (secret, receiver.public_url, the
    limetypes being mapped ones) was checked when it was loaded."""
    problems = []
    if config.jump.enabled and not config.bfus.token:
        problems.append("bfus.token: Must be set when jump is on (the receiver asks BFUS for bookmarks).")
    for limetype, prop in sorted(config.jump.links.items()):
        lt = limetypes.get(limetype)
        if lt is None:
            problems.append(f"jump.links.{limetype}: Lime has no limetype '{limetype}'.")
            continue
        meta = lt["properties"].get(prop)
        if meta is None:
            problems.append(f"jump.links.{limetype}: limetype '{limetype}' has no property '{prop}' (add a link "
                            f"property in Lime Admin, docs/jump.md).")
        elif meta.get("type") != "link":
            problems.append(f"jump.links.{limetype}: '{prop}' has type {meta.get('type')}, not link.")
    return problems
