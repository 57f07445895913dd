"""Fingerprints and the mapping run backwards: what tells a person's Lime edit from
the integration's own write (docs/design.md, "No echo loops")."""

from __future__ import annotations

from typing import Any

import pytest

from shared import fingerprint as fp
from shared.config import build_config
from shared.mapping import MappingSetupError, ObjectMapper, build_mappers

CUSTOMER = {"customerno": "100234", "customertype": "company", "name": "Kvarn AB", "orgno": "556036-0793",
            "street": "Storgatan 1", "zipcode": "211 34", "city": "Malmö", "phone": None, "email": "a@b.se",
            "status": "active"}


def mapper(limetypes: dict[str, Any], **mapping: Any) -> ObjectMapper:
    config = build_config({"mapping": mapping}, environ={})
    return build_mappers(config.mapping, limetypes, outbound=True)["customer"]


def test_our_own_write_matches_its_fingerprint_and_a_persons_edit_does_not(limetypes: dict[str, Any]) -> None:
    customers = mapper(limetypes)
    written = customers.map(CUSTOMER)
    flowing = customers.flowing_properties
    assert fp.changed(written, written["bfusfingerprint"], flowing) == []
    edited = {**written, "postalcity": "Lund", "bfusstatus": {"key": "former"}}  # status is BFUS's own
    assert fp.changed(edited, written["bfusfingerprint"], flowing) == ["postalcity"]


def test_lime_reads_compare_like_writes(limetypes: dict[str, Any]) -> None:
    """Options read as objects, empty text read as null: the same values."""
    written = mapper(limetypes).map(CUSTOMER)
    read = {**written, "phone": None}
    assert fp.changed(read, written["bfusfingerprint"], ("phone",)) == []


def test_a_field_without_fingerprint_is_never_reported() -> None:
    assert fp.changed({"name": "X"}, None, ("name",)) == []
    assert fp.changed({"name": "X"}, "not json", ("name",)) == []
    assert fp.changed({"name": "X"}, '{"phone": "00000000"}', ("name",)) == []


def test_the_mapping_runs_backwards(limetypes: dict[str, Any]) -> None:
    customers = mapper(limetypes)
    lime = {**customers.map(CUSTOMER), "customertype": {"id": 2, "key": "company", "text": "Company"}}
    back = customers.bfus_values(lime, ("postalcity", "phone", "customertype", "registrationno"))
    assert back == {"city": "Malmö", "phone": None, "customertype": "company", "orgno": "556036-0793"}


def test_bfus_owned_fields_cannot_flow_to_bfus(limetypes: dict[str, Any]) -> None:
    with pytest.raises(MappingSetupError) as err:
        mapper(limetypes, objects={"customer": {"to_bfus": ["name", "status", "customerno"]}})
    assert "mapping.objects.customer.to_bfus: 'status' belongs to BFUS and never flows to it." in err.value.problems
    assert any("'customerno' belongs to BFUS" in p for p in err.value.problems)


def test_the_fingerprint_property_must_be_text(limetypes: dict[str, Any]) -> None:
    with pytest.raises(MappingSetupError) as err:
        mapper(limetypes, objects={"customer": {"fingerprint": "name"}})
    assert err.value.problems == ["mapping.objects.customer.fingerprint: 'name' has type string, not text."]


def test_without_outbound_nothing_extra_is_written(limetypes: dict[str, Any]) -> None:
    config = build_config({}, environ={})
    customers = build_mappers(config.mapping, limetypes)["customer"]
    assert "bfusfingerprint" not in customers.map(CUSTOMER)


def test_with_personal_data_left_out_a_private_customers_anonymous_name_never_flows(
        limetypes: dict[str, Any]) -> None:
    """Lime shows a private customer's name as "Customer 100234": editing it in Lime
    sends nothing to BFUS (it is not the customer's name); a company's name still flows."""
    from worker.outbound import Outbound

    customers = mapper(limetypes, exclude_personal_data=True)
    outbound = Outbound(None, None, customers)  # type: ignore[arg-type]  # the webhook check makes no call
    person = customers.map({**CUSTOMER, "customertype": "private", "orgno": None, "country": "SE"})
    assert person["name"] == "Customer 100234"
    assert outbound.nothing_to_send({**person, "name": "Ebba Lund"})
    assert not outbound.nothing_to_send({**person, "name": "Ebba Lund", "country": "NO"})
    company = customers.map(CUSTOMER)
    assert not outbound.nothing_to_send({**company, "name": "Kvarnbacken AB"})


def test_advanced_takes_the_sent_values_and_keeps_the_rest() -> None:
    before = fp.fingerprint({"phone": "+4640123", "postalcity": "Malmö"}, ("phone", "postalcity"))
    after = fp.advanced(before, {"phone": "+46701234567", "postalcity": "Lund"}, ("phone",))
    assert fp.changed({"phone": "+46701234567", "postalcity": "Malmö"}, after, ("phone", "postalcity")) == []
    assert fp.changed({"phone": "+46701234567", "postalcity": "Lund"}, after, ("phone", "postalcity")) == [
        "postalcity"]
    assert fp.parse(fp.advanced(None, {"phone": None}, ("phone",))) == {"phone": fp.digest("")}
