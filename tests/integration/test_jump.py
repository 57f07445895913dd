"""GET /jump/<limetype>/<id> (docs/jump.md), over real HTTP: the receiver, the Lime
stand-in, and BFUS (its stand-in, or a small local server answering bookmarks as a
test needs). A signed link costs one Lime and one BFUS call and ends in a 302 to a
bookmark under bfus.ui_url; everything else is a small page."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from flask import Flask, Response, jsonify, request
from jumpstack import SECRET, jump_stack
from jumpstack import synced as synced

from sandbox.bfus.app import BfusSandboxSettings
from sandbox.serve import ServerThread
from sandbox.stack import Stack, wait_for
from shared.config import build_config, deep_merge
from shared.jumplinks import jump_url, sign
from shared.lime import LimeClient
from shared.logs import configure_logging

PREVIOUS = "the-secret-before-this-one"


class FakeBfus:
    """BFUS's bookmark endpoint, answering what the test sets (``answer``: status and
    body; ``None`` as url: a bookmark under this server's /mfu/). Notes each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], str]] = []
        self.answer: tuple[int, dict[str, Any]] | None = None
        self._lock = threading.Lock()
        app = Flask("fake-bfus")

        @app.post("/api/v1/bookmarks")
        def bookmark() -> Response:
            body = request.get_json()
            with self._lock:
                self.requests.append((body, request.headers.get("Authorization", "")))
            status, answer = self.answer or (201, {"url": f"{self.ui_url}{body['objecttype']}/{body['key']}"})
            response = jsonify(answer)
            response.status_code = status
            return response

        self.server = ServerThread(app, threads=4).start()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ui_url(self) -> str:
        return f"{self.url}mfu/"


@pytest.fixture
def fake_bfus() -> Iterator[FakeBfus]:
    fake = FakeBfus()
    try:
        yield fake
    finally:
        fake.server.stop()


@pytest.fixture
def stack(make_stack: Callable[..., Stack], fake_bfus: FakeBfus) -> Stack:
    return jump_stack(make_stack, fake_bfus, previous_secret=PREVIOUS)


def lime(stack: Stack) -> LimeClient:
    return LimeClient(stack.config.lime)


def company(stack: Stack, customerno: str = "100234", name: str = "Kvarnbackens Bageri AB") -> int:
    return int(lime(stack).create("company", {"name": name, "customerno": customerno})["_id"])


def go(stack: Stack, limetype: str, object_id: int, client: str = "MFU", secret: str = SECRET) -> requests.Response:
    url = jump_url(stack.receiver_url, secret, limetype, object_id, client)
    return requests.get(url, allow_redirects=False, timeout=30)


def get(stack: Stack, path: str) -> requests.Response:
    return requests.get(f"{stack.receiver_url}{path}", allow_redirects=False, timeout=30)


def receiver_calls(stack: Stack) -> tuple[int, int]:
    """(Lime calls, BFUS calls) the receiver made (its clients exist after a first jump)."""
    extensions = stack.receiver_app.extensions
    return (extensions["lime"].calls if "lime" in extensions else 0,
            extensions["bfus"].calls if "bfus" in extensions else 0)


def is_page(response: requests.Response, status: int, *texts: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store" and "Location" not in response.headers
    for text in texts:
        assert text in response.text, response.text


class Logs:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    def jumps(self) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == "jump"]

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture
def logs() -> Iterator[Logs]:
    captured = Logs()
    configure_logging("info", "json", stream=captured.stream)
    try:
        yield captured
    finally:
        configure_logging("warning")


# --------------------------------------------------------------------------- the way through


def test_a_signed_link_redirects_to_the_bfus_bookmark(stack: Stack, fake_bfus: FakeBfus, logs: Logs) -> None:
    company_id = company(stack)
    response = go(stack, "company", company_id)
    assert response.status_code == 302
    assert response.headers["Location"] == f"{fake_bfus.ui_url}customer/100234"
    assert response.headers["Cache-Control"] == "no-store"
    assert fake_bfus.requests == [({"objecttype": "customer", "key": "100234", "client": "MFU"},
                                   f"Bearer {BfusSandboxSettings.token}")]
    assert receiver_calls(stack) == (1, 1)  # one Lime call, one BFUS call
    assert logs.jumps() == [{**logs.jumps()[0], "limetype": "company", "lime_id": company_id, "client": "MFU",
                             "outcome": "redirected", "objecttype": "customer"}]
    assert "Kvarnbackens" not in logs.text and "100234" not in logs.text  # nothing of the object is logged


