"""The /admin pages in headless Chromium: a failed message appears, is requeued once
its cause is fixed, and shows as resolved; with Lime -> BFUS on, the page filters by
direction and requeues a change BFUS refused. Screenshots of the list and the detail
view are written (to docs/ when BFUSLIME_SCREENSHOTS=docs)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from cli.main import main
from sandbox.bfus.changes import ChangeMix
from sandbox.stack import Stack, config_environment, wait_for
from shared.lime import LimeClient, option_key

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def contract(mid: int) -> dict[str, Any]:
    return {"id": mid, "timestamp": "2026-11-24T09:15:02+01:00", "objecttype": "contract", "operation": "created",
            "key": "5000021", "customerno": "400001",
            "data": {"contractno": "5000021", "customerno": "400001", "product": "districtheating",
                     "status": "active", "startdate": "2026-01-01"}}


def customer(mid: int) -> dict[str, Any]:
    return {"id": mid, "timestamp": "2026-11-24T09:16:00+01:00", "objecttype": "customer", "operation": "created",
            "key": "400001", "customerno": "400001",
            "data": {"customerno": "400001", "customertype": "company", "name": "Lindqvists Bageri AB"}}


ADMIN = {"admin": {"user": "ops", "password": "s3cret"}}


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(partitions=2, config=ADMIN).start(workers=1)


@contextmanager
def browser_page() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(http_credentials={"username": "ops", "password": "s3cret"},
                                      viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


@pytest.fixture
def page(stack: Stack) -> Iterator[Any]:
    with browser_page() as page:
        yield page


def shots(tmp_path: Path) -> Path:
    return Path("docs") if os.environ.get("BFUSLIME_SCREENSHOTS") == "docs" else tmp_path


def test_failed_message_is_requeued_after_the_fix_and_shows_resolved(stack: Stack, page: Any, tmp_path: Path) -> None:
    assert stack.post(contract(21)).status_code == 202
    assert stack.post(None, raw=b'{"id": 22, "objecttype": ').status_code == 400
    wait_for(lambda: len(stack.log_records()[1]) == 2, 30, "two failed messages")
    page.goto(f"{stack.receiver_url}admin/")
    row = page.locator("tr", has_text="missing_related")
    assert row.count() == 1 and "5000021" in row.inner_text() and "400001" in row.inner_text()
    assert "missing_related: 1" in page.inner_text(".reasons") and "invalid_json: 1" in page.inner_text(".reasons")
    page.wait_for_timeout(300)  # let the live counts frame draw before the picture
    page.screenshot(path=str(shots(tmp_path) / "admin-list.png"), full_page=True)

    row.locator("a").click()
    assert "refers to customer 400001" in page.inner_text("dl")
    assert '"product": "districtheating"' in page.inner_text("pre")
    assert page.inner_text("#status") == "failed"
    page.screenshot(path=str(shots(tmp_path) / "admin-detail.png"), full_page=True)

    assert stack.post(customer(23)).status_code == 202  # the cause is fixed: the customer exists
    wait_for(lambda: stack.lime_objects("company"), 30, "the customer in Lime")
    page.click("#requeue")
    assert "requeued to" in page.inner_text("[role=status]")
    record_id = int(page.url.split("/failed/")[1].split("?")[0])

    def resolved() -> bool:
        page.goto(f"{stack.receiver_url}admin/failed/{record_id}")
        return page.inner_text("#status") == "resolved"

    wait_for(resolved, 30, "the message to show as resolved", interval=0.5)
    assert "after requeue" in page.inner_text("#resolution")
    assert stack.lime_objects("agreement")[0]["company"] == stack.lime_objects("company")[0]["_id"]


def test_discard_from_the_page(stack: Stack, page: Any) -> None:
    assert stack.post(None, raw=b"garbage").status_code == 400
    wait_for(lambda: stack.log_records()[1], 30, "a failed message")
    record_id = stack.log_records()[1][0]["_id"]
    page.goto(f"{stack.receiver_url}admin/failed/{record_id}")
    page.fill("textarea[name=why]", "not a BFUS message")
    page.click("#discard")
    assert page.inner_text("#status") == "discarded"
    assert "not a BFUS message" in page.inner_text("#resolution")


def test_admin_needs_its_own_credentials_and_a_form_token(stack: Stack) -> None:
    url = f"{stack.receiver_url}admin/"
    assert requests.get(url, timeout=10).status_code == 401
    receiver_key = {"X-API-Key": "dev-receiver-key"}
    assert requests.get(url, headers=receiver_key, timeout=10).status_code == 401
    assert requests.get(url, auth=("ops", "wrong"), timeout=10).status_code == 401
    assert requests.get(url, auth=("ops", "s3cret"), timeout=10).status_code == 200
    forged = requests.post(f"{url}requeue", data={"reason": "x"}, auth=("ops", "s3cret"), timeout=10)
    assert forged.status_code == 403


def test_admin_is_off_without_a_password(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=2)
    stack.start_receiver()
    assert requests.get(f"{stack.receiver_url}admin/", auth=("admin", ""), timeout=10).status_code == 404


def test_the_page_filters_by_direction_and_requeues_a_change_bfus_refused(make_stack: Callable[..., Stack]) -> None:
    """One failed message each way: a BFUS contract whose customer Lime lacks (from_bfus)
    and a Lime edit BFUS refuses (to_bfus). The direction filter shows only the chosen
    one, counts both, and the to_bfus one requeues from its page once mended in Lime."""
    stack = make_stack(partitions=2, outbound=True, config=ADMIN, lime_settings={"webhook_retry_base": 0.2})
    stack.start(workers=1)
    stack.subscribe_webhooks()
    lime = LimeClient(stack.config.lime)
    stack.bfus.changes.make(2, customers=1, mix=ChangeMix(update=1.0, delete=0.0))
    stack.wait_quiet()
    company = stack.lime_objects("company")[0]
    customerno = company["customerno"]
    assert stack.post(contract(21)).status_code == 202  # customer 400001 is not in Lime: missing_related
    lime.update("company", company["_id"], {"email": "not an address"})  # BFUS refuses it: bfus_rejected
    wait_for(lambda: len(stack.log_records()[1]) == 2, 30, "two failed messages")
    stack.wait_quiet()
    failed = {option_key(r.get("direction")): r for r in stack.log_records()[1]}
    assert sorted(failed) == ["from_bfus", "to_bfus"]
    # the command reads every BFUSLIME_* variable as configuration: not this file's own
    env: dict[str, str | None] = {**config_environment(stack.raw), "BFUSLIME_SCREENSHOTS": None}
    listed = CliRunner().invoke(main, ["dlq", "list", "--direction", "to_bfus"], env=env, catch_exceptions=False)
    assert "1 message(s), status failed, direction to_bfus" in listed.output, listed.output
    assert "by reason: bfus_rejected 1" in listed.output and "by direction: from_bfus 0, to_bfus 1" in listed.output
    both = CliRunner().invoke(main, ["dlq", "list"], env=env, catch_exceptions=False)
    assert "by direction: from_bfus 1, to_bfus 1" in both.output, both.output

    with browser_page() as page:
        page.goto(f"{stack.receiver_url}admin/")
        assert page.locator("tbody tr").count() == 2
        counts = page.inner_text("#directions")
        assert "from_bfus (BFUS → Lime): 1" in counts and "to_bfus (Lime → BFUS): 1" in counts

        page.select_option("#direction", "to_bfus")
        page.click("form.filters button[type=submit]")
        assert "direction=to_bfus" in page.url
        rows = page.locator("tbody tr")
        assert rows.count() == 1 and rows.locator("td.direction").inner_text() == "to_bfus"
        assert customerno in rows.inner_text() and "bfus_rejected" in rows.inner_text()
        reasons = page.inner_text("#reasons")
        assert "bfus_rejected: 1" in reasons and "missing_related" not in reasons
        assert "to_bfus (Lime → BFUS): 1" in page.inner_text("#directions")  # both still counted

        page.goto(f"{stack.receiver_url}admin/?direction=from_bfus")
        rows = page.locator("tbody tr")
        assert rows.count() == 1 and rows.locator("td.direction").inner_text() == "from_bfus"
        assert "missing_related" in rows.inner_text() and "bfus_rejected" not in page.inner_text("#reasons")

        lime.update("company", company["_id"], {"email": "kontor@example.se"})  # a person mends it
        stack.wait_quiet()
        page.goto(f"{stack.receiver_url}admin/?direction=to_bfus")
        page.locator("tbody tr a").click()
        assert page.inner_text("#direction").startswith("to_bfus")
        page.click("#requeue")
        assert "requeued to" in page.inner_text("[role=status]")
        record_id = failed["to_bfus"]["_id"]
        assert page.url.split("/failed/")[1].split("?")[0] == str(record_id)

        def resolved() -> bool:
            page.goto(f"{stack.receiver_url}admin/failed/{record_id}")
            return page.inner_text("#status") == "resolved"

        wait_for(resolved, 30, "the to_bfus message to show as resolved", interval=0.5)
        page.goto(f"{stack.receiver_url}admin/?direction=from_bfus")
        assert page.locator("tbody tr .status-failed").count() == 1  # the other direction was left alone
    stack.wait_quiet()
    stored = stack.bfus.store.get("customer", customerno)
    assert stored is not None and stored["data"]["email"] == "kontor@example.se"
