"""Request-rate limiting shared by every thread of a process, fair in arrival order:
each caller reserves the next free slot, so partitions waiting for Lime take turns
instead of racing."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, with bursts of up to
    ``burst`` after a quiet spell. Callers are served first come, first served."""

    def __init__(self, rate: float, burst: float | None = None):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.interval = 1.0 / rate
        self._fixed_burst = burst
        self.burst = burst if burst is not None else max(1.0, rate)
        self._next = time.monotonic() - (self.burst - 1) * self.interval  # start with a full burst
        self._lock = threading.Lock()

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """A new rate from the next acquisition on, and ``burst`` (default: as before,
        fixed or following the rate)."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        with self._lock:
            self.rate = rate
            self.interval = 1.0 / rate
            if burst is not None:
                self._fixed_burst = burst
            self.burst = self._fixed_burst if self._fixed_burst is not None else max(1.0, rate)

    def acquire(self) -> float:
        """Wait for this caller's slot; returns the seconds waited."""
        with self._lock:
            now = time.monotonic()
            # Unused capacity accumulates up to `burst` requests.
            slot = max(self._next, now - (self.burst - 1) * self.interval)
            self._next = slot + self.interval
        wait = slot - now
        if wait > 0:
            time.sleep(wait)
            return wait
        return 0.0
