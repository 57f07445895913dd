"""What a command says when something it needs fails: one line naming what failed and
what to do, and an exit code (README "Exit codes"):

    0 done    1 done, with failures    2 usage or configuration    3 a service unreachable    130 stopped

The codes are in shared/exitcodes.py. A failure not listed here is a bug and keeps its
traceback."""

from __future__ import annotations

from urllib.parse import urlsplit

import pika
import requests

from shared.bfus import BfusError
from shared.config import Config, ProblemsError
from shared.exitcodes import FAILURES, UNREACHABLE, USAGE
from shared.lime import LimeRejected, LimeUnavailable
from shared.publisher import BrokerUnavailable


def public(url: str) -> str:
    """A URL without its password."""
    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url


def socket_error(err: BaseException) -> str:
    """The socket's own reason (``Connection refused``) inside a wrapping error (requests'
    texts are long and repeat the URL; pika's are only class names), else the error's
    type."""
    seen: set[int] = set()
    stack: list[BaseException] = [err]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        stack.extend(e for e in (current.__cause__, current.__context__, *current.args) if isinstance(e, BaseException))
        for name in ("reason", "exception"):  # urllib3's and pika's wrapped errors
            inner = getattr(current, name, None)
            if isinstance(inner, BaseException):
                stack.append(inner)
    return type(err).__name__


def _reason(err: BaseException) -> str:
    """Why, in words: the socket's own reason when there is one, else the error's text."""
    found = socket_error(err)
    if found != type(err).__name__:
        return found
    text = str(err).strip()
    return text if text and text not in ("()", "''") else found


def explain(err: BaseException, config: Config | None) -> tuple[str, int] | None:
    """(message, exit code) for an expected failure, None for a bug."""
    broker = ", ".join(public(url) for url in config.broker.urls) if config else "the configured broker"
    lime = config.lime.url if config else "the configured Lime"
    if isinstance(err, ProblemsError):
        return str(err), USAGE
    if isinstance(err, (pika.exceptions.AMQPError, BrokerUnavailable, ConnectionError)):
        return (f"RabbitMQ at {broker} is not reachable ({_reason(err)}). Is it running? "
                "It is set by broker.url or RABBITMQ_URL."), UNREACHABLE
    if isinstance(err, LimeUnavailable):
        return f"Lime at {lime} did not answer ({err}). Is it running? It is set by lime.url.", UNREACHABLE
    if isinstance(err, LimeRejected):
        return f"Lime at {lime} refused the request: {err.message} ({err.status} {err.code}).", FAILURES
    if isinstance(err, BfusError):
        bfus = config.bfus.url if config else "the configured BFUS"
        return f"BFUS at {bfus}: {err}. It is set by bfus.url.", UNREACHABLE
    if isinstance(err, requests.RequestException):
        return f"{_reason(err)} (is the service at that address running?)", UNREACHABLE
    return None
