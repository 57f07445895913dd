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
