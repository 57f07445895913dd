"""Applying one change to Lime (store-backed Lime, no HTTP): the id cache, the
staleness guard, a 404 on update, an ambiguous key, a missing parent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from builders import message
from fakes import StoreLime
from shared.config import JumpConfig, build_config
from shared.envelope import validate_envelope
from shared.jumplinks import JumpLinks
from shared.lime import LimeUnavailable
from shared.limemeta import check_against_lime
from worker.apply import Applier, IdCache, Known, PermanentFailure


@pytest.fixture
def lime(tmp_path: Path) -> StoreLime:
    return StoreLime(tmp_path / "lime.db")


@pytest.fixture
def applier(lime: StoreLime, limetypes: dict[str, Any]) -> Applier:
    return Applier(lime, check_against_lime(build_config({}, environ={}), limetypes))  # type: ignore[arg-type]


def change(mid: int, name: str = "Ebba Lund AB", **extra: Any) -> Any:
    return validate_envelope(message(mid, data={"customerno": "100234", "name": name, "customertype": "company"},
                                     **extra))


def test_the_id_cache_keeps_the_newest_entries() -> None:
    cache = IdCache(size=2)
    for i in range(3):
        cache.put("company", str(i), Known(i, None))
    assert cache.get("company", "0") is None and cache.get("company", "2") == Known(2, None)
    cache.get("company", "1")  # used: now the newest
    cache.put("company", "3", Known(3, None))
    assert cache.get("company", "1") is not None and cache.get("company", "2") is None


def test_older_and_equal_messages_are_skipped_not_written(applier: Applier, lime: StoreLime) -> None:
    cache = IdCache()
    assert applier.apply(change(10), cache).outcome == "applied"
    writes = lime.calls["POST"] + lime.calls["PUT"]
    assert applier.apply(change(9, "Older AB"), cache).outcome == "skipped_stale"
    assert applier.apply(change(10, "Same AB"), cache).outcome == "skipped_duplicate"
    assert lime.calls["POST"] + lime.calls["PUT"] == writes
    assert lime.objects("company")[0]["name"] == "Ebba Lund AB"


def test_a_company_removed_in_lime_since_it_was_cached_is_created_again(applier: Applier, lime: StoreLime) -> None:
    cache = IdCache()
    first = applier.apply(change(1), cache)
    lime.store.delete("company", first.object_id)
    second = applier.apply(change(2), cache)
    assert second.outcome == "applied" and second.object_id != first.object_id
    assert len(lime.objects("company")) == 1


def test_two_lime_objects_with_one_key_fail_as_ambiguous(applier: Applier, lime: StoreLime) -> None:
    for name in ("A", "B"):
        lime.store.create("company", {"name": name, "customerno": "100234"})
    with pytest.raises(PermanentFailure) as caught:
        applier.apply(change(1), IdCache())
    assert caught.value.reason == "ambiguous_key"


def test_a_contract_of_a_customer_lime_lacks_fails_as_missing_related(applier: Applier) -> None:
    contract = validate_envelope(message(1, "300001", objecttype="contract", key="5000010", data={
        "contractno": "5000010", "customerno": "300001", "product": "water", "status": "active"}))
    with pytest.raises(PermanentFailure) as caught:
        applier.apply(contract, IdCache())
    assert caught.value.reason == "missing_related" and "300001" in caught.value.error


def test_a_deleted_object_whose_parent_lime_lacks_is_marked_without_the_relation(applier: Applier,
                                                                                 lime: StoreLime) -> None:
    """A customer BFUS deletes with its objects before a migration brought them over:
    the meter's deletion must not wait for a facility that will never come."""
    meter = validate_envelope(message(7, "100003", objecttype="meter", key="70000004", operation="deleted", data={
        "meterno": "70000004", "facilityno": "735999100000000004", "customerno": "100003",
        "metertype": "electricity", "installeddate": "2025-07-18", "removeddate": None}))
    outcome = applier.apply(meter, IdCache())
    assert outcome.outcome == "applied"
    [obj] = lime.objects("meter")
    assert obj["facility"] is None


