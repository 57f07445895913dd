"""What the Lime stand-in can be told to do wrong, and what it counts."""

from __future__ import annotations

import collections
import math
import random
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

# The largest value of each number fault (the others are shares, at most 1): an hour's
# latency, a day's rate window.
MOST = {"latency_ms": 3_600_000, "jitter_ms": 3_600_000, "spike_ms": 3_600_000, "rate_limit": 1_000_000_000,
        "rate_window": 86_400}


@dataclass
class Faults:
    latency_ms: float = 0.0  # added to every API request
    jitter_ms: float = 0.0  # plus up to this much, uniformly
    spike_rate: float = 0.0  # share of requests that get spike_ms more
    spike_ms: float = 0.0
    error_rate: float = 0.0  # share of requests answered 500
    down: bool = False  # every API request answered 503
    rate_limit: int = 0  # requests per rate_window per client address; 0 = unlimited
    rate_window: float = 300.0
    fail_containing: str = ""  # writes (POST, PUT) whose body holds this text are answered 500
    fail_limetype: str = ""  # ... only writes to this limetype (empty: any)

    def update(self, changes: dict[str, Any]) -> None:
        known = {f.name: f.type for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault '{name}' (known: {', '.join(known)})")
            current = getattr(self, name)
            if isinstance(current, str):
                if not isinstance(value, str):
                    raise ValueError(f"fault '{name}' expects text")
            elif isinstance(current, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"fault '{name}' expects true or false")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"fault '{name}' expects a number >= 0")
            elif isinstance(current, int) and not isinstance(value, int):
                raise ValueError(f"fault '{name}' expects a whole number")
            elif value > MOST.get(name, 1):
                raise ValueError(f"fault '{name}' is at most {MOST.get(name, 1)}"
                                 + ("" if name in MOST else " (a share)"))
            setattr(self, name, type(current)(value))


class FaultInjector:
    def __init__(self, faults: Faults | None = None, seed: int | None = None):
        self.faults = faults or Faults()
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._windows: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._requests: collections.Counter = collections.Counter()
        self._answers: collections.Counter = collections.Counter()
        self._writes: collections.Counter = collections.Counter()  # (limetype, id) -> POST/PUT count

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            trial = Faults(**asdict(self.faults))
            trial.update(changes)
            self.faults = trial
            self._windows.clear()
            return asdict(self.faults)

    def snapshot(self) -> dict[str, Any]:
        return asdict(self.faults)

    def admit(self, method: str, limetype: str, client: str,
              body: bytes = b"") -> tuple[tuple[int, str, dict[str, str]] | None, float]:
        """Count the request and decide its fate: None to serve it, else (status,
        message, headers) to answer instead; and the seconds it waits first (the
        latency, which the caller sleeps out: sandbox/lime/front.py)."""
        with self._lock:
            self._requests[f"{method} {limetype}"] += 1
            faults = self.faults
            delay = faults.latency_ms + self._random.uniform(0, faults.jitter_ms)
            if faults.spike_rate and self._random.random() < faults.spike_rate:
                delay += faults.spike_ms
            verdict = self._verdict(faults, client)
            if verdict is None and faults.fail_containing and method in ("POST", "PUT") \
                    and faults.fail_limetype in ("", limetype) and faults.fail_containing.encode() in body:
                verdict = 500, "Internal server error (injected for this payload).", {}
        return verdict, delay / 1000.0

    def _verdict(self, faults: Faults, client: str) -> tuple[int, str, dict[str, str]] | None:
        if faults.down:
            return 503, "Lime CRM is unavailable (stand-in told to be down).", {}
        if faults.rate_limit:
            now = time.monotonic()
            window = self._windows[client]
            while window and window[0] <= now - faults.rate_window:
                window.popleft()
            if len(window) >= faults.rate_limit:
                retry = max(1, math.ceil(window[0] + faults.rate_window - now))
                return 429, "Too many requests.", {"Retry-After": str(retry)}
            window.append(now)
        if faults.error_rate and self._random.random() < faults.error_rate:
            return 500, "Internal server error (injected).", {}
        return None

    def wrote(self, limetype: str, object_id: int) -> None:
        with self._lock:
            self._writes[(limetype, object_id)] += 1

    def answered(self, status: int) -> None:
        with self._lock:
            self._answers[str(status)] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self._requests),
                "total": sum(self._requests.values()),
                "answers": dict(self._answers),
                "objects_written": len(self._writes),
                "most_writes_of_one_object": max(self._writes.values(), default=0),
            }

    def reset_stats(self) -> None:
        with self._lock:
            self._requests.clear()
            self._answers.clear()
            self._writes.clear()
