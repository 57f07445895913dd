"""Logging: structlog key-value events. Bind ``message_id`` and ``customerno`` where a
message is handled; personal data never reaches a log line (see ``redact_personal``)."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from functools import partial
from typing import Any

import structlog

# BFUS and Lime field names that hold personal data. An event that carries one of
# them has the value replaced before it is rendered.
PERSONAL_KEYS = frozenset(
    {
        "socialsecurityno",
        "firstname",
        "lastname",
        "name",
        "street",
        "address",
        "zipcode",
        "city",
        "phone",
        "mobilephone",
        "email",
        "data",
        "payload",
        "body",
    }
)


def redact_personal(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in PERSONAL_KEYS.intersection(event):
        event[key] = "[redacted]"
    return event


def _add_fields(fields: dict[str, Any], _logger: Any, _method: str, event: Any) -> Any:
    return {**fields, **event}


def configure_logging(level: str = "info", fmt: str = "console", stream: Any = None,
                      extra: dict[str, Any] | None = None) -> None:
    """``extra``: fields every event of this process carries (a server process's pid)."""
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True
        )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *([partial(_add_fields, extra)] if extra else []),
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_personal,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # pika logs every reconnect attempt at ERROR; our own events say what matters.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def get_logger(**bound: Any) -> Any:
    """A lazy logger: it takes the configuration in force when it first logs, so
    module-level loggers follow configure_logging() called later."""
    return structlog.get_logger(**bound)
