"""Retrying, the one way this project does it: exponential backoff with jitter and a
ceiling, Retry-After honoured when the error carries one (``retry_after``), and waits
that a stop or a lost delivery can cut short.

    backoff = Backoff(initial=0.5, ceiling=30)
    value = retry(call, (LimeUnavailable,), backoff, wait=until(stop))
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def compute_backoff(attempt: int, initial: float, ceiling: float, jitter: float = 0.5) -> float:
    """The pause before try ``attempt + 1``: about ``initial * 2^(attempt-1)``, at most
    ``ceiling``, less up to a ``jitter`` share of it at random (so that many waiting
    clients do not come back at once)."""
    base = min(ceiling, initial * 2 ** min(max(attempt, 1) - 1, 30))
    return base * random.uniform(1.0 - jitter, 1.0)


@dataclass
class Backoff:
    """Successive pauses: :meth:`pause` for each failure in a row, :meth:`reset`
    after a success."""

    initial: float
    ceiling: float
    jitter: float = 0.5
    attempt: int = 0

    def pause(self, retry_after: float | None = None) -> float:
        self.attempt += 1
        return retry_after if retry_after else compute_backoff(self.attempt, self.initial, self.ceiling, self.jitter)

    def reset(self) -> None:
        self.attempt = 0


def until(stop: threading.Event) -> Callable[[float], bool]:
    """A wait that ``stop`` cuts short: it returns False once ``stop`` is set."""
    return lambda seconds: not stop.wait(seconds)


def retry(call: Callable[[], T], retry_on: tuple[type[Exception], ...], backoff: Backoff,
          wait: Callable[[float], bool], on_retry: Callable[[Exception, float], None] | None = None) -> T:
    """``call()`` until it returns. After an error of ``retry_on``, ``on_retry(error,
    pause)`` (it may raise to end the retrying), then ``wait(pause)``; when the wait
    returns False the error is raised. Other errors pass through at once."""
    while True:
        try:
            return call()
        except retry_on as err:
            pause = backoff.pause(getattr(err, "retry_after", None))
            if on_retry is not None:
                on_retry(err, pause)
            if not wait(pause):
                raise
