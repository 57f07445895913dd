"""The jump as a Lime user makes it (docs/jump.md), in headless Chromium: on the Lime
stand-in's card of a synced customer, contract or meter, a click on the actionpad's
"Open in MFU" goes through the receiver's 302 to the BFUS stand-in's MFU page of the
same object. Screenshots of the customer's card and of its MFU page are written (to
docs/images/ when BFUSLIME_SCREENSHOTS=docs, as test_admin_web.py does for docs/)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from jumpstack import synced as synced

from sandbox.stack import Stack
from shared.jumplinks import is_under

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (make test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser.new_context(viewport={"width": 1100, "height": 700}).new_page()
        browser.close()


def shots(tmp_path: Path) -> Path:
    return Path("docs/images") if os.environ.get("BFUSLIME_SCREENSHOTS") == "docs" else tmp_path


@pytest.mark.parametrize("limetype, objecttype, number", [
    ("company", "customer", "customerno"), ("agreement", "contract", "contractno"), ("meter", "meter", "meterno")])
def test_open_in_mfu_on_the_lime_card_lands_on_the_objects_mfu_page(page: Any, synced: Stack, tmp_path: Path,
                                                                     limetype: str, objecttype: str,
                                                                     number: str) -> None:
    """``page`` first: without Chromium the test is skipped before a stack is synced."""
    found = synced.lime_objects(limetype)[0]
    key = found[number]
    ui_url = synced.config.bfus.ui_url
    mfu_page = f"{ui_url}{objecttype}/{quote(key, safe='')}"

    page.goto(synced.lime.card_url(limetype, found["_id"]))
    assert page.inner_text("h1") == found["_descriptive"]
    link = page.get_by_role("complementary", name="Actionpad").get_by_role("link", name="Open in MFU", exact=True)
    assert link.count() == 1
    assert link.get_attribute("href") == found["bfuslink"]  # the link the worker wrote, to the receiver
    assert found["bfuslink"].startswith(f"{synced.receiver_url}jump/{limetype}/{found['_id']}?")
    if limetype == "company":
        page.screenshot(path=str(shots(tmp_path) / "jump-card.png"))

    with page.expect_response(lambda r: r.url == found["bfuslink"]) as jumped:
        link.click()
    page.wait_for_url(mfu_page)
    assert jumped.value.status == 302 and jumped.value.header_value("location") == mfu_page
    assert synced.bfus.bookmarks == [(objecttype, key, "MFU")]

    assert page.url == mfu_page and is_under(page.url, ui_url)
    assert page.inner_text("[data-field=objecttype]") == objecttype
    assert page.inner_text("[data-field=number]") == key  # the number Lime has
    heading = page.inner_text("h1")
    assert (heading == found["name"]) if limetype == "company" else (key in heading)  # a customer's is its name
    if limetype == "company":
        page.screenshot(path=str(shots(tmp_path) / "jump-mfu.png"))
