"""The mapping engine: pure code, checked against the stand-in's default metadata."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from shared.config import build_config, deep_merge
from shared.mapping import MappingError, MappingSetupError, build_mappers

CUSTOMER = {
    "customerno": "100234",
    "customertype": "private",
    "firstname": "Åsa",
    "lastname": "Öberg",
    "name": "Åsa Öberg",
    "socialsecurityno": "19800101-1234",
    "orgno": None,
    "street": "Storgatan 1",
    "zipcode": "21134",
    "city": "Malmö",
    "country": "SE",
    "phone": "+4640123456",
    "mobilephone": None,
    "email": "asa.oberg@example.se",
    "status": "active",
    "category": "residential",
    "paymentmethod": "autogiro",
    "einvoice": False,
    "createddate": "2019-03-01",
    "changeddate": "2026-11-24",
}


def mapper(limetypes: dict[str, Any], mapping: dict | None = None):
    config = build_config(deep_merge({}, {"mapping": mapping or {}}), {})
    return build_mappers(config.mapping, limetypes)["customer"]


def test_customer_maps_to_company(limetypes: dict[str, Any]) -> None:
    values = mapper(limetypes).map(CUSTOMER)
    assert values == {
        "customerno": "100234",
        "customertype": "private",
        "name": "Åsa Öberg",
        "firstname": "Åsa",
        "lastname": "Öberg",
        "socialsecurityno": "19800101-1234",
        "registrationno": "",
        "postaladdress1": "Storgatan 1",
        "postalzipcode": "21134",
        "postalcity": "Malmö",
        "country": "SE",
        "phone": "+4640123456",
        "mobilephone": "",
        "email": "asa.oberg@example.se",
        "bfusstatus": "active",
        "category": "residential",
        "paymentmethod": "autogiro",
        "einvoice": False,
        "bfuscreateddate": "2019-03-01",
        "bfuschangeddate": "2026-11-24",
    }


def test_fields_absent_from_the_snapshot_are_not_sent(limetypes: dict[str, Any]) -> None:
    assert mapper(limetypes).map({"customerno": "1", "name": "A"}) == {"customerno": "1", "name": "A"}


def test_soft_delete_rules(limetypes: dict[str, Any]) -> None:
    day = dt.date(2026, 11, 24)
    assert mapper(limetypes).soft_delete_values(day) == {"bfusstatus": "deleted"}
    date_rule = {"objects": {"customer": {"soft_delete": {"kind": "date", "property": "bfuschangeddate"}}}}
    assert mapper(limetypes, date_rule).soft_delete_values(day) == {"bfuschangeddate": "2026-11-24"}
    yesno_rule = {"objects": {"customer": {"soft_delete": {"kind": "yesno", "property": "einvoice"}}}}
    assert mapper(limetypes, yesno_rule).soft_delete_values(day) == {"einvoice": True}
    none_rule = {"objects": {"customer": {"soft_delete": {"kind": "none"}}}}
    assert mapper(limetypes, none_rule).soft_delete_values(day) == {}


def test_rename_exclude_and_value_map(limetypes: dict[str, Any]) -> None:
    spec = {"objects": {"customer": {
        "rename": {"category": "paymentmethod"},
        "exclude": ["socialsecurityno", "paymentmethod"],
        "fields": {"status": {"property": "buyingstatus", "values": {"active": "active", "inactive": "excustomer",
                                                                      "former": "excustomer"}}},
    }}}
    values = mapper(limetypes, spec).map({**CUSTOMER, "status": "former"})
    assert values["paymentmethod"] == "residential"
    assert "socialsecurityno" not in values and "bfusstatus" not in values
    assert values["buyingstatus"] == "excustomer"


def test_personal_data_switch_leaves_personal_fields_out(limetypes: dict[str, Any]) -> None:
    values = mapper(limetypes, {"exclude_personal_data": True}).map(CUSTOMER)
    for prop in ("socialsecurityno", "firstname", "lastname", "postaladdress1", "postalzipcode", "postalcity",
                 "phone", "mobilephone", "email"):
        assert prop not in values
    assert values["customerno"] == "100234"


@pytest.mark.parametrize(
    "change, field, problem",
    [
        ({"status": "bankrupt"}, "status", "not an option"),
        ({"createddate": "2019-02-30"}, "createddate", "not a date"),
        ({"createddate": "1 mars 2019"}, "createddate", "not a date"),
        ({"einvoice": "kanske"}, "einvoice", "not a yes/no value"),
        ({"name": "Å" * 129}, "name", "longer than name allows"),
        ({"phone": ["+46", "40"]}, "phone", "not a text value"),
    ],
)
def test_values_that_cannot_be_placed_name_field_and_value(limetypes: dict[str, Any], change: dict, field: str,
                                                             problem: str) -> None:
    with pytest.raises(MappingError) as caught:
        mapper(limetypes).map({**CUSTOMER, **change})
    assert caught.value.field == field
    assert caught.value.value == change[field]
    assert problem in str(caught.value)


def test_conversions(limetypes: dict[str, Any]) -> None:
    values = mapper(limetypes).map({**CUSTOMER, "einvoice": "ja", "zipcode": 21134, "phone": None})
    assert values["einvoice"] is True and values["postalzipcode"] == "21134" and values["phone"] == ""


def test_setup_lists_every_misfit(limetypes: dict[str, Any]) -> None:
    spec = {"objects": {
        "customer": {"key": "customercode", "rename": {"email": "emailaddress"},
                     "fields": {"status": {"property": "bfusstatus", "values": {"active": "alive"}}},
                     "soft_delete": {"kind": "option", "property": "bfusstatus", "value": "gone"}},
        "contract": {"sync": True, "limetype": "deal", "key": "contractno", "soft_delete": {"kind": "none"}},
    }}
    config = build_config({"mapping": spec}, {})
    with pytest.raises(MappingSetupError) as caught:
        build_mappers(config.mapping, limetypes)
    text = "\n".join(caught.value.problems)
    assert "mapping.objects.customer.key: limetype 'company' has no property 'customercode'" in text
    assert "mapping.objects.customer.fields.email: limetype 'company' has no property 'emailaddress'" in text
    assert "option key(s) alive not in company.bfusstatus" in text
    assert "mapping.objects.customer.soft_delete.value: 'gone' is not an option" in text
    assert "mapping.objects.contract.limetype: Lime has no limetype 'deal'" in text
    assert len(caught.value.problems) == 5


def mappers_for(limetypes: dict[str, Any], mapping: dict | None = None):
    return build_mappers(build_config({"mapping": mapping or {}}, {}).mapping, limetypes)


def test_private_name_is_replaced_and_company_name_kept_when_personal_data_is_left_out(limetypes: dict[str,
                                                                                                       Any]) -> None:
    m = mapper(limetypes, {"exclude_personal_data": True, "anonymous_name": "Kund {customerno}"})
    assert m.map(CUSTOMER)["name"] == "Kund 100234"
    company = {**CUSTOMER, "customertype": "company", "name": "Öbergs El AB", "orgno": "556677-8899"}
    values = m.map(company)
    assert values["name"] == "Öbergs El AB" and values["registrationno"] == "556677-8899"


def test_facility_address_is_personal(limetypes: dict[str, Any]) -> None:
    facility = {"facilityno": "735999100000000001", "customerno": "100234", "street": "Storgatan 1",
                "zipcode": "21134", "city": "Malmö", "propertydesignation": "MALMÖ EKEN 3:14", "district": "Limhamn",
                "category": "villa", "enddate": None}
    assert mappers_for(limetypes)["facility"].map(facility)["street"] == "Storgatan 1"
    values = mappers_for(limetypes, {"exclude_personal_data": True})["facility"].map(facility)
    assert values == {"facilityno": "735999100000000001", "district": "Limhamn", "category": "villa", "enddate": None}


def test_scrub_personal_blanks_only_personal_values() -> None:
    from shared.mapping import scrub_personal

    scrubbed = scrub_personal("customer", CUSTOMER)
    assert scrubbed["socialsecurityno"] == scrubbed["name"] == scrubbed["email"] == "[personal data left out]"
    assert scrubbed["customerno"] == "100234" and scrubbed["status"] == "active" and scrubbed["mobilephone"] is None
    company = scrub_personal("customer", {**CUSTOMER, "customertype": "company", "name": "Öbergs El AB"})
    assert company["name"] == "Öbergs El AB"


def test_default_relations_of_every_object_type(limetypes: dict[str, Any]) -> None:
    mappers = mappers_for(limetypes)
    assert {t: m.limetype for t, m in mappers.items()} == {
        "customer": "company", "contract": "agreement", "facility": "facility", "meter": "meter"}
    contract = {"contractno": "5000001", "customerno": "100234", "facilityno": "735999100000000001"}
    assert mappers["contract"].relation_keys(contract) == {"company": "100234", "facility": "735999100000000001"}
    assert mappers["contract"].relation_keys({**contract, "facilityno": None})["facility"] is None
    assert mappers["meter"].relation_keys({"meterno": "7", "facilityno": "735999100000000001"}) == {
        "facility": "735999100000000001"}
    assert mappers["facility"].relation_keys({}) == {}  # absent from the snapshot: left as it is


def test_truncate_rule_cuts_instead_of_failing(limetypes: dict[str, Any]) -> None:
    m = mapper(limetypes, {"objects": {"customer": {"fields": {"category": {"property": "category",
                                                                            "truncate": True}}}}})
    assert m.map({"category": "x" * 100})["category"] == "x" * 64


@pytest.mark.parametrize(
    "value, ptype, expected",
    [
        ("42", "integer", 42), (42.0, "integer", 42), ("3,5", "decimal", None), ("3.5", "decimal", 3.5),
        (True, "string", "true"), (7, "string", "7"), ("2026-11-24T09:15:02+01:00", "time",
                                                       "2026-11-24T09:15:02+01:00"),
        ("nej", "yesno", False), (0, "yesno", False), (None, "yesno", False), (None, "integer", None),
    ],
)
def test_conversion_by_lime_type(value: Any, ptype: str, expected: Any) -> None:
    from shared.mapping import convert

    prop = {"name": "p", "type": ptype, "length": 10}
    if expected is None and value is not None:
        with pytest.raises(MappingError):
            convert("f", value, prop)
    else:
        assert convert("f", value, prop) == expected


def test_relation_misfits_are_listed(limetypes: dict[str, Any]) -> None:
    spec = {"objects": {
        "customer": {"sync": False},
        "meter": {"relations": {"bfuslastmessageid": {"objecttype": "facility", "field": "facilityno"},
                                "nowhere": {"objecttype": "facility", "field": "facilityno"}},
                  "fields": {"facilityno": "facility"}, "watermark": "meterno"},
    }}
    with pytest.raises(MappingSetupError) as caught:
        mappers_for(limetypes, spec)
    text = "\n".join(caught.value.problems)
    assert "mapping.objects.contract.relations.company: objecttype 'customer' is not synced" in text
    assert "mapping.objects.facility.relations.company: objecttype 'customer' is not synced" in text
    assert ("mapping.objects.meter.relations.bfuslastmessageid: 'bfuslastmessageid' has type integer, "
            "not belongsto.") in text
    assert "mapping.objects.meter.relations.nowhere: limetype 'meter' has no property 'nowhere'." in text
    assert ("mapping.objects.meter.fields.facilityno: 'facility' has type belongsto; "
            "map relations under 'relations'.") in text
    assert "mapping.objects.meter.watermark: 'meterno' must be an integer property." in text


def test_empty_value_for_a_property_lime_requires_fails(limetypes: dict[str, Any]) -> None:
    with pytest.raises(MappingError) as caught:
        mapper(limetypes).map({**CUSTOMER, "name": None})
    assert caught.value.field == "name" and "Lime requires name" in caught.value.problem


def test_a_mistyped_limetype_is_named_once_without_follow_on_errors(limetypes: dict[str, Any]) -> None:
    config = build_config({"mapping": {"objects": {"customer": {"limetype": "compnay"}}}}, {})
    with pytest.raises(MappingSetupError) as caught:
        build_mappers(config.mapping, limetypes)
    assert caught.value.problems == ["mapping.objects.customer.limetype: Lime has no limetype 'compnay'."]
