"""Stand-ins for unit tests, where no broker or network may be used:

- :class:`StoreLime`: the Lime client's calls served straight by the Lime stand-in's
  store (real SQLite, the stand-in's own validation), no HTTP; failures can be
  scripted per call.
- :class:`RecordingPublisher`: takes publishes as the confirmed publisher would and
  keeps them; can be told to refuse some (BrokerUnavailable).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika

from sandbox.lime.schema import load_schema
from sandbox.lime.store import Filter, LimeRequestError, LimeStore
from shared.lime import CircuitBreaker, LimeRejected, LimeUnavailable
from shared.publisher import BrokerUnavailable


class StoreLime:
    def __init__(self, path: Path):
        self.store = LimeStore(path, load_schema())
        self.breaker = CircuitBreaker(threshold=10**9)
        self.calls: Counter[str] = Counter()
        self.answers = 0
        # Scripted failures: (method, predicate on the call, exception); each used once
        # unless ``times`` is None (every matching call).
        self._faults: list[list[Any]] = []

    def fail(self, method: str, error: Exception, times: int | None = 1,
             when: Callable[[str, dict[str, Any]], bool] = lambda limetype, values: True) -> None:
        self._faults.append([method, when, error, times])

    def _call(self, method: str, limetype: str, values: dict[str, Any], run: Callable[[], Any]) -> Any:
        self.calls[method] += 1
        for fault in self._faults:
            wanted, when, error, times = fault
            if wanted == method and when(limetype, values) and (times is None or times > 0):
                if times is not None:
                    fault[3] -= 1
                if not isinstance(error, LimeUnavailable) or (error.status or 0) < 500:
                    self.answers += 1
                raise error
        try:
            result = run()
        except LimeRequestError as err:
            self.answers += 1
            raise LimeRejected(err.status, err.code, err.message) from None
        self.answers += 1
        return result

    def find(self, limetype: str, prop: str, value: Any, limit: int = 2) -> list[dict[str, Any]]:
        return self._call("GET", limetype, {prop: value}, lambda: self.store.query(
            limetype, [Filter(prop, "=", value)], [], limit, 0)[0])

    def get(self, limetype: str, object_id: int) -> dict[str, Any]:
        return self._call("GET", limetype, {}, lambda: self.store.get(limetype, object_id))

    def create(self, limetype: str, values: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", limetype, values, lambda: self.store.create(limetype, values))

    def update(self, limetype: str, object_id: int, values: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", limetype, values, lambda: self.store.update(limetype, object_id, values))

    def objects(self, limetype: str) -> list[dict[str, Any]]:
        return self.store.all_objects(limetype)


class RecordingPublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, bytes, pika.BasicProperties]] = []
        self.refuse = 0  # the next this many publishes raise BrokerUnavailable

    def publish(self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties,
                timeout: float | None = None) -> None:
        if self.refuse:
            self.refuse -= 1
            raise BrokerUnavailable("not connected to RabbitMQ (scripted)")
        self.published.append((exchange, routing_key, body, properties))
