"""BFUS's outbound queue: posts change messages one at a time, in order, to one URL;
a message not answered 2xx stays at the head and is posted again after a pause, and
nothing behind it moves until it is accepted."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import requests

from sandbox.bfus.store import BfusStore
from shared.logs import get_logger

log = get_logger(component="bfus-standin")


class QueuePoster:
    def __init__(self, store: BfusStore, target_url: str, api_key: str, retry_pause: float = 1.0,
                 timeout: float = 10.0):
        self.store = store
        self.target_url = target_url
        self.api_key = api_key
        self.retry_pause = retry_pause
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers.update({"User-Agent": "BFUS-stand-in/1.0", "X-API-Key": api_key})
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_status: str | None = None
        self.answers: Counter[str] = Counter()  # the receiver's answers (or the error), by status
        self.longest = 0.0  # seconds, the longest answer

    def start(self) -> QueuePoster:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="bfus-poster", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.store.notify()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
            self._thread = None

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        self.store.notify()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def _run(self) -> None:
        while not self._stop.is_set():
            head = None if self._paused.is_set() else self.store.head()
            if head is None:
                with self.store.queue_changed:  # the check and the wait under one lock: no lost wake-up
                    if not self._stop.is_set() and (self._paused.is_set() or self.store.head() is None):
                        self.store.queue_changed.wait(0.5)
                continue
            status = self._post(head.envelope())
            delivered = status.isdigit() and 200 <= int(status) < 300
            self.store.record_attempt(head.id, status, delivered)
            self.last_status = status
            if not delivered:
                log.info("bfus_message_kept", id=head.id, status=status, attempts=head.attempts + 1)
                self._stop.wait(self.retry_pause)

    def _post(self, message: dict) -> str:
        body = json.dumps(message, ensure_ascii=False).encode("utf-8")
        started = time.monotonic()
        try:
            response = self.session.post(
                self.target_url, data=body, headers={"Content-Type": "application/json"}, timeout=self.timeout
            )
            status = str(response.status_code)
        except requests.RequestException as err:
            status = type(err).__name__
        self.answers[status] += 1
        self.longest = max(self.longest, time.monotonic() - started)
        return status
