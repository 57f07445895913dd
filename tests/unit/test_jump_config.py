"""The jump's configuration (bfus.ui_url, [jump]): validated at load with messages that
name the bad key, and its link properties checked against Lime's metadata."""

from __future__ import annotations

from typing import Any

import pytest

from shared.config import ConfigError, build_config
from shared.limemeta import check_against_lime, jump_problems
from shared.mapping import MappingSetupError

SECRET = "0123456789abcdef0123"
ON = {"jump": {"secret": SECRET}, "bfus": {"ui_url": "https://bfus.example.se/ui/", "token": "t"}}
LINKS = {"company": "bfuslink", "agreement": "bfuslink", "facility": "bfuslink", "meter": "bfuslink"}


def problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(raw, {})
    return caught.value.problems


def with_on(**more: Any) -> dict:
    raw: dict = {"jump": {**ON["jump"]}, "bfus": {**ON["bfus"]}, "receiver": {"public_url": "https://bl.example.se/"}}
    for section, values in more.items():
        raw.setdefault(section, {}).update(values)
    return raw


def test_jump_is_off_by_default() -> None:
    config = build_config({}, {})
    assert (config.jump.enabled, config.jump.client, dict(config.jump.links), config.bfus.ui_url) == (
        False, "MFU", {}, "")


def test_a_full_jump_configuration_loads() -> None:
    config = build_config(with_on(jump={"previous_secret": "x" * 16, "client": "BFU", "links": LINKS},
                                  bfus={"ui_url": "https://bfus.example.se/ui"}), {})
    assert config.jump.enabled and config.jump.secrets == (SECRET, "x" * 16)
    assert config.jump.client == "BFU" and dict(config.jump.links) == LINKS
    assert config.bfus.ui_url == "https://bfus.example.se/ui/"  # a base ends with its slash


def test_the_secret_comes_from_the_environment_too() -> None:
    config = build_config({"bfus": {"ui_url": "https://b/ui/"}}, {"BFUSLIME_JUMP__SECRET": SECRET,
                                                                 "BFUSLIME_JUMP__LINKS": '{"company": "bfuslink"}',
                                                                 "BFUSLIME_RECEIVER__PUBLIC_URL": "https://bl/"})
    assert config.jump.secret == SECRET and dict(config.jump.links) == {"company": "bfuslink"}


@pytest.mark.parametrize("raw, expected", [
    ({"jump": {"client": "WEB"}}, "jump.client: Must be one of: MFU, BFU."),
    ({"jump": {"secret": "short"}}, "jump.secret: Must be at least 16 characters (or empty)."),
    ({"jump": {"secret": SECRET, "previous_secret": "short"}}, "jump.previous_secret: Must be at least 16"),
    ({"jump": {"links": {"Company": "bfuslink"}}}, "jump.links.Company: The limetype must be a lower-case name"),
    ({"jump": {"links": {"company": "bfus link"}}}, "jump.links.company: The link property must be a lower-case"),
    ({"jump": {"links": ["company"]}}, "jump.links: Not a valid mapping type."),
    ({"jump": {"colour": "green"}}, "jump.colour: Unknown field."),
    ({"bfus": {"ui_url": "bfus.example.se/ui"}}, "bfus.ui_url: Must be a URL starting with http:// or https://."),
    ({"bfus": {"ui_url": "https://bfus.example.se/ui?x=1"}}, "bfus.ui_url: Must be BFUS's user-interface base"),
])
def test_bad_values_name_their_key(raw: dict, expected: str) -> None:
    found = problems(raw)
    assert any(p.startswith(expected) for p in found), found


def test_jump_on_needs_the_ui_base() -> None:
    assert problems({"jump": {"secret": SECRET}}) == [
        "bfus.ui_url: Must be set when jump is on (jump.secret): the jump redirects only to BFUS addresses under it."]


def test_a_previous_secret_without_a_current_one_is_refused() -> None:
    assert [p.split(":")[0] for p in problems({"jump": {"previous_secret": SECRET}})] == ["jump.previous_secret"]


def test_links_need_the_secret_and_the_public_url() -> None:
    found = problems({"jump": {"links": {"company": "bfuslink"}}})
    assert [p.split(":")[0] for p in found] == ["jump.secret", "receiver.public_url"]
    assert "BFUSLIME_JUMP__SECRET" in found[0]


def test_links_only_for_limetypes_of_synced_mappings() -> None:
    found = problems(with_on(jump={"links": {"person": "bfuslink", "meter": "bfuslink"}},
                             mapping={"objects": {"meter": {"sync": False}}}))
    assert found == [
        "jump.links.meter: 'meter' is not the limetype of a synced mapping (synced: agreement, company, facility).",
        "jump.links.person: 'person' is not the limetype of a synced mapping (synced: agreement, company, facility).",
    ]


def test_a_limetype_two_mappings_share_is_refused() -> None:
    found = problems(with_on(jump={"links": {"facility": "bfuslink"}},
                             mapping={"objects": {"meter": {"limetype": "facility"}}}))
    assert found[0].startswith("jump.links.facility: 'facility' is the limetype of more than one synced mapping")


def test_check_config_wants_each_link_property_in_lime_and_of_type_link(limetypes: dict[str, Any]) -> None:
    config = build_config(with_on(jump={"links": {"company": "name", "meter": "nosuchlink"}}), {})
    assert jump_problems(config, limetypes) == [
        "jump.links.company: 'name' has type string, not link.",
        "jump.links.meter: limetype 'meter' has no property 'nosuchlink' (add a link property in Lime Admin, "
        "docs/jump.md).",
    ]
    with pytest.raises(MappingSetupError) as caught:
        check_against_lime(config, limetypes)
    assert any(p.startswith("jump.links.company:") for p in caught.value.problems)
    fitting = build_config(with_on(jump={"links": LINKS}), {})  # the stand-in's bfuslink on all four
    assert jump_problems(fitting, limetypes) == []
    assert set(check_against_lime(fitting, limetypes)) == {"customer", "contract", "facility", "meter"}


def test_check_config_wants_the_bfus_token_when_jump_is_on(limetypes: dict[str, Any]) -> None:
    config = build_config(with_on(bfus={"token": ""}), {})
    assert jump_problems(config, limetypes) == [
        "bfus.token: Must be set when jump is on (the receiver asks BFUS for bookmarks)."]
