"""``bfus-lime webhooks register | list | remove`` and ``bfus-lime send-to-bfus``, run as
the command itself (a process of its own, configured by environment) against the Lime
and BFUS stand-ins over real HTTP, and with a real broker and worker where a change
comes back from BFUS (docs/lime-to-bfus.md)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox.bfus.changes import ChangeMix
from sandbox.lime.app import LimeSandboxSettings, LimeStandIn
from sandbox.stack import BFUS_LIME, Stack, config_environment, wait_for
from shared.config import deep_merge
from shared.lime import LimeClient, option_key
from shared.subscriptions import COMPANY_EVENTS

PUBLIC = "https://bfus-lime.example.se/"
TARGET = PUBLIC + "lime/events"


def bfus_lime(raw: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFUSLIME_", "RABBITMQ_URL"))}
    result = subprocess.run([*BFUS_LIME, *args], env={**env, **config_environment(raw)}, capture_output=True,
                            text=True, timeout=120)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


# ----------------------------------------------------------------------------- webhooks


def lime_config(lime: LimeStandIn, secret: str = "first-secret", **receiver: Any) -> dict[str, Any]:
    return {"lime": {"url": lime.api_url, "api_key": lime.api_key},
            "receiver": {"lime_secret": secret, "public_url": PUBLIC, **receiver}}


def ours(lime: LimeStandIn, target: str = TARGET) -> list[Any]:
    return lime.webhooks.find(target_url=target)


def test_register_twice_leaves_one_subscription_that_lime_never_switches_off(lime: LimeStandIn) -> None:
    first = bfus_lime(lime_config(lime), "webhooks", "register")
    assert first.returncode == 0, first.stderr
    [sub] = ours(lime)
    assert f"subscription {sub.id} for {TARGET}: created" in first.stdout
    again = bfus_lime(lime_config(lime), "webhooks", "register")
    assert again.returncode == 0, again.stderr
    assert f"subscription {sub.id} for {TARGET}: already as wanted" in again.stdout
    assert [s.id for s in lime.webhooks.find()] == [sub.id]
    assert (sub.events, sub.enabled, sub.dont_disable_on_failed_delivery, sub.secret) == (
        list(COMPANY_EVENTS), True, True, "first-secret")


def test_register_removes_duplicates_for_the_target_and_leaves_other_targets(lime: LimeStandIn) -> None:
    disabled = lime.webhooks.subscribe(["company.update"], TARGET, "old")
    lime.webhooks.update(disabled.id, {"enabled": False})
    good = lime.webhooks.subscribe(list(COMPANY_EVENTS), TARGET, "first-secret", dont_disable=True)
    other = lime.webhooks.subscribe(["company.new"], "https://elsewhere.example/hook", "theirs")
    result = bfus_lime(lime_config(lime), "webhooks", "register")
    assert result.returncode == 0, result.stderr
    assert [s.id for s in ours(lime)] == [good.id]  # the one already as wanted is kept
    assert f"duplicates removed: {disabled.id}" in result.stdout
    assert lime.webhooks.get(other.id) is other and other.secret == "theirs"


def test_register_brings_a_changed_secret_and_a_switched_off_subscription_up_to_date(lime: LimeStandIn) -> None:
    assert bfus_lime(lime_config(lime), "webhooks", "register").returncode == 0
    [sub] = ours(lime)
    lime.webhooks.update(sub.id, {"enabled": False, "dont_disable_on_failed_delivery": False,
                                  "events": ["company.update"]})
    result = bfus_lime(lime_config(lime, secret="rotated-secret"), "webhooks", "register")
    assert result.returncode == 0, result.stderr
    assert f"subscription {sub.id} for {TARGET}: updated (events, enabled, dont_disable_on_failed_delivery)" \
        in result.stdout
    assert [s.id for s in ours(lime)] == [sub.id]
    assert (sub.secret, sub.enabled, sub.dont_disable_on_failed_delivery, sub.events) == (
        "rotated-secret", True, True, list(COMPANY_EVENTS))


def test_list_shows_the_subscriptions_and_never_a_secret(lime: LimeStandIn) -> None:
    assert bfus_lime(lime_config(lime), "webhooks", "register").returncode == 0
    other = lime.webhooks.subscribe(["company.new"], "https://elsewhere.example/hook", "their-secret")
    result = bfus_lime(lime_config(lime), "webhooks", "list")
    assert result.returncode == 0, result.stderr
    [sub] = ours(lime)
    lines = result.stdout.splitlines()
    [mine] = [line for line in lines if line.split()[0] == str(sub.id)]
    assert TARGET in mine and ",".join(COMPANY_EVENTS) in mine and "enabled" in mine and "this receiver" in mine
    [theirs] = [line for line in lines if line.split()[0] == str(other.id)]
    assert "https://elsewhere.example/hook" in theirs and "this receiver" not in theirs
    assert "secret" not in (result.stdout + result.stderr).lower()


def test_remove_deletes_every_subscription_for_the_target(lime: LimeStandIn) -> None:
    lime.webhooks.subscribe(list(COMPANY_EVENTS), TARGET, "a")
    lime.webhooks.subscribe(list(COMPANY_EVENTS), TARGET, "b")
    other = lime.webhooks.subscribe(["company.new"], "https://elsewhere.example/hook", "theirs")
    result = bfus_lime(lime_config(lime), "webhooks", "remove")
    assert result.returncode == 0, result.stderr
    assert ours(lime) == [] and [s.id for s in lime.webhooks.find()] == [other.id]
    again = bfus_lime(lime_config(lime), "webhooks", "remove")
    assert (again.returncode, again.stdout.strip()) == (0, f"no subscription for {TARGET}")


def test_target_url_option_and_a_missing_public_url(lime: LimeStandIn) -> None:
    target = "https://other-receiver.example/lime/events"
    result = bfus_lime(lime_config(lime, public_url=""), "webhooks", "register", "--target-url", target)
    assert result.returncode == 0, result.stderr
    assert [s.target_url for s in lime.webhooks.find()] == [target]
    missing = bfus_lime(lime_config(lime, public_url=""), "webhooks", "register")
    assert missing.returncode == 2
    assert "receiver.public_url: Must be set" in missing.stderr


@pytest.mark.parametrize("command", ["register", "list", "remove"])
def test_a_key_without_the_webhook_right_is_one_line_naming_it(tmp_path: Path, command: str) -> None:
    standin = LimeStandIn(LimeSandboxSettings(db_path=tmp_path / "lime.db", webhook_keys=())).start()
    try:
        result = bfus_lime(lime_config(standin), "webhooks", command)
    finally:
        standin.close()
    assert result.returncode == 2, (result.returncode, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"bfus-lime webhooks {command}: Lime at {standin.api_url} refused to manage webhooks "
                           "(403)")
    assert 'administrator or a member of the group "Webhook Users"' in line


# ----------------------------------------------------------------------------- with the whole stack


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    """Outbound on, one worker; Lime has no subscription, so only the command sends."""
    return make_stack(partitions=4, outbound=True, lime_settings={"webhook_retry_base": 0.2}).start(workers=1)


def synced_customers(stack: Stack, count: int) -> list[str]:
    stack.bfus.changes.make(count * 3, customers=count, mix=ChangeMix(update=1.0, delete=0.0))
    stack.wait_quiet()
    numbers = sorted(c["customerno"] for c in stack.lime_objects("company"))
    assert numbers == sorted(stack.bfus.store.keys("customer"))
    return numbers


def company_of(stack: Stack, customerno: str) -> dict[str, Any]:
    [company] = [c for c in stack.lime_objects("company") if c.get("customerno") == customerno]
    return company


def bfus_customer(stack: Stack, customerno: str) -> dict[str, Any]:
    found = stack.bfus.store.get("customer", customerno)
    assert found is not None
    return found["data"]


def sent_records(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in stack.log_records()[0] if option_key(r.get("direction")) == "to_bfus"]


def test_the_registered_subscription_brings_a_lime_edit_to_bfus(stack: Stack) -> None:
    customerno = synced_customers(stack, 2)[0]
    result = bfus_lime(deep_merge(stack.raw, {"receiver": {"public_url": stack.receiver_url}}), "webhooks", "register")
    assert result.returncode == 0, result.stderr
    company = company_of(stack, customerno)
    LimeClient(stack.config.lime).update("company", company["_id"], {"postalcity": "Haparanda"})
    wait_for(lambda: bfus_customer(stack, customerno)["city"] == "Haparanda", 30, "the edit to reach BFUS")
    stack.wait_quiet()
    assert stack.bfus.writes == {"POST": 0, "PUT": 1}


def test_dry_run_shows_the_difference_and_writes_nothing(stack: Stack) -> None:
    customerno = synced_customers(stack, 2)[0]
    company = company_of(stack, customerno)
    LimeClient(stack.config.lime).update("company", company["_id"], {"phone": "+46701234567", "postalcity": "Lund"})
    before = (company_of(stack, customerno), stack.log_records(), dict(stack.bfus.writes))
    in_bfus = bfus_customer(stack, customerno)
    result = bfus_lime(stack.raw, "send-to-bfus", "--company", str(company["_id"]), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would update BFUS customer {customerno} (field: BFUS value -> Lime value):" in result.stdout
    assert f'phone: "{in_bfus["phone"]}" -> "+46701234567"' in result.stdout
    assert f'city: "{in_bfus["city"]}" -> "Lund"' in result.stdout
    assert "email:" not in result.stdout  # unchanged fields are not part of the difference
    assert (company_of(stack, customerno), stack.log_records(), stack.bfus.writes) == before
    assert stack.bfus.writes == {"POST": 0, "PUT": 0}


def test_send_updates_bfus_with_the_edit_and_logs_it_once(stack: Stack) -> None:
    customerno = synced_customers(stack, 2)[0]
    company = company_of(stack, customerno)
    LimeClient(stack.config.lime).update("company", company["_id"], {"phone": "+46701234567", "postalcity": "Lund"})
    result = bfus_lime(stack.raw, "send-to-bfus", "--company", str(company["_id"]))
    assert result.returncode == 0, result.stderr
    assert f"updated BFUS customer {customerno}: city, phone" in result.stdout
    assert (bfus_customer(stack, customerno)["phone"], bfus_customer(stack, customerno)["city"]) == (
        "+46701234567", "Lund")
    assert "+46701234567" not in result.stderr and "Lund" not in result.stderr  # the log lines hold no values
    stack.wait_quiet()  # BFUS's change message comes back and is applied; nothing goes to BFUS again
    assert stack.bfus.writes == {"POST": 0, "PUT": 1}
    assert [(r["operation"], r["customerno"], r["limeobjectid"]) for r in sent_records(stack)] == [
        ("updated", customerno, company["_id"])]
    again = bfus_lime(stack.raw, "send-to-bfus", "--company", str(company["_id"]))
    assert again.returncode == 0, again.stderr
    assert "nothing to send: no field that flows to BFUS was changed in Lime" in again.stdout
    assert stack.bfus.writes == {"POST": 0, "PUT": 1}


def test_send_creates_a_new_customer_and_links_its_number(stack: Stack) -> None:
    synced_customers(stack, 1)
    created = LimeClient(stack.config.lime).create("company", {
        "name": "Kvarnbackens Bageri AB", "customertype": "company", "registrationno": "556036-0793",
        "postaladdress1": "Kvarnvägen 3", "postalzipcode": "223 50", "postalcity": "Lund",
        "email": "info@kvarnbacken.example", "sendtobfus": True})
    dry = bfus_lime(stack.raw, "send-to-bfus", "--company", str(created["_id"]), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would create a customer in BFUS with:" in dry.stdout and 'orgno: "556036-0793"' in dry.stdout
    assert stack.bfus.writes == {"POST": 0, "PUT": 0}
    result = bfus_lime(stack.raw, "send-to-bfus", "--company", str(created["_id"]))
    assert result.returncode == 0, result.stderr
    customerno = LimeClient(stack.config.lime).get("company", created["_id"])["customerno"]
    assert customerno and f"created BFUS customer {customerno}" in result.stdout
    stack.wait_quiet()
    assert (bfus_customer(stack, customerno)["name"], bfus_customer(stack, customerno)["orgno"]) == (
        "Kvarnbackens Bageri AB", "556036-0793")
    assert company_of(stack, customerno)["_id"] == created["_id"]  # BFUS's message updated the same company
    assert len(stack.lime_objects("company")) == 2
    assert stack.bfus.writes == {"POST": 1, "PUT": 0}
    assert [(r["operation"], r["customerno"]) for r in sent_records(stack)] == [("created", customerno)]


def test_what_bfus_refuses_is_one_line_with_its_reason(stack: Stack) -> None:
    customerno = synced_customers(stack, 1)[0]
    company = company_of(stack, customerno)
    LimeClient(stack.config.lime).update("company", company["_id"], {"email": "not an address"})
    result = bfus_lime(stack.raw, "send-to-bfus", "--company", str(company["_id"]))
    assert result.returncode == 1, (result.returncode, result.stderr)
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("bfus-lime send-to-bfus: BFUS refused the update (422") and "email" in line
    assert bfus_customer(stack, customerno)["email"] != "not an address"
    assert sent_records(stack) == []


def test_an_unknown_company_is_one_line_naming_it(stack: Stack) -> None:
    result = bfus_lime(stack.raw, "send-to-bfus", "--company", "999999")
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.strip() == "bfus-lime send-to-bfus: Lime has no company 999999 (--company 999999)."
    assert stack.bfus.writes == {"POST": 0, "PUT": 0}


def test_send_to_bfus_needs_outbound_on(lime: LimeStandIn) -> None:
    raw = {**lime_config(lime), "bfus": {"token": "t"}}
    result = bfus_lime(raw, "send-to-bfus", "--company", "1")
    assert result.returncode == 2
    assert "outbound.enabled is false" in result.stderr
