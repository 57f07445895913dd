"""Signed jump links (shared/jumplinks.py): what is signed, how it is verified, the
address built, and which BFUS addresses the jump may follow."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import JumpConfig
from shared.jumplinks import JumpLinks, canonical, is_under, jump_url, sign, verify

SECRET = "s3cret-of-at-least-16"
OLD = "the-previous-secret-value"


def test_the_signature_is_hmac_sha256_hex_over_limetype_id_client() -> None:
    assert canonical("company", 1001, "MFU") == b"company\n1001\nMFU"
    expected = hmac.new(SECRET.encode(), b"company\n1001\nMFU", hashlib.sha256).hexdigest()
    assert sign(SECRET, "company", 1001, "MFU") == expected
    assert len(expected) == 64


def test_verify_accepts_the_current_and_the_previous_secret() -> None:
    assert verify(sign(SECRET, "company", 7, "MFU"), "company", 7, "MFU", (SECRET, OLD))
    assert verify(sign(OLD, "company", 7, "MFU"), "company", 7, "MFU", (SECRET, OLD))
    assert verify(sign(SECRET, "company", 7, "MFU").upper(), "company", 7, "MFU", (SECRET,))
    assert not verify(sign(OLD, "company", 7, "MFU"), "company", 7, "MFU", (SECRET,))  # rotation over


@pytest.mark.parametrize("limetype, object_id, client", [("agreement", 7, "MFU"), ("company", 8, "MFU"),
                                                         ("company", 7, "BFU")])
def test_a_signature_covers_limetype_id_and_client(limetype: str, object_id: int, client: str) -> None:
    assert not verify(sign(SECRET, "company", 7, "MFU"), limetype, object_id, client, (SECRET,))


@pytest.mark.parametrize("signature", [None, "", "abc", "g" * 64, "é" * 64, "0" * 64, " " + "0" * 63])
def test_missing_malformed_or_wrong_signatures_are_refused(signature: str | None) -> None:
    assert not verify(signature, "company", 7, "MFU", (SECRET,))


def test_no_secret_verifies_nothing() -> None:
    assert not verify(sign(SECRET, "company", 7, "MFU"), "company", 7, "MFU", ("", ""))
    with pytest.raises(ValueError):
        sign("", "company", 7, "MFU")


@given(st.text(), st.integers(min_value=0, max_value=2**63), st.sampled_from(["MFU", "BFU"]), st.text(max_size=80))
def test_only_the_right_signature_verifies(limetype: str, object_id: int, client: str, tampered: str) -> None:
    good = sign(SECRET, limetype, object_id, client)
    assert verify(good, limetype, object_id, client, (SECRET,))
    assert verify(tampered, limetype, object_id, client, (SECRET,)) == (tampered.lower() == good)


def test_jump_url_under_the_public_url() -> None:
    url = jump_url("https://bfus-lime.example.se/", SECRET, "company", 1001)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "bfus-lime.example.se", "/jump/company/1001")
    assert parse_qs(parts.query) == {"client": ["MFU"], "sig": [sign(SECRET, "company", 1001, "MFU")]}
    assert jump_url("https://host/prefix", SECRET, "meter", 3, "BFU").startswith("https://host/prefix/jump/meter/3?")
    with pytest.raises(ValueError, match="unknown BFUS client"):
        jump_url("https://host/", SECRET, "company", 1, "WEB")
    with pytest.raises(ValueError, match="public_url"):
        jump_url("", SECRET, "company", 1)


def test_jump_links_give_each_configured_limetype_its_property() -> None:
    links = JumpLinks(JumpConfig(secret=SECRET, client="BFU", links={"company": "bfuslink"}), "https://h/")
    assert links.values("company", 5) == {"bfuslink": jump_url("https://h/", SECRET, "company", 5, "BFU")}
    assert links.values("meter", 5) == {}
    off = JumpLinks(JumpConfig(links={"company": "bfuslink"}), "https://h/")  # no secret: nothing written
    assert (off.enabled, off.values("company", 5)) == (False, {})
    assert JumpLinks(JumpConfig(secret=SECRET, links={"company": "bfuslink"}), "").values("company", 5) == {}


@pytest.mark.parametrize("url, under", [
    ("https://bfus.example.se/ui/mfu/customer/100234", True),
    ("https://bfus.example.se/ui/", True),
    ("https://bfus.example.se/uix/customer/1", False),  # not below /ui/
    ("https://bfus.example.se/ui", False),
    ("https://bfus.example.se.evil.test/ui/x", False),
    ("https://bfus.example.se@evil.test/ui/x", False),
    ("http://bfus.example.se/ui/x", False),  # another scheme
    ("https://evil.test/?https://bfus.example.se/ui/", False),
    ("//evil.test/ui/x", False),
    ("https://bfus.example.se/ui/x\r\nSet-Cookie: a=b", False),
    ("https://bfus.example.se/ui/\\evil.test", False),
    ("https://bfus.example.se/ui/ x", False),
    ("https://bfus.example.se/ui/../admin", False),  # a browser resolves it to /admin
    ("https://bfus.example.se/ui/%2e%2e/admin", False),
    ("https://bfus.example.se/ui/./x", False),
    ("https://bfus.example.se/ui/a..b/c.d", True),
    ("", False),
])
def test_only_addresses_under_the_ui_base_are_followed(url: str, under: bool) -> None:
    assert is_under(url, "https://bfus.example.se/ui/") is under


def test_an_empty_ui_base_admits_nothing() -> None:
    assert not is_under("https://bfus.example.se/ui/x", "")
    assert is_under("https://bfus.example.se/ui/x", "https://bfus.example.se/ui")  # a base without its slash