def test_a_contract_in_the_desktop_client_and_a_link_of_the_previous_secret(stack: Stack, fake_bfus: FakeBfus) -> None:
    agreement = lime(stack).create("agreement", {"contractno": "A-77"})["_id"]
    assert go(stack, "agreement", agreement, "BFU", secret=PREVIOUS).headers["Location"] == (
        f"{fake_bfus.ui_url}contract/A-77")
    assert fake_bfus.requests[0][0] == {"objecttype": "contract", "key": "A-77", "client": "BFU"}


# --------------------------------------------------------------------------- refused links


def test_a_tampered_signature_is_403_and_calls_nothing(stack: Stack, logs: Logs) -> None:
    company_id = company(stack)
    other = company(stack, "100235")
    good = sign(SECRET, "company", company_id, "MFU")
    guessed = sign("a-guessed-secret-value", "company", company_id, "MFU")
    tampered = ("0" if good[0] != "0" else "1") + good[1:]
    for path in (f"jump/company/{company_id}?client=MFU&sig={tampered}",
                 f"jump/company/{other}?client=MFU&sig={good}",  # another object's signature
                 f"jump/company/{company_id}?client=BFU&sig={good}",  # another client's
                 f"jump/agreement/{company_id}?client=MFU&sig={good}",  # another limetype's
                 f"jump/company/{company_id}?client=MFU&sig={guessed}"):
        is_page(get(stack, path), 403, "This link does not work", "use its BFUS link")
    assert receiver_calls(stack) == (0, 0)
    assert {j["outcome"] for j in logs.jumps()} == {"bad_signature"}


@pytest.mark.parametrize("query", ["", "?client=MFU", "?client=MFU&sig=", "?sig=abc"])
def test_a_missing_signature_is_403(stack: Stack, query: str) -> None:
    is_page(get(stack, f"jump/company/{company(stack)}{query}"), 403, "This link does not work")
    assert receiver_calls(stack) == (0, 0)


def test_an_unknown_client_is_403(stack: Stack) -> None:
    company_id = company(stack)
    response = get(stack, f"jump/company/{company_id}?client=WEB&sig={sign(SECRET, 'company', company_id, 'WEB')}")
    is_page(response, 403, "MFU or BFU")


def test_a_limetype_no_mapping_syncs_is_404(stack: Stack) -> None:
    is_page(go(stack, "person", 12), 404, "not synced with BFUS")
    assert receiver_calls(stack) == (0, 0)