class WriteBackRacingLime(StoreLime):
    """The outbound worker writes the customer number BFUS gave back to the company
    right after the inbound worker's look-up by number missed it."""

    def __init__(self, path: Path, company_id: int | None = None, customerno: str = ""):
        super().__init__(path)
        self.company_id, self.customerno = company_id, customerno

    def find(self, limetype: str, prop: str, value: Any, limit: int = 2) -> list[dict[str, Any]]:
        found = super().find(limetype, prop, value, limit)
        if prop == "customerno" and self.company_id is not None:
            self.store.update(limetype, self.company_id, {"customerno": self.customerno})
            self.company_id = None
        return found


@pytest.mark.parametrize("write_back_first", [False, True], ids=["message-first", "write-back-in-between"])
def test_bfus_message_about_a_customer_created_from_lime_updates_that_company(
        tmp_path: Path, limetypes: dict[str, Any], write_back_first: bool) -> None:
    """BFUS's "created" message for a customer the integration created from a Lime
    company links that company (found by organisation number), whether the number's
    write-back has not landed yet or lands between the two look-ups: never a second
    company."""
    lime = WriteBackRacingLime(tmp_path / "lime.db")
    company = lime.store.create("company", {"name": "Kvarnbackens Bageri AB", "registrationno": "556036-0793"})
    if write_back_first:
        lime.company_id, lime.customerno = company["_id"], "100234"
    config = build_config({"outbound": {"enabled": True, "create_when": "sendtobfus"}, "receiver": {"lime_secret": "s"},
                           "bfus": {"token": "t"}}, environ={})
    applier = Applier(lime, check_against_lime(config, limetypes), link_by_identity=True)  # type: ignore[arg-type]
    created = validate_envelope(message(7, operation="created", data={
        "customerno": "100234", "name": "Kvarnbackens Bageri AB", "customertype": "company",
        "orgno": "556036-0793"}))
    outcome = applier.apply(created, IdCache())
    assert (outcome.outcome, outcome.object_id) == ("applied", company["_id"])
    [only] = lime.objects("company")
    assert (only["customerno"], only["bfuslastmessageid"]) == ("100234", 7)


LINKS = JumpLinks(JumpConfig(secret="a-jump-secret-of-some-length", links={"company": "bfuslink"}),
                  "https://bfus-lime.example.se/")


@pytest.fixture
def linking(lime: StoreLime, limetypes: dict[str, Any]) -> Applier:
    return Applier(lime, check_against_lime(build_config({}, environ={}), limetypes), links=LINKS)  # type: ignore[arg-type]


def test_every_write_sets_the_objects_jump_link(linking: Applier, lime: StoreLime) -> None:
    """A create (the id is known only after it: a second call with the link and the
    watermark) and an update (the link rides along) both leave the jump link."""
    cache = IdCache()
    created = linking.apply(change(1), cache)
    [company] = lime.objects("company")
    assert company["bfuslink"] == LINKS.url("company", created.object_id)
    assert (company["bfuslastmessageid"], lime.calls["POST"], lime.calls["PUT"]) == (1, 1, 1)
    lime.store.update("company", created.object_id, {"bfuslink": "https://old.example.se/jump/company/1"})
    linking.apply(change(2, "Renamed AB"), cache)
    [company] = lime.objects("company")
    assert company["bfuslink"] == LINKS.url("company", created.object_id)
    assert (company["name"], lime.calls["POST"], lime.calls["PUT"]) == ("Renamed AB", 1, 2)


def test_an_object_of_a_limetype_without_a_link_property_is_created_in_one_call(linking: Applier,
                                                                               lime: StoreLime) -> None:
    linking.apply(change(1), IdCache())  # the customer's company, for the contract's relation
    before = lime.calls["POST"] + lime.calls["PUT"]
    contract = validate_envelope(message(2, "100234", objecttype="contract", key="5000010", data={
        "contractno": "5000010", "customerno": "100234", "product": "water", "status": "active"}))
    linking.apply(contract, IdCache())
    assert lime.calls["POST"] + lime.calls["PUT"] - before == 1
    assert not lime.objects("agreement")[0].get("bfuslink")


