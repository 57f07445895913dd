"""Configuration: one file plus environment overrides, validated at start-up with
messages that name the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, build_config, load_config


def problems(raw: dict | None = None, environ: dict | None = None, need: tuple = ()) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(raw, environ or {}, need)
    return caught.value.problems


def test_defaults_are_valid() -> None:
    config = build_config({}, {})
    assert config.broker.partitions == 16
    assert config.lime.url.endswith("/api/v1/")
    assert config.mapping.objects["customer"].limetype == "company"
    assert config.mapping.objects["customer"].soft_delete.value == "deleted"


def test_file_values_override_defaults(tmp_path: Path) -> None:
    path = tmp_path / "bfus-lime.toml"
    path.write_text('[lime]\napi_key = "k"\nrate_limit = 2.5\n[broker]\npartitions = 4\n')
    config = load_config(path, environ={})
    assert (config.lime.api_key, config.lime.rate_limit, config.broker.partitions) == ("k", 2.5, 4)
    assert config.lime.read_timeout == 15.0  # untouched default
    assert config.source == str(path)


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[lime]\napi_key = "from-file"\n')
    environ = {
        "BFUSLIME_LIME__API_KEY": "from-env",
        "BFUSLIME_WORKER__PREFETCH": "3",
        "BFUSLIME_MAPPING__OBJECTS__CUSTOMER__EXCLUDE": '["email"]',
        "RABBITMQ_URL": "amqp://u:p@broker:5672/%2F",
    }
    config = load_config(path, environ=environ)
    assert config.lime.api_key == "from-env"
    assert config.worker.prefetch == 3
    assert config.mapping.objects["customer"].exclude == ("email",)
    assert config.broker.url == "amqp://u:p@broker:5672/%2F"


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[receiver]\nport = 9999\n')
    assert load_config(environ={"BFUSLIME_CONFIG": str(path)}).receiver.port == 9999


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"lime": {"rate_limit": 0}}, "lime.rate_limit: Must be greater than 0."),
        ({"lime": {"url": "lime.example.com"}}, "lime.url: Must be a URL starting with http:// or https://."),
        ({"broker": {"partitions": "many"}}, "broker.partitions: Not a valid integer."),
        ({"receiver": {"port": 70000}}, "receiver.port:"),
        ({"lime": {"colour": "green"}}, "lime.colour: Unknown field."),
        ({"log": {"level": "loud"}}, "log.level: Must be one of"),
        ({"worker": {"retry_initial": 5, "retry_max": 1}}, "worker.retry_max: Must not be smaller"),
        ({"mapping": {"objects": {"customer": {"soft_delete": {"kind": "option", "value": 5}}}}},
         "mapping.objects.customer.soft_delete.value: Soft delete of kind 'option' needs the option key"),
        ({"mapping": {"objects": {"customer": {"limetype": "Company!"}}}}, "mapping.objects.customer.limetype:"),
        ({"broker": {"url": "amqp://a:5672/,http://b:5672/"}}, "broker.url: Must be a URL starting with amqp://"),
        ({"broker": {"url": [5672]}}, "broker.url: Must be an AMQP URL, several separated by commas"),
        ({"broker": {"url": " , "}}, "broker.url: Must name at least one AMQP URL."),
        ({"broker": {"quorum_size": -1}}, "broker.quorum_size:"),
    ],
)
def test_bad_values_name_their_key(raw: dict, expected: str) -> None:
    found = problems(raw)
    assert any(p.startswith(expected) for p in found), found


def test_broker_url_names_one_node_or_several_in_order() -> None:
    assert build_config({"broker": {"url": "amqp://a:5672/%2F"}}, {}).broker.urls == ("amqp://a:5672/%2F",)
    listed = build_config({"broker": {"url": ["amqp://a:1/v", "amqp://b:2/v"]}}, {}).broker
    assert (listed.urls, listed.url) == (("amqp://a:1/v", "amqp://b:2/v"), "amqp://a:1/v")
    environ = {"RABBITMQ_URL": "amqp://a:1/v, amqp://b:2/v,amqp://c:3/v"}
    assert build_config({}, environ).broker.urls == ("amqp://a:1/v", "amqp://b:2/v", "amqp://c:3/v")


def test_every_problem_is_listed_at_once() -> None:
    found = problems({"lime": {"rate_limit": -1, "read_timeout": "slow"}, "broker": {"partitions": 0}})
    assert len(found) == 3


def test_bad_environment_value_names_the_key() -> None:
    assert problems(environ={"BFUSLIME_BROKER__PARTITIONS": "sixteen"}) == ["broker.partitions: Not a valid integer."]


def test_required_secret_missing_says_how_to_set_it() -> None:
    found = problems(need=("lime.api_key",))
    assert found == ["lime.api_key: Must be set (config file or BFUSLIME_LIME__API_KEY)."]


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[lime\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken, environ={})


def test_the_documented_example_configuration_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "bfus-lime.example.toml"
    config = load_config(example, environ={})
    assert config.retention.days == 90 and config.lime.url.startswith("https://")
