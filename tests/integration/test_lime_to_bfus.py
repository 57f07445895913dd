"""Lime -> BFUS end to end, over real HTTP and RabbitMQ: Lime's signed webhooks reach
the receiver, workers read the company, send BFUS only what a person changed, and the
integration's own writes never come back as writes (docs/lime-to-bfus.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from deadletters.service import DeadLetters
from sandbox.bfus.changes import ChangeMix
from sandbox.stack import Stack, wait_for
from shared.lime import LimeClient, option_key
from shared.logrecords import status_of


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    stack = make_stack(partitions=4, outbound=True, lime_settings={"webhook_retry_base": 0.2})
    stack.start(workers=1)
    stack.subscribe_webhooks()
    return stack


def lime(stack: Stack) -> LimeClient:
    return LimeClient(stack.config.lime)


def bfus_customer(stack: Stack, customerno: str) -> dict[str, Any]:
    found = stack.bfus.store.get("customer", customerno)
    assert found is not None
    return found["data"]


def companies(stack: Stack, **match: Any) -> list[dict[str, Any]]:
    return [c for c in stack.lime_objects("company") if all(c.get(k) == v for k, v in match.items())]


def records(stack: Stack, direction: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    processed, failed = stack.log_records()
    return ([r for r in processed if option_key(r.get("direction")) == direction],
            [r for r in failed if option_key(r.get("direction")) == direction])


def synced_customers(stack: Stack, count: int) -> list[str]:
    stack.bfus.changes.make(count * 3, customers=count, mix=ChangeMix(update=1.0, delete=0.0))
    stack.wait_quiet()
    numbers = sorted(c["customerno"] for c in stack.lime_objects("company"))
    assert numbers == sorted(stack.bfus.store.keys("customer"))
    return numbers


def test_an_edit_in_lime_reaches_bfus_once_and_its_echo_stops(stack: Stack) -> None:
    customerno = synced_customers(stack, 3)[0]
    company = companies(stack, customerno=customerno)[0]
    lime(stack).update("company", company["_id"], {"phone": "+46701234567", "postalcity": "Lund"})
    wait_for(lambda: bfus_customer(stack, customerno)["phone"] == "+46701234567", 30, "the edit to reach BFUS")
    stack.wait_quiet()
    assert bfus_customer(stack, customerno)["city"] == "Lund"
    assert stack.bfus.writes == {"POST": 0, "PUT": 1}  # BFUS's echo of it came back and stopped there
    sent, failed = records(stack, "to_bfus")
    assert failed == []
    assert [(r["operation"], r["customerno"], r["limeobjectid"]) for r in sent] == [
        ("updated", customerno, company["_id"])]
    assert "phone" in sent[0]["detail"] and "city" in sent[0]["detail"]
    lime_now = lime(stack).get("company", company["_id"])
    assert (lime_now["phone"], lime_now["postalcity"]) == ("+46701234567", "Lund")


def test_a_company_created_in_lime_is_created_in_bfus_and_linked_without_a_duplicate(stack: Stack) -> None:
    synced_customers(stack, 2)
    created = lime(stack).create("company", {
        "name": "Kvarnbackens Bageri AB", "customertype": "company", "registrationno": "556036-0793",
        "postaladdress1": "Kvarnvägen 3", "postalzipcode": "223 50", "postalcity": "Lund",
        "email": "info@kvarnbacken.example", "sendtobfus": True})
    wait_for(lambda: lime(stack).get("company", created["_id"]).get("customerno"), 30, "the customer number")
    stack.wait_quiet()
    customerno = lime(stack).get("company", created["_id"])["customerno"]
    customer = bfus_customer(stack, customerno)
    assert (customer["name"], customer["orgno"], customer["city"]) == ("Kvarnbackens Bageri AB", "556036-0793", "Lund")
    assert len(companies(stack, customerno=customerno)) == 1  # BFUS's own message updated the same company
    assert len(stack.lime_objects("company")) == 3
    assert stack.bfus.writes == {"POST": 1, "PUT": 0}
    sent, _ = records(stack, "to_bfus")
    assert [(r["operation"], r["customerno"]) for r in sent] == [("created", customerno)]
    applied, _ = records(stack, "from_bfus")
    assert any(r["customerno"] == customerno and r["limeobjectid"] == created["_id"] for r in applied)


def test_a_company_not_marked_for_bfus_stays_in_lime(stack: Stack) -> None:
    lime(stack).create("company", {"name": "Prospekt AB", "customertype": "company",
                                   "registrationno": "556036-0793"})
    stack.wait_quiet()
    assert stack.bfus.writes == {"POST": 0, "PUT": 0}
    assert records(stack, "to_bfus") == ([], [])


def test_bfus_changes_applied_to_lime_cause_no_call_to_bfus(stack: Stack) -> None:
    """1,000 BFUS changes with webhooks on: every write to Lime fires a webhook, and
    none of them makes the integration write to BFUS (nor even read it)."""
    stack.bfus.changes.make(1000, customers=100)
    stack.wait_quiet(timeout=180)
    webhooks = stack.lime.app.extensions["lime_webhooks"].stats
    processed, failed = records(stack, "from_bfus")
    assert (len(processed), failed) == (1000, [])
    requests = stack.lime.faults.stats()["requests"]
    writes = requests.get("PUT company", 0) + requests.get("POST company", 0)
    assert writes > 0 and webhooks["delivered"] >= writes  # each company write came back as an event
    assert stack.bfus.writes == {"POST": 0, "PUT": 0}
    assert records(stack, "to_bfus") == ([], [])


def test_a_change_bfus_refuses_is_a_failed_record_and_a_dead_letter_that_requeues(stack: Stack) -> None:
    customerno = synced_customers(stack, 2)[0]
    company = companies(stack, customerno=customerno)[0]
    lime(stack).update("company", company["_id"], {"email": "not an address"})
    wait_for(lambda: records(stack, "to_bfus")[1], 30, "the failed record")
    stack.wait_quiet()
    _, failed = records(stack, "to_bfus")
    assert [(r["reason"], r["customerno"], r["company"]) for r in failed] == [
        ("bfus_rejected", customerno, company["_id"])]
    assert "email" in failed[0]["error"] and "422" in failed[0]["error"]
    assert bfus_customer(stack, customerno)["email"] != "not an address"
    dead = DeadLetters(stack.config.broker, lime(stack), stack.config.lime.failed_limetype)
    assert [letter.record_id for letter in dead.letters()] == [failed[0]["_id"]]

    lime(stack).update("company", company["_id"], {"email": "kontor@example.se"})  # a person mends it
    stack.wait_quiet()
    actions = dead.requeue([failed[0]["_id"]])
    assert [a.record_id for a in actions] == [failed[0]["_id"]] and "requeued" in actions[0].what
    wait_for(lambda: status_of(lime(stack).get(stack.config.lime.failed_limetype, failed[0]["_id"])) == "resolved",
             30, "the failed record to be resolved")
    stack.wait_quiet()
    assert bfus_customer(stack, customerno)["email"] == "kontor@example.se"
    assert dead.letters() == []


def test_bfus_down_for_30_seconds_loses_no_change(stack: Stack) -> None:
    numbers = synced_customers(stack, 5)
    stack.bfus.unavailable = True
    for number, city in zip(numbers, ("Ystad", "Kiruna", "Visby", "Mora", "Åre"), strict=True):
        lime(stack).update("company", companies(stack, customerno=number)[0]["_id"], {"postalcity": city})
    wait_for(lambda: stack.lime.app.extensions["lime_webhooks"].pending() == 0, 30, "Lime to deliver the events")
    time.sleep(30)  # the outage itself, not a wait for something to happen
    assert stack.bfus.writes == {"POST": 0, "PUT": 0}
    stack.bfus.unavailable = False
    stack.wait_quiet(timeout=60)
    assert [bfus_customer(stack, n)["city"] for n in numbers] == ["Ystad", "Kiruna", "Visby", "Mora", "Åre"]
    sent, failed = records(stack, "to_bfus")
    assert (len(sent), failed) == (5, [])


def test_a_change_whose_webhook_lime_dropped_is_caught_by_the_sweep(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=4, outbound=True, config={"outbound": {"sweep_interval": 0.5}},
                       lime_settings={"webhook_retry_base": 0.2}).start(workers=1)
    stack.subscribe_webhooks()
    customerno = synced_customers(stack, 3)[1]
    webhooks = stack.lime.app.extensions["lime_webhooks"]
    webhooks.lose_rate = 1.0  # from now on Lime sends nothing
    company = companies(stack, customerno=customerno)[0]
    lime(stack).update("company", company["_id"], {"postaladdress1": "Sjövägen 9"})
    wait_for(lambda: bfus_customer(stack, customerno)["street"] == "Sjövägen 9", 30, "the sweep to send the edit")
    stack.wait_quiet()
    assert webhooks.stats["lost"] >= 1
    assert stack.bfus.writes == {"POST": 0, "PUT": 1}
    sent, failed = records(stack, "to_bfus")
    assert ([r["customerno"] for r in sent], failed) == ([customerno], [])


def test_a_refusal_of_a_swept_change_is_recorded_against_its_customer(make_stack: Callable[..., Stack]) -> None:
    """A swept event names only the company; its failed record still names the
    customer and the update that BFUS refused, as a webhook's would."""
    stack = make_stack(partitions=4, outbound=True, config={"outbound": {"sweep_interval": 0.5}},
                       lime_settings={"webhook_retry_base": 0.2}).start(workers=1)
    stack.subscribe_webhooks()
    customerno = synced_customers(stack, 2)[0]
    stack.lime.webhooks.lose_rate = 1.0
    company = companies(stack, customerno=customerno)[0]
    lime(stack).update("company", company["_id"], {"email": "not an address"})
    wait_for(lambda: records(stack, "to_bfus")[1], 30, "the sweep's failed record")
    _, failed = records(stack, "to_bfus")
    assert [(r["reason"], r["operation"], r["customerno"], r["key"], r["company"]) for r in failed] == [
        ("bfus_rejected", "updated", customerno, customerno, company["_id"])]


