"""Property: any BFUS snapshot either maps to values Lime's metadata accepts (the Lime
stand-in's own validation is the judge) or fails with a reason naming a field."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandbox.lime.schema import load_schema
from sandbox.lime.store import LimeRequestError, LimeStore
from shared.config import build_config
from shared.mapping import STANDARD_FIELDS, MappingError, build_mappers

OPTION_WORDS = ["active", "inactive", "former", "ended", "pending", "private", "company", "electricity", "water",
                "heat", "gas", "broadband", "districtheating", "deleted", "bankrupt", "Active", ""]

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.sampled_from(OPTION_WORDS),
    st.dates(min_value=dt.date(1900, 1, 1)).map(dt.date.isoformat),
    st.sampled_from(["2026-02-30", "24/11/2026", "20261124", "ja", "nej", "true", "1", "0",
                     "2026-11-24T09:15:02+01:00"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory) -> LimeStore:
    return LimeStore(tmp_path_factory.mktemp("judge") / "lime.db", load_schema())


def snapshot(objecttype: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = sorted(STANDARD_FIELDS[objecttype]) + ["unmapped_extra"]
    return st.dictionaries(st.sampled_from(fields), values, max_size=len(fields))


def check(judge: LimeStore, limetypes: dict, objecttype: str, data: dict[str, Any], personal: bool) -> None:
    config = build_config({"mapping": {"exclude_personal_data": personal}}, {})
    mapper = build_mappers(config.mapping, limetypes)[objecttype]
    try:
        mapped = mapper.map(data)
    except MappingError as err:
        assert err.field in data and err.field in mapper.fields  # a named reason
        assert err.problem and repr(err.value) in str(err)
        return
    assert set(mapped) <= {rule.property for rule in mapper.fields.values()}
    try:
        judge._checked(judge.limetype(mapper.limetype), mapped, creating=False)
    except LimeRequestError as err:  # pragma: no cover - the property failing
        raise AssertionError(f"Lime would refuse {mapped!r}: {err.message}") from None


@pytest.mark.parametrize("objecttype", sorted(STANDARD_FIELDS))
@pytest.mark.parametrize("personal", [False, True], ids=["all fields", "no personal data"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_snapshot_maps_to_accepted_values_or_fails_naming_the_field(
    judge: LimeStore, limetypes: dict, objecttype: str, personal: bool, data: st.DataObject
) -> None:
    check(judge, limetypes, objecttype, data.draw(snapshot(objecttype)), personal)