def test_with_jump_off_there_is_no_jump(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(partitions=2)
    stack.start_receiver()
    response = go(stack, "company", company(stack))
    assert response.status_code == 404 and "Location" not in response.headers


# --------------------------------------------------------------------------- friendly failures


def test_an_object_not_in_lime_is_404(stack: Stack, logs: Logs) -> None:
    is_page(go(stack, "company", 987654), 404, "Not found in Lime", "company 987654")
    assert receiver_calls(stack) == (1, 0)
    assert logs.jumps()[0]["outcome"] == "not_found"


def test_an_object_without_a_bfus_key_is_409_saying_what_is_missing(stack: Stack, fake_bfus: FakeBfus) -> None:
    prospect = int(lime(stack).create("company", {"name": "Prospekt AB"})["_id"])
    is_page(go(stack, "company", prospect), 409, "Not in BFUS yet", "no BFUS customer number yet",
            "&#39;customerno&#39; is empty")
    assert receiver_calls(stack) == (1, 0) and fake_bfus.requests == []


def test_bfus_down_is_503_with_a_link_to_try_again(make_stack: Callable[..., Stack], logs: Logs) -> None:
    stack = jump_stack(make_stack)  # the BFUS stand-in, switched to answer 503
    stack.bfus.start()
    stack.bfus.unavailable = True
    company_id = company(stack)
    response = go(stack, "company", company_id)
    is_page(response, 503, "BFUS is not answering", "Try again")
    sent = jump_url("/", SECRET, "company", company_id).replace("&", "&amp;").removeprefix("/jump/company/")
    assert f'href="{sent}"' in response.text  # the retry link is this very address, relative to it
    assert response.headers["Retry-After"] == "30"
    assert logs.jumps()[0]["outcome"] == "bfus_unavailable"


def test_bfus_slower_than_the_jump_waits_is_503(make_stack: Callable[..., Stack],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from receiver import context

    monkeypatch.setattr(context, "JUMP_BFUS_TIMEOUT", (3.05, 0.5))  # the receiver's client is made after this
    stack = jump_stack(make_stack)
    stack.bfus.start()
    stack.bfus.bookmark_delay = 1.5
    response = go(stack, "company", company(stack))
    is_page(response, 503, "BFUS is not answering", "Try again")


def test_bfus_not_running_is_503(make_stack: Callable[..., Stack]) -> None:
    stack = jump_stack(make_stack)  # the stand-in is not started: its port refuses connections
    is_page(go(stack, "company", company(stack)), 503, "BFUS is not answering")


def test_bfus_refusing_is_502_with_its_reason(stack: Stack, fake_bfus: FakeBfus, logs: Logs) -> None:
    fake_bfus.answer = (404, {"error": "not_found", "message": "No customer 100234 in BFUS."})
    is_page(go(stack, "company", company(stack)), 502, "BFUS refused", "BFUS answered: No customer 100234 in BFUS.")
    assert logs.jumps()[0]["outcome"] == "bfus_refused"


@pytest.mark.parametrize("address", [
    "https://evil.example/mfu/customer/100234",
    "{ui}../../admin",  # under the base only as text: the path climbs out
    "{host}mfu-other/customer/100234",
    "javascript:alert(1)",
])
def test_a_bookmark_outside_the_ui_base_is_refused(stack: Stack, fake_bfus: FakeBfus, logs: Logs,
                                                   address: str) -> None:
    url = address.format(ui=fake_bfus.ui_url, host=fake_bfus.url)
    fake_bfus.answer = (201, {"url": url})
    response = go(stack, "company", company(stack))
    is_page(response, 502, "BFUS answered an unexpected address")
    refused = [json.loads(line) for line in logs.text.splitlines() if "jump_bfus_address_refused" in line]
    assert refused and refused[0]["expected"] == fake_bfus.ui_url
    assert logs.jumps()[0]["outcome"] == "bfus_address_refused"


def test_a_bookmark_answer_without_an_address_is_502(stack: Stack, fake_bfus: FakeBfus) -> None:
    fake_bfus.answer = (201, {"bookmark": 5})
    is_page(go(stack, "company", company(stack)), 502, "BFUS answered unexpectedly")


def test_lime_down_is_503_with_a_link_to_try_again(stack: Stack, logs: Logs) -> None:
    company_id = company(stack)
    stack.lime.faults.configure({"down": True})
    response = go(stack, "company", company_id)
    is_page(response, 503, "Lime is not answering", "Try again")
    again = requests.compat.urljoin(response.url, response.text.split('class="button" href="')[1].split('"')[0])
    assert again.replace("&amp;", "&") == jump_url(stack.receiver_url, SECRET, "company", company_id)
    assert logs.jumps()[0]["outcome"] == "lime_unavailable"
    stack.lime.faults.configure({"down": False})
    assert go(stack, "company", company_id).status_code == 302


def test_lime_refusing_other_than_not_found_is_502(make_stack: Callable[..., Stack], fake_bfus: FakeBfus,
                                                  logs: Logs) -> None:
    """A Lime that answers the object's read with a 4xx other than 404 (here 400, as for
    a property the API key may not read): a page saying Lime refused, no BFUS call."""
    app = Flask("refusing-lime")

    @app.get("/lime/api/v1/limeobject/<limetype>/<int:object_id>/")
    def refuse(limetype: str, object_id: int) -> tuple[Response, int]:
        return jsonify(error="bad_request", message="Access to a property is denied."), 400

    lime_server = ServerThread(app, threads=2).start()
    try:
        stack = jump_stack(make_stack, fake_bfus, start=False)
        stack.config = build_config(deep_merge(stack.raw, {"lime": {"url": f"{lime_server.url}lime/api/v1/"}}),
                                    environ={})
        stack.start_receiver()
        is_page(go(stack, "company", 1001), 502, "Lime refused", "answered 400")
        assert logs.jumps()[0]["outcome"] == "lime_refused" and fake_bfus.requests == []
    finally:
        lime_server.stop()


# --------------------------------------------------------------------------- check-config


def test_check_config_shows_the_jump_and_checks_its_link_properties(tmp_path: Any, lime: Any) -> None:
    from click.testing import CliRunner

    from cli.main import main

    base = (f'[lime]\nurl = "{lime.api_url}"\napi_key = "{lime.api_key}"\n[receiver]\npublic_url = "https://bl.test/"\n'
            f'[bfus]\ntoken = "t"\nui_url = "https://bfus.test/ui/"\n[jump]\nsecret = "{SECRET}"\n')
    path = tmp_path / "bfus-lime.toml"
    path.write_text(base)
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 0, result.output
    assert "jump: on, to bookmarks under https://bfus.test/ui/; links (MFU): none written" in result.output
    path.write_text(base + '[jump.links]\ncompany = "bfuslink"\nagreement = "bfuslink"\nmeter = "bfuslink"\n')
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 0, result.output
    assert "links (MFU): agreement.bfuslink, company.bfuslink, meter.bfuslink" in result.output
    path.write_text(base + '[jump.links]\ncompany = "name"\nmeter = "nosuchlink"\n')
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 2
    assert "jump.links.company: 'name' has type string, not link." in result.output
    assert "jump.links.meter: limetype 'meter' has no property 'nosuchlink'" in result.output
    path.write_text(base.replace(f'secret = "{SECRET}"', 'secret = ""') + '[jump.links]\ncompany = "bfuslink"\n')
    result = CliRunner().invoke(main, ["--config", str(path), "check-config"])
    assert result.exit_code == 2 and "jump.secret: Must be set when jump.links names link properties" in result.output


# --------------------------------------------------------------------------- with the BFUS stand-in


def test_live_sync_writes_every_objects_jump_link_and_the_link_opens_it(synced: Stack) -> None:
    assert all(synced.lime_objects(limetype) for limetype in synced.config.jump.links)
    assert synced.outdated_jump_links() == []
    meter = synced.lime_objects("meter")[0]
    response = requests.get(meter["bfuslink"], allow_redirects=False, timeout=30)  # the link as Lime shows it
    assert response.status_code == 302
    assert response.headers["Location"] == f"{synced.bfus.ui_url}meter/{meter['meterno']}"


def test_a_company_sent_to_bfus_gets_its_link_with_its_number(make_stack: Callable[..., Stack]) -> None:
    """The write-back of the number BFUS gave a company created in Lime carries its
    link, before BFUS's own message about the customer arrives (held back here)."""
    stack = make_stack(partitions=2, outbound=True, jump=True, lime_settings={"webhook_retry_base": 0.2})
    stack.start(workers=1)
    stack.subscribe_webhooks()
    stack.bfus.poster.pause()
    created = lime(stack).create("company", {
        "name": "Kvarnbackens Bageri AB", "customertype": "company", "registrationno": "556036-0793",
        "postaladdress1": "Kvarnvägen 3", "postalzipcode": "223 50", "postalcity": "Lund", "sendtobfus": True})
    wait_for(lambda: lime(stack).get("company", created["_id"]).get("customerno"), 30, "the customer number")
    assert stack.outdated_jump_links() == []


@pytest.mark.parametrize("limetype, objecttype, key_property", [
    ("company", "customer", "customerno"), ("agreement", "contract", "contractno"),
    ("facility", "facility", "facilityno"), ("meter", "meter", "meterno")])
def test_a_synced_object_opens_its_mfu_page_in_the_bfus_standin(synced: Stack, limetype: str, objecttype: str,
                                                                 key_property: str) -> None:
    found = synced.lime_objects(limetype)[0]
    key = found[key_property]
    response = go(synced, limetype, found["_id"])
    assert response.status_code == 302
    assert response.headers["Location"] == f"{synced.bfus.ui_url}{objecttype}/{key}"
    assert synced.bfus.bookmarks == [(objecttype, key, "MFU")]
    page = requests.get(response.headers["Location"], timeout=30)  # where the browser lands
    assert page.status_code == 200 and key in page.text


def test_the_desktop_client_gets_its_bookmark_too(synced: Stack) -> None:
    found = synced.lime_objects("company")[0]
    response = go(synced, "company", found["_id"], "BFU")
    assert response.status_code == 302 and response.headers["Location"].startswith(synced.bfus.ui_url)
    assert synced.bfus.bookmarks == [("customer", found["customerno"], "BFU")]


def test_a_customer_bfus_does_not_have_is_502_with_bfus_reason(synced: Stack) -> None:
    stray = company(synced, "999999", "Inte i BFUS AB")  # a number BFUS never gave
    is_page(go(synced, "company", stray), 502, "BFUS refused", "999999")


def test_the_standin_answering_outside_its_ui_base_is_refused(synced: Stack, logs: Logs) -> None:
    synced.bfus.bookmark_base_override = "https://evil.example/"
    found = synced.lime_objects("company")[0]
    is_page(go(synced, "company", found["_id"]), 502, "BFUS answered an unexpected address")
    assert logs.jumps()[0]["outcome"] == "bfus_address_refused"
    assert "evil.example" in logs.text  # the host BFUS named is logged