def test_a_refusal_met_again_adds_to_its_open_failed_record(stack: Stack) -> None:
    """Another webhook (or a sweep) about a company BFUS refused, before anyone mended
    it: the open failed record takes BFUS's new answer; no second record or dead letter."""
    customerno = synced_customers(stack, 2)[0]
    company = companies(stack, customerno=customerno)[0]
    lime(stack).update("company", company["_id"], {"email": "not an address"})
    wait_for(lambda: records(stack, "to_bfus")[1], 30, "the failed record")
    stack.wait_quiet()
    lime(stack).update("company", company["_id"], {"email": "still@not@an.address", "postalcity": "Lund"})
    wait_for(lambda: records(stack, "to_bfus")[1][0]["attempts"] == 2, 30, "the second refusal")
    stack.wait_quiet()
    _, failed = records(stack, "to_bfus")
    assert [(r["reason"], r["attempts"], status_of(r)) for r in failed] == [("bfus_rejected", 2, "failed")]
    assert "email" in failed[0]["error"]
    dead = DeadLetters(stack.config.broker, lime(stack), stack.config.lime.failed_limetype)
    assert [letter.record_id for letter in dead.letters()] == [failed[0]["_id"]]
    assert bfus_customer(stack, customerno)["city"] != "Lund"  # BFUS refuses the change whole

    lime(stack).update("company", company["_id"], {"email": "kontor@example.se"})  # mended: the next edit goes
    wait_for(lambda: bfus_customer(stack, customerno)["email"] == "kontor@example.se", 30, "the mended change")
    assert bfus_customer(stack, customerno)["city"] == "Lund"


def test_an_edit_right_after_a_creation_reaches_bfus_before_bfus_tells_lime_of_the_customer(stack: Stack) -> None:
    """The number written back carries the fingerprint of what BFUS got, so an edit made
    before BFUS's own "created" message reaches Lime is sent, not overwritten by it."""
    stack.bfus.poster.pause()
    created = lime(stack).create("company", {
        "name": "Kvarnbackens Bageri AB", "customertype": "company", "registrationno": "556036-0793",
        "postaladdress1": "Kvarnvägen 3", "postalzipcode": "223 50", "postalcity": "Lund", "sendtobfus": True})
    customerno = wait_for(lambda: lime(stack).get("company", created["_id"]).get("customerno"), 30, "the number")
    lime(stack).update("company", created["_id"], {"postalcity": "Malmö"})
    wait_for(lambda: bfus_customer(stack, customerno)["city"] == "Malmö", 30, "the edit to reach BFUS")
    stack.bfus.poster.resume()
    stack.wait_quiet()
    assert lime(stack).get("company", created["_id"])["postalcity"] == "Malmö"
    assert stack.bfus.writes == {"POST": 1, "PUT": 1}
