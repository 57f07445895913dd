"""The soak's checker (sandbox/check.py): a company BFUS refused a person's edit of
keeps that edit in the fields that flow to BFUS, and only there."""

from __future__ import annotations

from typing import Any

from sandbox.check import CheckReport, check_objects, expected_values
from shared.config import build_config
from shared.mapping import build_mappers

CUSTOMER = {"customerno": "100234", "customertype": "company", "name": "Kvarn AB", "orgno": "556036-0793",
            "street": "Storgatan 1", "zipcode": "211 34", "city": "Malmö", "email": "a@b.se", "status": "active",
            "category": "business"}


def test_a_refused_edit_is_exempt_in_the_flowing_fields_only(limetypes: dict[str, Any]) -> None:
    mapper = build_mappers(build_config({}, environ={}).mapping, limetypes, outbound=True)["customer"]
    snapshot = {"key": "100234", "data": CUSTOMER, "deleted": True, "changed": "2026-11-29"}
    company = {**expected_values(mapper, snapshot), "email": "kontakt@example.se"}  # edited after the delete
    strict, lenient = CheckReport(), CheckReport()
    check_objects(strict, mapper, [snapshot], [company])
    check_objects(lenient, mapper, [snapshot], [company], refused={"100234"})
    assert [m.split(":")[1].strip() for m in strict.mismatched] == ["email"] and lenient.mismatched == []
    wrong_status = CheckReport()
    check_objects(wrong_status, mapper, [snapshot], [{**company, "bfusstatus": "active"}], refused={"100234"})
    assert len(wrong_status.mismatched) == 1 and "bfusstatus" in wrong_status.mismatched[0]
