"""Outbound.remember: after an edit went to BFUS, the company's fingerprint says BFUS
has the sent values (docs/design.md, "Lime -> BFUS, and no echo loops"). No BFUS
message lands between its read and its write: a linked company's events share its
customer's partition (tests/unit/test_signatures.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fakes import StoreLime
from shared import fingerprint as fp
from shared.bfus import BfusRejected, BfusUnavailable
from shared.config import build_config
from shared.mapping import ObjectMapper, build_mappers
from worker.apply import PermanentFailure
from worker.outbound import Outbound, Sent

BFUS_CUSTOMER = {"customerno": "100234", "customertype": "company", "name": "Kvarn AB", "orgno": "556036-0793",
                 "street": "Storgatan 1", "zipcode": "211 34", "city": "Malmö", "phone": None, "email": "a@b.se",
                 "status": "active"}
WATERMARK = "bfuslastmessageid"


def setup(tmp_path: Path, limetypes: dict[str, Any]) -> tuple[StoreLime, ObjectMapper, Outbound, int]:
    config = build_config({}, environ={})
    mapper = build_mappers(config.mapping, limetypes, outbound=True)["customer"]
    lime = StoreLime(tmp_path / "lime.sqlite3")
    company = lime.store.create("company", {**mapper.map(BFUS_CUSTOMER), WATERMARK: 10})["_id"]
    return lime, mapper, Outbound(lime, None, mapper), company  # type: ignore[arg-type]  # BFUS is not called


def sent_city(lime: StoreLime, mapper: ObjectMapper, company: int, city: str) -> Sent:
    """A Lime user set the city, and the worker sent it to BFUS (what carry_out returns)."""
    lime.store.update("company", company, {"postalcity": city})
    now = lime.store.get("company", company)
    seen = now["bfusfingerprint"]
    return Sent("updated", "100234", {"city": city}, 200, company,
                {"bfusfingerprint": fp.advanced(seen, now, ("postalcity",))}, seen)


def test_the_sent_values_get_their_fingerprint_in_one_read_and_one_write(
        tmp_path: Path, limetypes: dict[str, Any]) -> None:
    lime, mapper, outbound, company = setup(tmp_path, limetypes)
    outbound.remember(sent_city(lime, mapper, company, "Lund"))
    now = lime.store.get("company", company)
    assert outbound.nothing_to_send(now)
    assert fp.parse(now["bfusfingerprint"])["postalcity"] == fp.digest("Lund")
    assert lime.calls == {"GET": 1, "PUT": 1}


class RacingLime(StoreLime):
    """Where a BFUS message is applied (as the inbound worker writes it: every mapped
    value, its fingerprint, its watermark) right after the next read is answered."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.after_next_read: dict[str, Any] | None = None

    def get(self, limetype: str, object_id: int) -> dict[str, Any]:
        read = super().get(limetype, object_id)
        if self.after_next_read is not None:
            self.store.update(limetype, object_id, self.after_next_read)
            self.after_next_read = None
        return read


def created_in_lime(tmp_path: Path, limetypes: dict[str, Any]) -> tuple[RacingLime, ObjectMapper, Outbound, Sent]:
    """A company a person registered in Lime, created in BFUS as customer 100234."""
    config = build_config({}, environ={})
    mapper = build_mappers(config.mapping, limetypes, outbound=True)["customer"]
    lime = RacingLime(tmp_path / "lime.sqlite3")
    values = {k: v for k, v in mapper.map(BFUS_CUSTOMER).items() if k not in ("customerno", "bfusfingerprint")}
    company = lime.store.create("company", {**values, "sendtobfus": True})
    fields = mapper.bfus_values(company, mapper.flowing_properties)
    sent = Sent("created", "100234", fields, 201, company["_id"], {
        "customerno": "100234", "bfusfingerprint": fp.advanced(None, company, mapper.flowing_properties)}, "")
    return lime, mapper, Outbound(lime, None, mapper, "sendtobfus"), sent  # type: ignore[arg-type]  # no BFUS


