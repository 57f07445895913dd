"""The pure parts of managing Lime's webhook subscription (shared/subscriptions.py):
what differs, which duplicate is kept, and the receiver's public address it targets."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import ConfigError, build_config
from shared.subscriptions import COMPANY_EVENTS, Subscription, Wanted, changes, keeper

WANTED = Wanted("https://r.example/lime/events", "s3cret")


def shown(sub_id: int = 1, **over: Any) -> dict[str, Any]:
    """A subscription as Lime shows it (no secret), as wanted unless ``over`` says."""
    return {"id": sub_id, "events": list(COMPANY_EVENTS), "target_url": WANTED.target_url, "enabled": True,
            "dont_disable_on_failed_delivery": True, **over}


def test_a_subscription_as_wanted_differs_in_nothing_known_but_gets_its_hidden_secret_again() -> None:
    assert changes(shown(), WANTED) == ({"secret": "s3cret"}, ())
    assert changes(shown(events=list(reversed(COMPANY_EVENTS))), WANTED) == ({"secret": "s3cret"}, ())


def test_a_secret_lime_shows_is_compared() -> None:
    assert changes(shown(secret="s3cret"), WANTED) == ({}, ())
    assert changes(shown(secret="old"), WANTED) == ({"secret": "s3cret"}, ("secret",))


@pytest.mark.parametrize("over, differs", [
    ({"events": ["company.update"]}, "events"),
    ({"enabled": False}, "enabled"),
    ({"dont_disable_on_failed_delivery": False}, "dont_disable_on_failed_delivery"),
])
def test_what_differs_is_put(over: dict[str, Any], differs: str) -> None:
    body, differing = changes(shown(**over), WANTED)
    assert differing == (differs,) and body[differs] in (True, list(COMPANY_EVENTS)) and body["secret"] == "s3cret"


def test_a_lime_that_does_not_say_dont_disable_is_not_sent_it_on_update() -> None:
    raw = shown()
    del raw["dont_disable_on_failed_delivery"]
    assert changes(raw, WANTED) == ({"secret": "s3cret"}, ())
    assert Subscription.of(raw).dont_disable is None
    assert WANTED.create_body()["dont_disable_on_failed_delivery"] is True


def test_the_duplicate_kept_needs_fewest_changes_then_is_enabled_then_oldest() -> None:
    assert keeper([shown(1, enabled=False), shown(2), shown(3)], WANTED)["id"] == 2
    assert keeper([shown(4, events=["company.new"]), shown(5, enabled=False, events=["company.new"])],
                  WANTED)["id"] == 4
    assert keeper([shown(7), shown(6)], WANTED)["id"] == 6


def test_the_secret_never_shows() -> None:
    assert "s3cret" not in repr(WANTED)
    assert "s3cret" not in repr(Subscription.of({**shown(), "secret": "s3cret"}))


def test_public_url_is_the_receivers_base_address() -> None:
    assert build_config({}, {}).receiver.lime_events_url == ""
    receiver = build_config({"receiver": {"public_url": "https://r.example/integration"}}, {}).receiver
    assert (receiver.public_url, receiver.lime_events_url) == (
        "https://r.example/integration/", "https://r.example/integration/lime/events")
    for bad in ("r.example", "https://r.example/lime/events", "https://r.example/?x=1"):
        with pytest.raises(ConfigError) as caught:
            build_config({"receiver": {"public_url": bad}}, {})
        assert caught.value.problems[0].startswith("receiver.public_url: Must be")
