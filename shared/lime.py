"""Lime CRM REST client (contract.md §3), built on libcurl (pycurl): every message
costs Lime calls, and a call through libcurl costs the worker about a third of the CPU
of one through urllib3 (whose header parsing alone cost more than libcurl's whole
call; docs/operations.md "CPU"). Timeouts, a descriptive User-Agent, X-API-Key, a
request-rate limit shared by the process's threads, and errors split into the two kinds
the worker acts on:

- :class:`LimeUnavailable`: try again later (connection trouble, timeouts, 5xx, 429,
  a refused API key). ``retry_after`` carries Lime's Retry-After when it sent one.
- :class:`LimeRejected`: Lime refused this request (400, 404, ...); sending it again
  will not help.
"""

from __future__ import annotations

import io
import json as jsonlib
import os
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import certifi
import pycurl

from shared import __version__
from shared.config import LimeConfig
from shared.metrics import lime_metrics
from shared.ratelimit import TokenBucket
from shared.retry import Backoff

LIBCURL = pycurl.version_info()[1]
USER_AGENT = f"bfus-lime/{__version__} (BFUS to Lime CRM integration; libcurl/{LIBCURL})"


class LimeError(Exception):
    pass


class LimeUnavailable(LimeError):
    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class LimeRejected(LimeError):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"Lime answered {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class CircuitBreaker:
    """Opens after ``threshold`` outage errors in a row (connection trouble, timeouts,
    5xx, a refused key). While open, calls fail at once without reaching Lime, except
    one probe per backoff interval (doubling up to ``ceiling``); the first answer that
    shows Lime is up closes it."""

    def __init__(self, threshold: int = 3, initial: float = 0.5, ceiling: float = 30.0):
        self.threshold = threshold
        self._failures = 0
        self._open_until: float | None = None
        self._backoff = Backoff(initial, ceiling, jitter=0.0)
        self._probing = False
        self._lock = threading.Lock()
        self.opened = 0  # times it opened (for logs and tests)

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._open_until is not None

    def probe_due(self) -> bool:
        with self._lock:
            return self._open_until is not None and not self._probing and time.monotonic() >= self._open_until

    def before_call(self) -> None:
        with self._lock:
            if self._open_until is None:
                return
            now = time.monotonic()
            if self._probing or now < self._open_until:
                wait = max(0.05, self._open_until - now)
                raise LimeUnavailable("Lime is unavailable (circuit open; waiting to probe)", wait)
            self._probing = True  # this caller is the probe

    def success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probing = False
            self._open_until = None
            self._backoff.reset()

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._open_until is not None:
                self._probing = False
                self._open_until = time.monotonic() + self._backoff.pause()
            elif self._failures >= self.threshold:
                self.opened += 1
                self._open_until = time.monotonic() + self._backoff.pause()


def option_key(value: Any) -> Any:
    """An option as Lime reads it (``{"id", "key", "text"}``) as its key, the form
    Lime takes on writes; any other value as it is."""
    return value["key"] if isinstance(value, dict) and "key" in value else value


@dataclass
class Answer:
    """Lime's answer: status, body and the header lines as sent."""

    status: int
    data: bytes
    head: bytes

    def header(self, name: str) -> str | None:
        """A header's value (the last block's: a proxy's CONNECT answer comes first)."""
        wanted = name.lower().encode() + b":"
        found = None
        for line in self.head.split(b"\r\n"):
            if line[:len(wanted)].lower() == wanted:
                found = line[len(wanted):].strip().decode("latin-1")
            elif line.startswith(b"HTTP/"):
                found = None
        return found