def test_a_creations_number_and_fingerprint_are_written_back_in_one_read_and_one_write(
        tmp_path: Path, limetypes: dict[str, Any]) -> None:
    lime, _mapper, outbound, sent = created_in_lime(tmp_path, limetypes)
    outbound.remember(sent)
    company = lime.store.get("company", sent.company_id)
    assert company["customerno"] == "100234" and outbound.nothing_to_send(company)
    assert lime.calls == {"GET": 1, "PUT": 1} and outbound.restored == 0


def test_bfuss_created_message_landing_in_the_write_back_keeps_its_fingerprint(
        tmp_path: Path, limetypes: dict[str, Any]) -> None:
    """BFUS gave the customer a phone of its own; its "created" message is applied
    between the write-back's read and write. Lime then holds BFUS's phone, and its
    fingerprint must say so, or the phone would look like a Lime edit."""
    lime, mapper, outbound, sent = created_in_lime(tmp_path, limetypes)
    lime.after_next_read = {**mapper.map({**BFUS_CUSTOMER, "phone": "+4646123456"}), WATERMARK: 11}
    outbound.remember(sent)
    company = lime.store.get("company", sent.company_id)
    assert (company["phone"], company[WATERMARK]) == ("+4646123456", 11)
    assert outbound.nothing_to_send(company), "BFUS's phone looks like a Lime edit"
    assert lime.calls == {"GET": 1, "PUT": 2} and outbound.restored == 1


class DuplicateBfus:
    """BFUS answering every creation 409: it has a customer with that identity."""

    def __init__(self) -> None:
        self.posts = 0

    def create_customer(self, fields: dict[str, Any]) -> dict[str, Any]:
        self.posts += 1
        raise BfusRejected(409, "duplicate", "A customer with this organisation number exists.")


def test_a_creation_bfus_calls_a_duplicate_waits_for_bfuss_message_to_link_the_company(
        tmp_path: Path, limetypes: dict[str, Any]) -> None:
    """An earlier try created the customer and its worker stopped before writing the
    number back (a soak's SIGKILL): the next try's 409 is held (tried again later, in
    order) until BFUS's "created" message links the company; then nothing is sent."""
    lime, _mapper, outbound, sent = created_in_lime(tmp_path, limetypes)
    bfus = DuplicateBfus()
    outbound.bfus = bfus  # type: ignore[assignment]
    plan = outbound.plan(sent.company_id)
    assert plan.operation == "create"
    with pytest.raises(BfusUnavailable):
        outbound.carry_out(plan)
    lime.store.update("company", sent.company_id, {"customerno": "100234"})  # BFUS's message linked it
    assert outbound.carry_out(plan) is None and bfus.posts == 2


def test_a_duplicate_no_message_links_fails_as_bfus_duplicate(tmp_path: Path, limetypes: dict[str, Any]) -> None:
    lime, _mapper, outbound, sent = created_in_lime(tmp_path, limetypes)
    outbound.bfus = DuplicateBfus()  # type: ignore[assignment]
    outbound.duplicate_wait = 0.0
    with pytest.raises(PermanentFailure) as failed:
        outbound.carry_out(outbound.plan(sent.company_id))
    assert failed.value.reason == "bfus_duplicate"


def test_a_duplicate_wait_left_long_ago_does_not_shorten_a_new_one(
        tmp_path: Path, limetypes: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A 409 whose event was let go mid-wait (its partition handed over) leaves its time
    behind; a 409 of the same company much later waits its own 120 s, not what is left
    of the old wait; one wait lasts 120 s from its first 409 however often it is tried."""
    lime, _mapper, outbound, sent = created_in_lime(tmp_path, limetypes)
    outbound.bfus = DuplicateBfus()  # type: ignore[assignment]
    clock = [1000.0]
    monkeypatch.setattr("worker.outbound.time.monotonic", lambda: clock[0])
    plan = outbound.plan(sent.company_id)
    with pytest.raises(BfusUnavailable):
        outbound.carry_out(plan)  # the first wait, then let go
    for clock[0] in (5000.0, 5060.0, 5115.0):  # much later: a new wait, tried every minute or less
        with pytest.raises(BfusUnavailable):
            outbound.carry_out(plan)
    clock[0] = 5121.0  # 121 s after the new wait's first 409
    with pytest.raises(PermanentFailure) as failed:
        outbound.carry_out(plan)
    assert failed.value.reason == "bfus_duplicate"
