"""BFUS API client (contract.md §4): paged object lists with the queue id each page
is as new as, and single customers. Bearer token, timeouts, retries with backoff on
connection trouble and 5xx."""

from __future__ import annotations

import random
import time
from typing import Any, Iterator
from urllib.parse import urljoin

import requests

from shared.config import BfusConfig
from shared.lime import USER_AGENT

PLURALS = {"customer": "customers", "contract": "contracts", "facility": "facilities", "meter": "meters"}


class BfusError(Exception):
    pass


class BfusClient:
    def __init__(self, config: BfusConfig, timeout: tuple[float, float] = (3.05, 60.0), attempts: int = 8):
        self.base_url = config.url if config.url.endswith("/") else config.url + "/"
        self.timeout = timeout
        self.attempts = attempts
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {config.token}", "User-Agent": USER_AGENT,
                                     "Accept": "application/json"})
        self.calls = 0

    def _get(self, url: str, params: dict[str, Any] | None = None) -> Any:
        for attempt in range(1, self.attempts + 1):
            self.calls += 1
            try:
                response = self.session.get(url, params=params, timeout=self.timeout)
            except requests.RequestException as err:
                problem = f"BFUS unreachable: {type(err).__name__}"
            else:
                if response.status_code < 300:
                    return response.json()
                if response.status_code < 500 and response.status_code != 429:
                    raise BfusError(f"BFUS answered {response.status_code} for {url}: {response.text[:300]}")
                problem = f"BFUS answered {response.status_code}"
            if attempt == self.attempts:
                raise BfusError(f"{problem} ({attempt} attempts)")
            time.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

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
