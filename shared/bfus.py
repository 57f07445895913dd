"""BFUS API client (contract.md §4): paged object lists with the queue id each page
is as new as, and single customers (reads retried with backoff on connection trouble
and 5xx); customer writes and the outbound worker's reads are tried once, as the
worker holds its message and retries in order itself."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urljoin

import requests

from shared.config import BfusConfig
from shared.lime import USER_AGENT
from shared.retry import Backoff, retry, until

PLURALS = {"customer": "customers", "contract": "contracts", "facility": "facilities", "meter": "meters"}


class BfusError(Exception):
    pass


class BfusUnavailable(BfusError):
    """Try again later: BFUS unreachable, 5xx or 429."""


class BfusRejected(BfusError):
    """BFUS refused a write (400, 404, 409, 422): sending it again will not help.
    ``fields`` names each bad field, as BFUS said."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, Any] | None = None):
        super().__init__(f"BFUS answered {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}


class BfusClient:
    def __init__(self, config: BfusConfig, timeout: tuple[float, float] = (3.05, 60.0), attempts: int = 8,
                 stop: threading.Event | None = None):
        """``stop`` cuts a wait between retries short (BfusError then)."""
        self.base_url = config.url if config.url.endswith("/") else config.url + "/"
        self.timeout = timeout
        self.attempts = attempts
        self.stop = stop or threading.Event()
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {config.token}", "User-Agent": USER_AGENT,
                                     "Accept": "application/json"})
        self.calls = 0

    def _get(self, url: str, params: dict[str, Any] | None = None) -> Any:
        backoff = Backoff(0.5, 30.0)
        stopped = until(self.stop)
        try:
            return retry(lambda: self._get_once(url, params), (BfusUnavailable,), backoff,
                         lambda pause: backoff.attempt < self.attempts and stopped(pause))
        except BfusUnavailable as err:
            raise BfusError(f"{err} ({backoff.attempt} attempts)") from None

    def _get_once(self, url: str, params: dict[str, Any] | None) -> Any:
        self.calls += 1
        try:
            response = self.session.get(url, params=params, timeout=self.timeout)
        except requests.RequestException as err:
            raise BfusUnavailable(f"BFUS unreachable: {type(err).__name__}") from None
        if response.status_code < 300:
            return response.json()
        if response.status_code < 500 and response.status_code != 429:
            raise BfusError(f"BFUS answered {response.status_code} for {url}: {response.text[:300]}")
        raise BfusUnavailable(f"BFUS answered {response.status_code}")

    def list(self, objecttype: str, params: dict[str, Any] | None = None,
             page_size: int = 1000) -> Iterator[tuple[dict[str, Any], int]]:
        """Every object of a list as (object, queue id of its page): the page holds
        every change up to that id (it may hold later ones too)."""
        url: str | None = urljoin(self.base_url, f"api/v1/{PLURALS.get(objecttype, objecttype + 's')}")
        query: dict[str, Any] | None = {k: v for k, v in (params or {}).items() if v is not None}
        query = {**(query or {}), "limit": page_size, "offset": 0}
        while url:
            page = self._get(url, query)
            for item in page["items"]:
                yield item, int(page.get("queueid") or 0)
            url, query = page.get("next"), None

    def customer(self, customerno: str) -> dict[str, Any]:
        return self._get(urljoin(self.base_url, f"api/v1/customers/{customerno}"))

    # ------------------------------------------------------------------ tried once

    def _once(self, method: str, path: str, body: Any = None) -> Any:
        self.calls += 1
        try:
            response = self.session.request(method, urljoin(self.base_url, path), json=body, timeout=self.timeout)
        except requests.RequestException as err:
            raise BfusUnavailable(f"BFUS unreachable: {type(err).__name__}") from None
        if response.status_code >= 500 or response.status_code == 429:
            raise BfusUnavailable(f"BFUS answered {response.status_code}")
        try:
            found = response.json()
        except ValueError:
            found = None
        if response.status_code >= 300:
            found = found if isinstance(found, dict) else {}
            raise BfusRejected(response.status_code, str(found.get("error") or "error"),
                               str(found.get("message") or response.text[:300]),
                               found.get("fields") if isinstance(found.get("fields"), dict) else None)
        if not isinstance(found, dict):
            raise BfusUnavailable(f"BFUS answered {response.status_code} without a JSON object")
        return found

    def find_customer(self, customerno: str) -> dict[str, Any] | None:
        """The customer, or None when BFUS has none with that number."""
        try:
            return self._once("GET", f"api/v1/customers/{quote(customerno, safe='')}")
        except BfusRejected as err:
            if err.status == 404:
                return None
            raise

    def create_customer(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The new customer, with the number BFUS gave it."""
        return self._once("POST", "api/v1/customers", fields)

    def update_customer(self, customerno: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self._once("PUT", f"api/v1/customers/{quote(customerno, safe='')}", fields)

    def bookmark(self, objecttype: str, key: str, client: str) -> str:
        """The address of a BFUS bookmark opening one object in ``client`` (BFU or MFU),
        ``POST /api/v1/bookmarks`` (contract.md §4), tried once. BfusUnavailable,
        BfusRejected (BFUS's reason), or BfusError when the answer carries no url. The
        caller checks the address lies under bfus.ui_url before sending anyone there."""
        found = self._once("POST", "api/v1/bookmarks", {"objecttype": objecttype, "key": key, "client": client})
        url = found.get("url")
        if not isinstance(url, str) or not url:
            raise BfusError("BFUS answered a bookmark without a url")
        return url
