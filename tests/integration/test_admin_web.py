"""The /admin pages in headless Chromium: a failed message appears, is requeued once
its cause is fixed, and shows as resolved. Screenshots of the list and the detail
view are written (to docs/ when BFUSLIME_SCREENSHOTS=docs)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.stack import Stack, wait_for

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


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(partitions=2, config={"admin": {"user": "ops", "password": "s3cret"}}).start(workers=1)


@pytest.fixture
def page(stack: Stack) -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        context = browser.new_context(http_credentials={"username": "ops", "password": "s3cret"},
                                      viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


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