def _retry_after(answer: Answer) -> float | None:
    raw = answer.header("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _error_body(answer: Answer) -> tuple[str, str]:
    """Lime's error code and message (contract.md §3), or the start of whatever it sent."""
    try:
        body = jsonlib.loads(answer.data)
    except ValueError:
        return "error", answer.data[:300].decode("utf-8", "replace")
    if isinstance(body, dict):
        return str(body.get("error", "error")), str(body.get("message", body))
    return "error", str(body)[:300]


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (http(s)_proxy, no_proxy in either
    case, read as requests would), or None."""
    parts = urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme or "http") or None


class Transport:
    """libcurl handles, one per call in flight (a handle serves one thread at a time);
    each keeps its connection to Lime open between calls. At most ``pool_size`` are
    kept idle. The proxy (read once) and the CA bundle (REQUESTS_CA_BUNDLE,
    CURL_CA_BUNDLE or certifi's) are set on every handle: libcurl's own reading of the
    environment is off. No redirects followed; gzip and deflate answers decoded."""

    def __init__(self, url: str, connect_timeout: float, read_timeout: float, pool_size: int):
        self.proxy = proxy_for(url) or ""  # "": no proxy, whatever the environment says
        self.ca = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
        self.connect_ms = max(1, round(connect_timeout * 1000))
        # libcurl has no per-read timeout: the whole call may take connect + read.
        self.total_ms = max(1, round((connect_timeout + read_timeout) * 1000))
        self.pool_size = pool_size
        self._idle: list[pycurl.Curl] = []
        self._lock = threading.Lock()

    def _handle(self) -> pycurl.Curl:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return pycurl.Curl()

    def _release(self, handle: pycurl.Curl) -> None:
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append(handle)
                return
        handle.close()

    def send(self, method: str, url: str, body: bytes | None, headers: list[str]) -> Answer:
        """One exchange; pycurl.error when no answer came."""
        handle = self._handle()
        data, head = io.BytesIO(), io.BytesIO()
        try:
            handle.reset()  # options only: the open connection stays
            handle.setopt(pycurl.URL, url)
            handle.setopt(pycurl.NOSIGNAL, 1)
            handle.setopt(pycurl.CONNECTTIMEOUT_MS, self.connect_ms)
            handle.setopt(pycurl.TIMEOUT_MS, self.total_ms)
            handle.setopt(pycurl.PROXY, self.proxy)
            handle.setopt(pycurl.CAINFO, self.ca)
            handle.setopt(pycurl.ACCEPT_ENCODING, "gzip, deflate")
            handle.setopt(pycurl.HTTPHEADER, headers)
            if body is not None:
                handle.setopt(pycurl.POSTFIELDS, body)
            if method == "HEAD":
                handle.setopt(pycurl.NOBODY, 1)
            elif method != ("POST" if body is not None else "GET"):
                handle.setopt(pycurl.CUSTOMREQUEST, method)
            handle.setopt(pycurl.WRITEFUNCTION, data.write)
            handle.setopt(pycurl.HEADERFUNCTION, head.write)
            handle.perform()
            status = handle.getinfo(pycurl.RESPONSE_CODE)
        except pycurl.error as err:
            err.os_errno = handle.getinfo(pycurl.OS_ERRNO)
            handle.close()  # its connection is in an unknown state
            raise
        self._release(handle)
        return Answer(status, data.getvalue(), head.getvalue())


def _unreachable(err: pycurl.error, method: str) -> LimeUnavailable:
    """Why no answer came, in the socket's words where there are some."""
    code = err.args[0] if err.args else None
    errno = getattr(err, "os_errno", 0)
    if code == pycurl.E_OPERATION_TIMEDOUT and not errno:
        return LimeUnavailable(f"Lime did not answer {method} in time")
    reason = os.strerror(errno) if errno else (err.args[1] if len(err.args) > 1 else str(err))
    return LimeUnavailable(f"Lime unreachable: {reason}")


def _objects_and_next(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """A list answer's objects and the link to its next page (None on the last)."""
    return body.get("_embedded", {}).get("limeobjects", []), body.get("_links", {}).get("next", {}).get("href")


class LimeClient:
    def __init__(self, config: LimeConfig, pool_size: int = 16, breaker: CircuitBreaker | None = None):
        self.base_url = config.url
        self.bucket = TokenBucket(config.rate_limit)
        lime_metrics().budget.set(config.rate_limit)
        self.breaker = breaker or CircuitBreaker(threshold=10**9)  # by default never opens
        self.headers = [f"X-API-Key: {config.api_key}", f"User-Agent: {USER_AGENT}", "Accept: application/hal+json",
                        "Expect:"]  # no 100-continue round trip before a body
        self._json_headers = [*self.headers, "Content-Type: application/json"]
        self.transport = Transport(self.base_url, config.connect_timeout, config.read_timeout, pool_size)
        self._calls: Counter = Counter()
        self._answers = 0  # answers below 500 (Lime is up, whatever it said)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ plumbing

    @property
    def calls(self) -> int:
        with self._lock:
            return sum(self._calls.values())

    def call_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    @property
    def answers(self) -> int:
        """How many answers below 500 Lime has given this client: when it grows, Lime
        is answering."""
        with self._lock:
            return self._answers

    def request(self, method: str, path: str, params: dict[str, Any] | None = None, json: Any = None) -> Any:
        """One Lime call; the decoded JSON body (None for 204)."""
        self.breaker.before_call()
        try:
            result = self._request(method, path, params, json)
        except LimeUnavailable as err:
            if err.status == 429:
                self.breaker.success()  # Lime is up, only busy
            else:
                self.breaker.failure()
            raise
        except LimeRejected:
            self.breaker.success()
            raise
        self.breaker.success()
        return result

    def _request(self, method: str, path: str, params: dict[str, Any] | None, json: Any) -> Any:
        if path.startswith("http"):
            url = path
        elif self.base_url.endswith("/") and not path.startswith("/"):
            url = self.base_url + path
        else:
            url = urljoin(self.base_url, path)
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params, doseq=True)
        headers, body = self.headers, None
        if json is not None:
            headers = self._json_headers
            body = jsonlib.dumps(json, allow_nan=False).encode()
        metrics = lime_metrics()
        metrics.waited(self.bucket.acquire())
        with self._lock:
            self._calls[method] += 1
        started = time.perf_counter()
        try:
            answer = self.transport.send(method, url, body, headers)
        except pycurl.error as err:
            metrics.answered(method, "unreachable", time.perf_counter() - started)
            raise _unreachable(err, method) from None
        status = answer.status
        metrics.answered(method, status, time.perf_counter() - started)
        if status < 500:
            with self._lock:
                self._answers += 1
        if status < 300:
            if status == 204 or not answer.data:
                return None
            try:
                return jsonlib.loads(answer.data)
            except ValueError:
                raise LimeUnavailable(f"Lime sent a {status} that is not JSON", status=status) from None
        code, message = _error_body(answer)
        if status == 429 or status >= 500:
            raise LimeUnavailable(f"Lime answered {status}: {message}", _retry_after(answer), status)
        if status in (401, 403):
            # A refused key is a configuration problem: wait rather than fail every message.
            raise LimeUnavailable(f"Lime refused the API key ({status}): {message}", None, status)
        raise LimeRejected(status, code, message)

    # ------------------------------------------------------------------ API

    def probe(self, limetype: str) -> None:
        """A cheap call that shows whether Lime is back (goes through the breaker)."""
        self.request("GET", f"limetype/{limetype}/")

    def limetypes(self) -> dict[str, dict[str, Any]]:
        """Limetype name -> {"name", "properties": {name: property}}."""
        body = self.request("GET", "limetype/", params={"_embed": "limetypes.properties"})
        out: dict[str, dict[str, Any]] = {}
        for lt in body.get("_embedded", {}).get("limetypes", []):
            props = lt.get("_embedded", {}).get("properties", [])
            out[lt["name"]] = {"name": lt["name"], "properties": {p["name"]: p for p in props}}
        return out

    def get(self, limetype: str, object_id: int) -> dict[str, Any]:
        return self.request("GET", f"limeobject/{limetype}/{object_id}/")

    def create(self, limetype: str, values: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"limeobject/{limetype}/", json=values)

    def update(self, limetype: str, object_id: int, values: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", f"limeobject/{limetype}/{object_id}/", json=values)

    def delete(self, limetype: str, object_id: int) -> None:
        self.request("DELETE", f"limeobject/{limetype}/{object_id}/")

    def list_page(self, limetype: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
        return _objects_and_next(self.request("GET", f"limeobject/{limetype}/", params=params))

    def pages(self, limetype: str, params: dict[str, Any] | None = None, page_size: int = 50,
              attempt: Callable[[Callable[[], Any]], Any] = lambda call: call(),
              start: str | None = None) -> Iterator[tuple[list[dict[str, Any]], str | None]]:
        """Each page of the objects matching ``params`` with the link to the next one
        (None on the last), following ``_links.next``; from ``start`` (a next link an
        earlier walk gave) when given. ``attempt`` runs each page's call (a caller may
        retry it through outages)."""
        if start is None:
            objects, next_url = attempt(lambda: self.list_page(limetype, {**(params or {}), "_limit": page_size}))
        else:
            objects, next_url = self._page_at(start, attempt)
        yield objects, next_url
        while next_url:
            objects, next_url = self._page_at(next_url, attempt)
            yield objects, next_url

    def _page_at(self, url: str, attempt: Callable[[Callable[[], Any]], Any]) -> tuple[list[dict[str, Any]],
                                                                                      str | None]:
        return _objects_and_next(attempt(partial(self.request, "GET", url)))

    def iterate(self, limetype: str, params: dict[str, Any] | None = None, page_size: int = 50,
                attempt: Callable[[Callable[[], Any]], Any] = lambda call: call()) -> Iterator[dict[str, Any]]:
        """Every object matching ``params``, following ``_links.next``. ``attempt``
        runs each page's call (a caller may retry it through outages)."""
        for objects, _ in self.pages(limetype, params, page_size, attempt):
            yield from objects

    def find(self, limetype: str, prop: str, value: Any, limit: int = 2) -> list[dict[str, Any]]:
        """Objects whose ``prop`` equals ``value`` (one page of at most ``limit``)."""
        objects, _ = self.list_page(limetype, {prop: value, "_limit": limit})
        return objects
