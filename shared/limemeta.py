"""Lime's limetype metadata: waiting for it, and checking the configuration against it
(the mapping and the two log limetypes). Used by the worker at start-up, the
migration and `bfus-lime check-config`."""

from __future__ import annotations

import threading
import time
from typing import Any

from shared.config import Config
from shared.lime import LimeClient, LimeUnavailable
from shared.logrecords import FAILED_PROPERTIES, PROCESSED_PROPERTIES
from shared.logs import get_logger
from shared.mapping import MappingSetupError, ObjectMapper, build_mappers

log = get_logger(component="lime")
LOG_PROPERTIES = {"processed": PROCESSED_PROPERTIES, "failed": FAILED_PROPERTIES}


def fetch_limetypes(lime: LimeClient, wait: float | None = 0.0, stop: threading.Event | None = None) -> dict[str, Any]:
    """Lime's limetype metadata; waits up to ``wait`` seconds (None: until ``stop``)
    for Lime to answer."""
    deadline = None if wait is None else time.monotonic() + wait
    pause = 0.5
    stop = stop or threading.Event()
    while True:
        try:
            return lime.limetypes()
        except LimeUnavailable as err:
            if (deadline is not None and time.monotonic() + pause > deadline) or stop.is_set():
                raise
            log.warning("lime_not_ready", error=str(err), retry_in=pause)
            if stop.wait(pause):
                raise
            pause = min(pause * 2, 30)


def check_against_lime(config: Config, limetypes: dict[str, Any]) -> dict[str, ObjectMapper]:
    """Mappers for the configuration, or MappingSetupError listing every misfit,
    including the two log limetypes."""
    problems: list[str] = []
    for kind, limetype in (("processed", config.lime.processed_limetype), ("failed", config.lime.failed_limetype)):
        lt = limetypes.get(limetype)
        if lt is None:
            problems.append(f"lime.{kind}_limetype: Lime has no limetype '{limetype}'.")
            continue
        missing = [p for p in LOG_PROPERTIES[kind] if p not in lt["properties"]]
        if missing:
            problems.append(f"lime.{kind}_limetype: '{limetype}' lacks properties {', '.join(missing)}.")
    try:
        mappers = build_mappers(config.mapping, limetypes)
    except MappingSetupError as err:
        problems.extend(err.problems)
        mappers = {}
    if problems:
        raise MappingSetupError(problems)
    return mappers