@pytest.mark.parametrize("retry_with", ["the same cache", "a new owner's empty cache"])
def test_a_create_whose_link_write_failed_is_written_again_with_its_link(linking: Applier, lime: StoreLime,
                                                                        retry_with: str) -> None:
    """Lime goes away between the create and the link: the message is retried (same
    worker) or redelivered (a crash: a new owner). The object has no watermark yet,
    so the message is applied again, not skipped as a duplicate, and the link lands."""
    lime.fail("PUT", LimeUnavailable("Lime answered 503", status=503))
    cache = IdCache()
    with pytest.raises(LimeUnavailable):
        linking.apply(change(1), cache)
    [company] = lime.objects("company")
    assert not company.get("bfuslink") and company.get("bfuslastmessageid") is None
    outcome = linking.apply(change(1), cache if retry_with == "the same cache" else IdCache())
    assert outcome.outcome == "applied"
    [company] = lime.objects("company")
    assert company["bfuslink"] == LINKS.url("company", company["_id"]) and company["bfuslastmessageid"] == 1


@pytest.fixture
def skipping(lime: StoreLime, limetypes: dict[str, Any]) -> Applier:
    return Applier(lime, check_against_lime(build_config({}, environ={}), limetypes), links=LINKS,  # type: ignore[arg-type]
                   skip_unchanged=True)


def test_a_snapshot_lime_holds_already_is_not_written(skipping: Applier, lime: StoreLime) -> None:
    """BFUS sends the same snapshot again (a new message id): no PUT, outcome unchanged,
    and the cache's watermark moves on (the next older message is stale)."""
    cache = IdCache()
    skipping.apply(change(1), cache)
    writes = lime.calls["POST"] + lime.calls["PUT"]
    outcome = skipping.apply(change(2), cache)
    assert (outcome.outcome, outcome.read) == ("unchanged", False)
    assert lime.calls["POST"] + lime.calls["PUT"] == writes and lime.calls["GET"] == 1
    assert skipping.apply(change(2), cache).outcome == "skipped_duplicate"
    assert skipping.apply(change(3, "Renamed AB"), cache).outcome == "applied"
    assert lime.objects("company")[0]["name"] == "Renamed AB"


def test_unchanged_is_judged_from_lime_as_read_by_a_new_owner(skipping: Applier, lime: StoreLime) -> None:
    skipping.apply(change(1), IdCache())
    writes = lime.calls["POST"] + lime.calls["PUT"]
    outcome = skipping.apply(change(2), IdCache())  # a new owner: one find, nothing written
    assert (outcome.outcome, outcome.read) == ("unchanged", True)
    assert lime.calls["POST"] + lime.calls["PUT"] == writes


def test_an_outdated_link_or_a_value_edited_in_lime_is_written(skipping: Applier, lime: StoreLime) -> None:
    first = skipping.apply(change(1), IdCache())
    lime.store.update("company", first.object_id, {"bfuslink": "https://old.example.se/jump/company/1"})
    assert skipping.apply(change(2), IdCache()).outcome == "applied"  # read: the link differs
    assert lime.objects("company")[0]["bfuslink"] == LINKS.url("company", first.object_id)
    lime.store.update("company", first.object_id, {"name": "Edited In Lime AB"})
    assert skipping.apply(change(3), IdCache()).outcome == "applied"
    assert lime.objects("company")[0]["name"] == "Ebba Lund AB"


def test_with_skipping_off_the_same_snapshot_is_written_again(linking: Applier, lime: StoreLime) -> None:
    cache = IdCache()
    linking.apply(change(1), cache)
    puts = lime.calls["PUT"]
    assert linking.apply(change(2), cache).outcome == "applied" and lime.calls["PUT"] == puts + 1
