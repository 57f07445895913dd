"""Outbound.remember: after an edit went to BFUS, the company's fingerprint says BFUS
has the sent values, and a BFUS message applied at the same moment keeps its own
(docs/design.md, "Lime -> BFUS, and no echo loops")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fakes import StoreLime
from shared import fingerprint as fp
from shared.config import build_config
from shared.mapping import ObjectMapper, build_mappers
from worker.outbound import Outbound, Sent

BFUS_CUSTOMER = {"customerno": "100234", "customertype": "company", "name": "Kvarn AB", "orgno": "556036-0793",
                 "street": "Storgatan 1", "zipcode": "211 34", "city": "Malmö", "phone": None, "email": "a@b.se",
                 "status": "active"}
WATERMARK = "bfuslastmessageid"


class RacingLime(StoreLime):
    """The Lime stand-in's store, where a BFUS message is applied (as the inbound
    worker writes it: every mapped value, its fingerprint, its watermark) right after
    the next read of the company is answered: between remember's read and its write."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.after_next_read: dict[str, Any] | None = None

    def get(self, limetype: str, object_id: int) -> dict[str, Any]:
        read = super().get(limetype, object_id)
        if self.after_next_read is not None:
            self.store.update(limetype, object_id, self.after_next_read)
            self.after_next_read = None
        return read


def setup(tmp_path: Path, limetypes: dict[str, Any]) -> tuple[RacingLime, ObjectMapper, Outbound, int]:
    config = build_config({}, environ={})
    mapper = build_mappers(config.mapping, limetypes, outbound=True)["customer"]
    lime = RacingLime(tmp_path / "lime.sqlite3")
    company = lime.store.create("company", {**mapper.map(BFUS_CUSTOMER), WATERMARK: 10})["_id"]
    return lime, mapper, Outbound(lime, None, mapper), company  # type: ignore[arg-type]  # BFUS is not called


def sent_city(lime: RacingLime, mapper: ObjectMapper, company: int, city: str) -> Sent:
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


def test_a_bfus_message_applied_between_the_read_and_the_write_keeps_its_fingerprint(
        tmp_path: Path, limetypes: dict[str, Any]) -> None:
    """BFUS's message 11 was made before BFUS took the city (its snapshot has the old
    city and a new phone) and lands in Lime just as the sent city's fingerprint is
    written. Lime then holds message 11's values; its fingerprint must say so, or the
    old city would look like a Lime edit and go back to BFUS over the city it has
    (the re-send tests/integration/test_convergence.py found in CI)."""
    lime, mapper, outbound, company = setup(tmp_path, limetypes)
    sent = sent_city(lime, mapper, company, "Lund")
    lime.after_next_read = {**mapper.map({**BFUS_CUSTOMER, "phone": "+4631556677"}), WATERMARK: 11}
    outbound.remember(sent)
    now = lime.store.get("company", company)
    assert (now["postalcity"], now["phone"], now[WATERMARK]) == ("Malmö", "+4631556677", 11)
    assert outbound.nothing_to_send(now), "message 11's values look like a Lime edit"
    assert lime.calls == {"GET": 1, "PUT": 2}
