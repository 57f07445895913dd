"""Webhooks of the Lime stand-in, as contract.md §3 describes Lime's: subscriptions, signed
deliveries (v1 and v2) for API writes, retries, then a drop that disables the
subscription unless told not to."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, request

from sandbox.lime.app import LimeSandboxSettings, LimeStandIn
from sandbox.serve import ServerThread
from sandbox.stack import wait_for

KEY = {"X-API-Key": "dev-lime-key"}


class Receiver:
    """A webhook target that keeps what it gets and answers ``status``."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.lock = threading.Lock()
        app = Flask("target")

        @app.post("/hook")
        def hook() -> Response:
            with self.lock:
                self.got.append((dict(request.headers), request.get_data()))
            return Response(status=self.status)

        self.server = ServerThread(app).start()
        self.url = f"{self.server.url}hook"

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body in self.got]


@pytest.fixture
def lime(tmp_path: Path) -> Iterator[LimeStandIn]:
    standin = LimeStandIn(LimeSandboxSettings(db_path=tmp_path / "lime.db", webhook_retry_base=0.05,
                                              webhook_keys=("dev-lime-key",), api_keys=("dev-lime-key", "no-right"))
                          ).start()
    yield standin
    standin.close()


@pytest.fixture
def target() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.stop()


def subscribe(lime: LimeStandIn, target: Receiver, **extra: Any) -> dict[str, Any]:
    body = {"events": ["company.new", "company.update", "company.delete"], "target_url": target.url,
            "secret": "s3cret", **extra}
    response = requests.post(f"{lime.api_url}subscription/", json=body, headers=KEY, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()


def test_api_writes_are_delivered_signed_v2_with_values_and_original_values(lime: LimeStandIn,
                                                                            target: Receiver) -> None:
    subscription = subscribe(lime, target)
    assert "secret" not in subscription
    created = requests.post(f"{lime.api_url}limeobject/company/", json={"name": "Acme AB", "bfusstatus": "active"},
                            headers=KEY, timeout=10).json()
    requests.put(f"{lime.api_url}limeobject/company/{created['_id']}/", json={"name": "Acme Holding AB"},
                 headers=KEY, timeout=10)
    requests.delete(f"{lime.api_url}limeobject/company/{created['_id']}/", headers=KEY, timeout=10)
    wait_for(lambda: len(target.got) == 3, 10, "three deliveries")
    new, update, delete = target.events()
    assert new["event"] == "company.new" and new["body"]["values"]["name"] == "Acme AB"
    assert new["body"]["values"]["bfusstatus"] == "active" and new["body"]["values"]["id"] == created["_id"]
    assert {"timestamp", "createdtime"} <= set(new["body"]["values"])
    assert update["body"]["original_values"] == {"name": "Acme AB"}
    assert delete == {"event": "company.delete", "body": {"id": created["_id"], "limetype": "company"}}
    headers, body = target.got[0]
    signed = f"v2:{headers['X-Lime-Delivery-Id']}:{headers['X-Lime-Delivery-Timestamp']}:" \
             f"{hashlib.sha256(body).hexdigest()}"
    assert headers["X-Lime-Signature"] == "v2=" + hmac.new(b"s3cret", signed.encode(), hashlib.sha256).hexdigest()


def test_v1_signs_the_raw_body(lime: LimeStandIn, target: Receiver) -> None:
    subscribe(lime, target, signature="v1")
    requests.post(f"{lime.api_url}limeobject/company/", json={"name": "Acme AB"}, headers=KEY, timeout=10)
    wait_for(lambda: target.got, 10, "a delivery")
    headers, body = target.got[0]
    assert headers["X-Lime-Signature"] == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()


def test_a_failing_target_gets_five_tries_then_the_subscription_is_disabled(lime: LimeStandIn,
                                                                            target: Receiver) -> None:
    target.status = 500
    subscription = subscribe(lime, target)
    requests.post(f"{lime.api_url}limeobject/company/", json={"name": "Acme AB"}, headers=KEY, timeout=10)
    wait_for(lambda: lime.webhooks.stats["dropped"] == 1, 20, "the delivery to be dropped")
    assert len(target.got) == 5
    ids = {h["X-Lime-Delivery-Id"] for h, _ in target.got}
    assert len(ids) == 1  # the same delivery tried again
    shown = requests.get(f"{lime.api_url}subscription/{subscription['id']}/", headers=KEY, timeout=10).json()
    assert shown["enabled"] is False


def test_dont_disable_keeps_the_subscription_after_a_drop(lime: LimeStandIn, target: Receiver) -> None:
    target.status = 503
    subscription = subscribe(lime, target, dont_disable_on_failed_delivery=True)
    requests.post(f"{lime.api_url}limeobject/company/", json={"name": "Acme AB"}, headers=KEY, timeout=10)
    wait_for(lambda: lime.webhooks.stats["dropped"] == 1, 20, "the delivery to be dropped")
    shown = requests.get(f"{lime.api_url}subscription/{subscription['id']}/", headers=KEY, timeout=10).json()
    assert shown["enabled"] is True


def test_subscriptions_are_listed_filtered_changed_and_removed(lime: LimeStandIn, target: Receiver) -> None:
    first = subscribe(lime, target)
    subscribe(lime, target, events=["company.update"], target_url=target.url + "?other=1")
    url = f"{lime.api_url}subscription/"
    listed = requests.get(url, params={"target_url": target.url}, headers=KEY, timeout=10).json()
    assert [s["id"] for s in listed["_embedded"]["subscriptions"]] == [first["id"]]
    assert len(requests.get(url, params={"events": "company.update"}, headers=KEY, timeout=10)
               .json()["_embedded"]["subscriptions"]) == 2
    changed = requests.put(f"{url}{first['id']}/", json={"enabled": False}, headers=KEY, timeout=10).json()
    assert changed["enabled"] is False
    assert requests.delete(f"{url}{first['id']}/", headers=KEY, timeout=10).status_code == 204
    assert requests.get(f"{url}{first['id']}/", headers=KEY, timeout=10).status_code == 404
    available = requests.get(f"{url}available/", headers=KEY, timeout=10).json()["events"]
    assert {"company.new", "company.update", "company.delete", "company.restore"} <= set(available)


def test_a_key_without_the_right_cannot_manage_webhooks(lime: LimeStandIn, target: Receiver) -> None:
    refused = requests.get(f"{lime.api_url}subscription/", headers={"X-API-Key": "no-right"}, timeout=10)
    assert refused.status_code == 403 and "Webhook Users" in refused.json()["message"]
    assert requests.get(f"{lime.api_url}limeobject/company/", headers={"X-API-Key": "no-right"},
                        timeout=10).status_code == 200


def test_lost_and_duplicated_deliveries_can_be_asked_for(lime: LimeStandIn, target: Receiver) -> None:
    subscribe(lime, target)
    admin = {"X-Admin-Key": "dev-lime-admin"}
    set_rates = requests.put(f"{lime.server.url}_admin/webhooks", json={"duplicate_rate": 1.0}, headers=admin,
                             timeout=10)
    assert set_rates.status_code == 200
    requests.post(f"{lime.api_url}limeobject/company/", json={"name": "Acme AB"}, headers=KEY, timeout=10)
    wait_for(lambda: len(target.got) == 2, 10, "a duplicated delivery")
    requests.put(f"{lime.server.url}_admin/webhooks", json={"duplicate_rate": 0.0, "lose_rate": 1.0}, headers=admin,
                 timeout=10)
    requests.post(f"{lime.api_url}limeobject/company/", json={"name": "Lost AB"}, headers=KEY, timeout=10)
    stats = requests.get(f"{lime.server.url}_admin/webhooks", headers=admin, timeout=10).json()
    assert stats["lost"] == 1 and stats["duplicated"] == 1 and len(target.got) == 2


def test_the_next_deliveries_of_one_object_or_of_any_can_be_lost_or_sent_twice(lime: LimeStandIn,
                                                                                target: Receiver) -> None:
    """lose_next / duplicate_next: a test chooses which deliveries go wrong (the rates
    above choose by chance)."""
    subscribe(lime, target)
    admin = {"X-Admin-Key": "dev-lime-admin"}

    def faults(**body: Any) -> requests.Response:
        return requests.put(f"{lime.server.url}_admin/webhooks", json=body, headers=admin, timeout=10)

    def write(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.request(method, f"{lime.api_url}limeobject/company/{path}", json=body, headers=KEY,
                                    timeout=10)
        response.raise_for_status()
        return response.json()

    one, two = write("POST", "", {"name": "Ett AB"}), write("POST", "", {"name": "Två AB"})
    wait_for(lambda: len(target.got) == 2, 10, "both creates delivered")
    answer = faults(lose_next=2, object_id=one["_id"])
    assert answer.status_code == 200 and answer.json()["lose_next"] == 2
    faults(duplicate_next=1, object_id=two["_id"])
    for name in ("Ett 2 AB", "Ett 3 AB", "Ett 4 AB"):
        write("PUT", f"{one['_id']}/", {"name": name})
    write("PUT", f"{two['_id']}/", {"name": "Två 2 AB"})
    write("PUT", f"{two['_id']}/", {"name": "Två 3 AB"})
    wait_for(lambda: lime.webhooks.pending() == 0 and len(target.got) >= 6, 10, "the deliveries")
    names = sorted(e["body"]["values"]["name"] for e in target.events()[2:])
    assert names == ["Ett 4 AB", "Två 2 AB", "Två 2 AB", "Två 3 AB"]  # one's next two lost, two's next one twice
    stats = requests.get(f"{lime.server.url}_admin/webhooks", headers=admin, timeout=10).json()
    assert (stats["lost"], stats["duplicated"], stats["lose_next"], stats["duplicate_next"]) == (2, 1, 0, 0)

    faults(lose_next=1)  # the next delivery, whatever it is about
    write("PUT", f"{two['_id']}/", {"name": "Två 4 AB"})
    write("PUT", f"{one['_id']}/", {"name": "Ett 5 AB"})
    wait_for(lambda: lime.webhooks.pending() == 0 and len(target.got) >= 7, 10, "the delivery")
    assert [e["body"]["values"]["name"] for e in target.events()[6:]] == ["Ett 5 AB"]

    faults(lose_next=3, object_id=one["_id"])
    faults(lose_next=0, object_id=one["_id"])  # taken back
    write("PUT", f"{one['_id']}/", {"name": "Ett 6 AB"})
    wait_for(lambda: len(target.got) == 8, 10, "the delivery")
    for bad in ({"lose_next": -1}, {"duplicate_next": 1.5}, {"lose_next": True}, {"lose_next": 1, "object_id": "1"},
                {"lose_rate": 2, "lose_next": 1}):
        assert faults(**bad).status_code == 400, bad
    assert lime.webhooks.pending_faults() == {"lose_next": 0, "duplicate_next": 0}  # a refused body sets nothing
