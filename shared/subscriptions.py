"""Lime's webhook subscriptions (contract.md §3), managed idempotently: one
subscription per target URL, with the company events, the receiver's secret, enabled,
and ``dont_disable_on_failed_delivery`` (by default Lime switches a subscription off
after a single dropped delivery). ``bfus-lime webhooks`` uses it; so can anything
else that subscribes a receiver (the sandbox's stack).

Lime answers 403 when the API key's user is neither an administrator nor in the group
"Webhook Users": that ends as :class:`WebhookRightMissing`, never as the "try again
later" the worker makes of a refused key. A subscription's secret is never kept or
shown here; Lime itself does not show it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.lime import LimeClient, LimeError, LimeUnavailable

COMPANY_EVENTS = ("company.new", "company.update", "company.delete", "company.restore")
RIGHT = 'an administrator or a member of the group "Webhook Users"'


class WebhookRightMissing(LimeError):
    """Lime refused to manage webhooks for this API key (403)."""


@dataclass(frozen=True)
class Subscription:
    """A subscription as Lime shows it, without its secret. ``dont_disable`` is None
    when Lime does not say."""

    id: int
    events: tuple[str, ...]
    target_url: str
    enabled: bool
    dont_disable: bool | None = None

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Subscription:
        dont = raw.get("dont_disable_on_failed_delivery")
        return cls(int(raw["id"]), tuple(str(e) for e in raw.get("events") or ()), str(raw.get("target_url") or ""),
                   bool(raw.get("enabled", True)), None if dont is None else bool(dont))


@dataclass(frozen=True)
class Wanted:
    """What the subscription for one target should be."""

    target_url: str
    secret: str = field(repr=False)
    events: tuple[str, ...] = COMPANY_EVENTS
    extra: Mapping[str, Any] = field(default_factory=dict)  # more for a new one (the stand-in's "signature")

    def create_body(self) -> dict[str, Any]:
        return {**self.extra, "events": list(self.events), "target_url": self.target_url, "secret": self.secret,
                "dont_disable_on_failed_delivery": True}


def changes(found: Mapping[str, Any], wanted: Wanted) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The PUT body that brings ``found`` (as Lime shows it) to ``wanted``, and the names
    of what is known to differ. Lime may not show the secret: then it cannot be
    compared, and it is part of the body whenever anything is, and on its own otherwise
    (sending it is harmless; not sending a changed one would leave deliveries refused)."""
    body: dict[str, Any] = {}
    if set(found.get("events") or ()) != set(wanted.events):
        body["events"] = list(wanted.events)
    if found.get("enabled") is not True:
        body["enabled"] = True
    if found.get("dont_disable_on_failed_delivery") is False:
        body["dont_disable_on_failed_delivery"] = True
    if "secret" not in found or found["secret"] != wanted.secret:
        body["secret"] = wanted.secret
    differing = tuple(k for k in body if k != "secret" or "secret" in found)
    return body, differing


def keeper(found: Sequence[Mapping[str, Any]], wanted: Wanted) -> Mapping[str, Any]:
    """Of several subscriptions for one target, the one to keep: the one needing the
    fewest changes, then an enabled one, then the oldest (lowest id)."""
    return min(found, key=lambda s: (len(changes(s, wanted)[1]), s.get("enabled") is not True, int(s["id"])))


@dataclass(frozen=True)
class Registered:
    """What ``register`` did. ``action``: created | updated | unchanged; ``changed``
    names what was known to differ; ``secret_sent``: the secret went with a PUT because
    Lime does not show it; ``removed``: the ids of duplicates deleted."""

    subscription_id: int
    action: str
    changed: tuple[str, ...] = ()
    secret_sent: bool = False
    removed: tuple[int, ...] = ()


class Subscriptions:
    def __init__(self, lime: LimeClient):
        self.lime = lime

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self.lime.request(method, path, **kwargs)
        except LimeUnavailable as err:
            if err.status == 403:
                raise WebhookRightMissing(
                    f"Lime at {self.lime.base_url} refused to manage webhooks (403): the user of lime.api_key must be "
                    f"{RIGHT}.") from None
            raise

    def _raw(self, target_url: str | None = None) -> Iterator[dict[str, Any]]:
        params = {"target_url": target_url} if target_url else None
        body = self._call("GET", "subscription/", params=params)
        while True:
            for raw in (body or {}).get("_embedded", {}).get("subscriptions", []):
                if target_url is None or raw.get("target_url") == target_url:
                    yield raw
            next_url = (body or {}).get("_links", {}).get("next", {}).get("href")
            if not next_url:
                return
            body = self._call("GET", next_url)

    def listing(self, target_url: str | None = None) -> list[Subscription]:
        """Every subscription (or those for ``target_url``), by id."""
        return sorted((Subscription.of(raw) for raw in self._raw(target_url)), key=lambda s: s.id)

    def register(self, wanted: Wanted) -> Registered:
        """Exactly one subscription for ``wanted.target_url``, as wanted: created when
        there is none, changed (PUT) where it differs, duplicates deleted."""
        found = list(self._raw(wanted.target_url))
        if not found:
            created = self._call("POST", "subscription/", json=wanted.create_body())
            return Registered(int(created["id"]), "created")
        keep = keeper(found, wanted)
        body, differing = changes(keep, wanted)
        if body:
            self._call("PUT", f"subscription/{int(keep['id'])}/", json=body)
        removed = tuple(sorted(int(s["id"]) for s in found if s is not keep))
        for sub_id in removed:
            self._delete(sub_id)
        return Registered(int(keep["id"]), "updated" if differing else "unchanged", differing,
                          "secret" in body and "secret" not in keep, removed)

    def remove(self, target_url: str) -> list[int]:
        """Delete every subscription for ``target_url``; their ids."""
        removed = sorted(int(raw["id"]) for raw in self._raw(target_url))
        for sub_id in removed:
            self._delete(sub_id)
        return removed

    def _delete(self, sub_id: int) -> None:
        try:
            self._call("DELETE", f"subscription/{sub_id}/")
        except LimeError as err:
            if getattr(err, "status", None) != 404:  # gone already: what was wanted
                raise
