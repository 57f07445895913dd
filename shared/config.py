"""Configuration: one TOML file merged over the built-in defaults, then environment
overrides, validated once with marshmallow. A bad value stops start-up with a message
that names the key (``lime.rate_limit: Must be greater than 0.``)."""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate, validates, validates_schema

DEFAULTS_PATH = Path(__file__).with_name("defaults.toml")
ENV_PREFIX = "BFUSLIME_"
CONFIG_ENV = "BFUSLIME_CONFIG"


class ProblemsError(Exception):
    """Start-up refused: ``problems`` lists every problem found, each naming its key."""

    title = "problems"

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(f"{self.title}:\n" + "\n".join(f"  {p}" for p in problems))


class ConfigError(ProblemsError):
    title = "invalid configuration"


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class BrokerConfig:
    urls: tuple[str, ...]  # the nodes' addresses, in the order they are tried
    prefix: str
    partitions: int
    confirm_timeout: float
    heartbeat: int
    management_url: str
    quorum_size: int = 0  # replicas of each quorum queue when declared (0: one per node)

    @property
    def url(self) -> str:
        """The first node's address (where the management API is looked for)."""
        return self.urls[0]


@dataclass(frozen=True)
class ReceiverConfig:
    host: str
    port: int
    api_key: str
    max_body_bytes: int
    retry_after: int
    processes: int
    threads: int
    read_timeout: float
    unready_exit_after: float
    lime_secret: str = ""
    lime_previous_secret: str = ""
    lime_max_age: float = 300.0
    deliveries_db: str = ""
    public_url: str = ""  # where Lime reaches this receiver (https://host/), for the webhook subscription
    metrics: bool = True  # GET /metrics
    metrics_dir: str = ""  # the gunicorn processes' metric files ("" = a temporary folder)

    @property
    def lime_events_url(self) -> str:
        """The webhook subscription's target: ``POST /lime/events`` at ``public_url``
        ("" when it is not set)."""
        return f"{self.public_url}lime/events" if self.public_url else ""


@dataclass(frozen=True)
class OutboundConfig:
    """Lime -> BFUS (docs/lime-to-bfus.md)."""

    enabled: bool
    create_when: str  # Lime yesno property of a company marking it for BFUS ("" = never create)
    sweep_interval: float  # seconds between sweeps for changes whose webhook Lime dropped; 0 = off


@dataclass(frozen=True)
class LimeConfig:
    url: str
    api_key: str
    connect_timeout: float
    read_timeout: float
    rate_limit: float
    processed_limetype: str
    failed_limetype: str


@dataclass(frozen=True)
class WorkerConfig:
    prefetch: int
    retry_initial: float
    retry_max: float
    shutdown_timeout: float
    rebalance_interval: float
    breaker_threshold: int
    concurrency: int
    lime_error_attempts: int
    coalesce: bool = True  # apply only the newest of a partition's waiting messages for one object
    skip_unchanged: bool = True  # no PUT when Lime already holds the message's values
    metrics_port: int = 0  # this process's /metrics (0 = none)


@dataclass(frozen=True)
class BfusConfig:
    url: str
    token: str
    ui_url: str = ""  # BFUS's user-interface base: the jump follows only bookmark addresses under it


JUMP_CLIENTS = ("MFU", "BFU")  # BFUS's web client, its desktop client
JUMP_SECRET_MIN = 16


@dataclass(frozen=True)
class JumpConfig:
    """The jump from a Lime object to BFUS (docs/jump.md): ``GET /jump/<limetype>/<id>``
    signed with ``secret`` (empty: jump off), links written to Lime opening ``client``,
    ``links`` Lime limetype -> the link property holding the object's jump address."""

    secret: str = ""
    previous_secret: str = ""  # still accepted while a new secret is rolled out
    client: str = "MFU"
    links: Mapping[str, str] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.secret)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secrets a signature is checked against: the current one, then the previous."""
        return tuple(s for s in (self.secret, self.previous_secret) if s)


@dataclass(frozen=True)
class AdminConfig:
    user: str
    password: str


@dataclass(frozen=True)
class RetentionConfig:
    days: int
    interval_hours: float


@dataclass(frozen=True)
class LogConfig:
    level: str
    format: str


@dataclass(frozen=True)
class FieldRule:
    """Where one BFUS field lands in Lime, and how its values translate. ``truncate``
    cuts text to the property's length instead of failing the message."""

    property: str
    values: Mapping[str, Any] | None = None
    truncate: bool = False


@dataclass(frozen=True)
class RelationRule:
    """A Lime belongsto ``property`` set to the Lime object of BFUS ``objecttype``
    whose key is the value of ``field`` in this object's data."""

    property: str
    objecttype: str
    field: str


@dataclass(frozen=True)
class SoftDelete:
    kind: str  # option | yesno | date | none
    property: str | None = None
    value: Any = None


@dataclass(frozen=True)
class ObjectMapping:
    sync: bool
    limetype: str
    key: str
    watermark: str | None
    exclude: tuple[str, ...]
    rename: Mapping[str, str]
    fields: Mapping[str, FieldRule]
    soft_delete: SoftDelete
    relations: Mapping[str, RelationRule] = field(default_factory=dict)
    fingerprint: str | None = None
    to_bfus: tuple[str, ...] = ()


@dataclass(frozen=True)
class MappingConfig:
    exclude_personal_data: bool
    anonymous_name: str
    objects: Mapping[str, ObjectMapping]


@dataclass(frozen=True)
class Config:
    broker: BrokerConfig
    receiver: ReceiverConfig
    lime: LimeConfig
    worker: WorkerConfig
    bfus: BfusConfig
    log: LogConfig
    mapping: MappingConfig
    admin: AdminConfig
    retention: RetentionConfig
    outbound: OutboundConfig = OutboundConfig(False, "", 0.0)
    jump: JumpConfig = field(default_factory=JumpConfig)
    source: str = field(default="defaults", compare=False)


# --------------------------------------------------------------------------- schemas

_positive = validate.Range(min=0, min_inclusive=False)
_port = validate.Range(min=1, max=65535)
_name = validate.Regexp(r"^[a-z][a-z0-9_]*$", error="Must be a lower-case name ([a-z][a-z0-9_]*).")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


def _url_with_scheme(*schemes: str) -> Callable[[str], None]:
    def check(value: str) -> None:
        if not any(value.startswith(f"{s}://") for s in schemes) or "://" == value[-3:]:
            raise ValidationError(f"Must be a URL starting with {' or '.join(s + '://' for s in schemes)}.")

    return check


def _public_base_url(value: str) -> None:
    """Empty, or an http(s) address to put paths under: no query, no fragment, not yet
    a path of the receiver's own."""
    if value == "":
        return
    _url_with_scheme("http", "https")(value)
    if "?" in value or "#" in value:
        raise ValidationError("Must be the receiver's base address, without ? or #.")
    if value.rstrip("/").endswith(("/lime/events", "/bfus/messages")):
        raise ValidationError("Must be the receiver's base address (https://host/), without /lime/events.")


class _Addresses(fields.Field):
    """``broker.url``: one AMQP URL, several separated by commas, or a list of them
    (the nodes of a cluster), as a tuple in the order given."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValidationError("Must be an AMQP URL, several separated by commas, or a list of them.")
        urls = tuple(item.strip() for item in items if item.strip())
        if not urls:
            raise ValidationError("Must name at least one AMQP URL.")
        for url in urls:
            _url_with_scheme("amqp", "amqps")(url)
        return urls


class BrokerSchema(_Strict):
    urls = _Addresses(required=True, data_key="url")
    prefix = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_.-]+$"))
    partitions = fields.Integer(required=True, validate=validate.Range(min=1, max=1024))
    confirm_timeout = fields.Float(required=True, validate=_positive)
    heartbeat = fields.Integer(required=True, validate=validate.Range(min=0))
    management_url = fields.String(required=True, validate=lambda v: v == "" or _url_with_scheme("http", "https")(v))
    quorum_size = fields.Integer(required=True, validate=validate.Range(min=0, max=99))

    @post_load
    def make(self, data: dict, **_: Any) -> BrokerConfig:
        return BrokerConfig(**data)


class ReceiverSchema(_Strict):
    host = fields.String(required=True)
    port = fields.Integer(required=True, validate=_port)
    api_key = fields.String(required=True)
    max_body_bytes = fields.Integer(required=True, validate=validate.Range(min=256))
    retry_after = fields.Integer(required=True, validate=validate.Range(min=1))
    processes = fields.Integer(required=True, validate=validate.Range(min=1))
    threads = fields.Integer(required=True, validate=validate.Range(min=1))
    read_timeout = fields.Float(required=True, validate=_positive)
    unready_exit_after = fields.Float(required=True, validate=validate.Range(min=0))
    lime_secret = fields.String(required=True)
    lime_previous_secret = fields.String(required=True)
    lime_max_age = fields.Float(required=True, validate=validate.Range(min=1, max=86400))
    deliveries_db = fields.String(required=True)
    public_url = fields.String(required=True, validate=_public_base_url)
    metrics = fields.Boolean(required=True)
    metrics_dir = fields.String(required=True)

    @post_load
    def make(self, data: dict, **_: Any) -> ReceiverConfig:
        if data["public_url"] and not data["public_url"].endswith("/"):
            data["public_url"] += "/"
        return ReceiverConfig(**data)


class LimeSchema(_Strict):
    url = fields.String(required=True, validate=_url_with_scheme("http", "https"))
    api_key = fields.String(required=True)
    connect_timeout = fields.Float(required=True, validate=_positive)
    read_timeout = fields.Float(required=True, validate=_positive)
    rate_limit = fields.Float(required=True, validate=_positive)
    processed_limetype = fields.String(required=True, validate=_name)
    failed_limetype = fields.String(required=True, validate=_name)

    @post_load
    def make(self, data: dict, **_: Any) -> LimeConfig:
        if not data["url"].endswith("/"):
            data["url"] += "/"
        return LimeConfig(**data)


class WorkerSchema(_Strict):
    prefetch = fields.Integer(required=True, validate=validate.Range(min=1, max=10000))
    retry_initial = fields.Float(required=True, validate=_positive)
    retry_max = fields.Float(required=True, validate=_positive)
    shutdown_timeout = fields.Float(required=True, validate=_positive)
    rebalance_interval = fields.Float(required=True, validate=validate.Range(min=0.05, max=60))
    breaker_threshold = fields.Integer(required=True, validate=validate.Range(min=1))
    concurrency = fields.Integer(required=True, validate=validate.Range(min=1, max=256))
    lime_error_attempts = fields.Integer(required=True, validate=validate.Range(min=1))
    coalesce = fields.Boolean(required=True)
    skip_unchanged = fields.Boolean(required=True)
    metrics_port = fields.Integer(required=True, validate=validate.Range(min=0, max=65535))

    @validates_schema
    def check_backoff(self, data: dict, **_: Any) -> None:
        if data.get("retry_max", 1) < data.get("retry_initial", 0):
            raise ValidationError("Must not be smaller than worker.retry_initial.", "retry_max")

    @post_load
    def make(self, data: dict, **_: Any) -> WorkerConfig:
        return WorkerConfig(**data)


def _ui_base_url(value: str) -> None:
    """Empty, or the http(s) base address every BFUS bookmark starts with."""
    if value == "":
        return
    _url_with_scheme("http", "https")(value)
    if "?" in value or "#" in value or any(c.isspace() for c in value):
        raise ValidationError("Must be BFUS's user-interface base address, without ?, # or spaces.")


class BfusSchema(_Strict):
    url = fields.String(required=True, validate=_url_with_scheme("http", "https"))
    token = fields.String(required=True)
    ui_url = fields.String(required=True, validate=_ui_base_url)

    @post_load
    def make(self, data: dict, **_: Any) -> BfusConfig:
        if data["ui_url"] and not data["ui_url"].endswith("/"):
            data["ui_url"] += "/"  # https://bfus.example.se/ui must not admit https://bfus.example.se/ui.evil/
        return BfusConfig(**data)


def _jump_secret(value: str) -> None:
    if value and len(value) < JUMP_SECRET_MIN:
        raise ValidationError(f"Must be at least {JUMP_SECRET_MIN} characters (or empty).")


class JumpSchema(_Strict):
    secret = fields.String(required=True, validate=_jump_secret)
    previous_secret = fields.String(required=True, validate=_jump_secret)
    client = fields.String(required=True, validate=validate.OneOf(JUMP_CLIENTS))
    links = fields.Dict(keys=fields.String(), values=fields.String(), required=True)

    @validates("links")
    def check_links(self, links: dict, **_: Any) -> None:
        """Each entry named by its limetype (jump.links.company: ...)."""
        found: dict[str, list[str]] = {}
        for limetype, prop in links.items():
            for what, name in (("limetype", limetype), ("link property", prop)):
                if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                    found.setdefault(limetype, []).append(f"The {what} must be a lower-case name ([a-z][a-z0-9_]*).")
        if found:
            raise ValidationError(found)  # a table of messages per entry: jump.links.<limetype>

    @post_load
    def make(self, data: dict, **_: Any) -> JumpConfig:
        return JumpConfig(**data)


class OutboundSchema(_Strict):
    enabled = fields.Boolean(required=True)
    create_when = fields.String(required=True, validate=lambda v: v == "" or _name(v))
    sweep_interval = fields.Float(required=True, validate=validate.Range(min=0))

    @post_load
    def make(self, data: dict, **_: Any) -> OutboundConfig:
        return OutboundConfig(**data)


class AdminSchema(_Strict):
    user = fields.String(required=True, validate=validate.Length(min=1))
    password = fields.String(required=True)

    @post_load
    def make(self, data: dict, **_: Any) -> AdminConfig:
        return AdminConfig(**data)


class RetentionSchema(_Strict):
    days = fields.Integer(required=True, validate=validate.Range(min=0))
    interval_hours = fields.Float(required=True, validate=_positive)

    @post_load
    def make(self, data: dict, **_: Any) -> RetentionConfig:
        return RetentionConfig(**data)


class LogSchema(_Strict):
    level = fields.String(required=True, validate=validate.OneOf(["debug", "info", "warning", "error"]))
    format = fields.String(required=True, validate=validate.OneOf(["console", "json"]))

    @post_load
    def make(self, data: dict, **_: Any) -> LogConfig:
        return LogConfig(**data)


class FieldRuleField(fields.Field):
    """A field rule written either as ``"property"`` or
    ``{property = "...", values = {...}, truncate = true}``."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> FieldRule:
        if isinstance(value, str):
            return FieldRule(property=value)
        if isinstance(value, dict):
            unknown = set(value) - {"property", "values", "truncate"}
            if unknown:
                raise ValidationError(f"Unknown field rule key(s): {', '.join(sorted(unknown))}.")
            prop = value.get("property")
            if not isinstance(prop, str) or not prop:
                raise ValidationError("A field rule needs a 'property' (the Lime property name).")
            values = value.get("values")
            if values is not None and not isinstance(values, dict):
                raise ValidationError("'values' must be a table of BFUS value = Lime value.")
            truncate = value.get("truncate", False)
            if not isinstance(truncate, bool):
                raise ValidationError("'truncate' must be true or false.")
            return FieldRule(property=prop, values=values, truncate=truncate)
        raise ValidationError("Must be a Lime property name or a table with 'property'.")


class RelationSchema(_Strict):
    objecttype = fields.String(required=True, validate=_name)
    field = fields.String(required=True)


class SoftDeleteSchema(_Strict):
    kind = fields.String(required=True, validate=validate.OneOf(["option", "yesno", "date", "none"]))
    property = fields.String(load_default=None)
    value = fields.Raw(load_default=None)

    @validates_schema
    def check(self, data: dict, **_: Any) -> None:
        if data["kind"] != "none" and not data.get("property"):
            raise ValidationError(f"Soft delete of kind '{data['kind']}' needs a property.", "property")
        if data["kind"] == "option" and not isinstance(data.get("value"), str):
            raise ValidationError("Soft delete of kind 'option' needs the option key as value.", "value")

    @post_load
    def make(self, data: dict, **_: Any) -> SoftDelete:
        return SoftDelete(**data)


class ObjectMappingSchema(_Strict):
    sync = fields.Boolean(required=True)
    limetype = fields.String(required=True, validate=_name)
    key = fields.String(required=True)
    watermark = fields.String(load_default=None)
    exclude = fields.List(fields.String(), load_default=list)  # type: ignore[assignment]  # a field, not Meta
    rename = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    fields_ = fields.Dict(keys=fields.String(), values=FieldRuleField(), data_key="fields", load_default=dict)
    soft_delete = fields.Nested(SoftDeleteSchema, required=True)
    relations = fields.Dict(keys=fields.String(), values=fields.Nested(RelationSchema), load_default=dict)
    fingerprint = fields.String(load_default=None)
    to_bfus = fields.List(fields.String(), load_default=list)

    @post_load
    def make(self, data: dict, **_: Any) -> ObjectMapping:
        data["fields"] = data.pop("fields_")
        data["exclude"] = tuple(data["exclude"])
        data["to_bfus"] = tuple(data["to_bfus"])
        data["relations"] = {prop: RelationRule(prop, **rule) for prop, rule in data["relations"].items()}
        return ObjectMapping(**data)


class MappingSchema(_Strict):
    exclude_personal_data = fields.Boolean(required=True)
    anonymous_name = fields.String(required=True, validate=validate.Length(min=1))
    objects = fields.Dict(
        keys=fields.String(validate=_name), values=fields.Nested(ObjectMappingSchema), required=True
    )

    @post_load
    def make(self, data: dict, **_: Any) -> MappingConfig:
        return MappingConfig(**data)


class ConfigSchema(_Strict):
    broker = fields.Nested(BrokerSchema, required=True)
    receiver = fields.Nested(ReceiverSchema, required=True)
    lime = fields.Nested(LimeSchema, required=True)
    worker = fields.Nested(WorkerSchema, required=True)
    bfus = fields.Nested(BfusSchema, required=True)
    log = fields.Nested(LogSchema, required=True)
    mapping = fields.Nested(MappingSchema, required=True)
    admin = fields.Nested(AdminSchema, required=True)
    retention = fields.Nested(RetentionSchema, required=True)
    outbound = fields.Nested(OutboundSchema, required=True)
    jump = fields.Nested(JumpSchema, required=True)

    @post_load
    def make(self, data: dict, **_: Any) -> Config:
        return Config(**data)


# --------------------------------------------------------------------------- loading


def deep_merge(base: dict, over: Mapping) -> dict:
    """A new dict: ``over`` merged into ``base``; tables merge, everything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def env_overrides(environ: Mapping[str, str]) -> dict:
    """``BFUSLIME_LIME__API_KEY=x`` -> ``{"lime": {"api_key": "x"}}``; JSON lists and
    tables are parsed. ``RABBITMQ_URL`` sets ``broker.url``."""
    tree: dict = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                pass
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    if environ.get("RABBITMQ_URL"):
        tree.setdefault("broker", {})["url"] = environ["RABBITMQ_URL"]
    return tree


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, dict):
        out: list[str] = []
        dict_entry = set(messages) <= {"key", "value"}  # how marshmallow reports a table's entries
        for key, sub in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema" or (dict_entry and key == "value" and isinstance(sub, dict)):
                name = prefix or "(top level)"
            out.extend(_flatten(sub, name))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{prefix}: {' '.join(messages)}"]
    if isinstance(messages, list):
        return [line for m in messages for line in _flatten(m, prefix)]
    return [f"{prefix}: {messages}"]


def _required_secrets(config: Config, need: tuple[str, ...]) -> list[str]:
    problems = []
    for dotted in need:
        section, key = dotted.split(".")
        if not getattr(getattr(config, section), key):
            problems.append(f"{dotted}: Must be set (config file or {ENV_PREFIX}{section.upper()}__{key.upper()}).")
    return problems


def _jump_problems(config: Config) -> list[str]:
    """What the jump needs from other sections (checked once every section is valid)."""
    jump = config.jump
    problems = []
    if jump.previous_secret and not jump.secret:
        problems.append("jump.previous_secret: Must be empty while jump.secret is (jump off); while rotating, "
                        "the new secret goes in jump.secret and the old one here.")
    if jump.enabled and not config.bfus.ui_url:
        problems.append("bfus.ui_url: Must be set when jump is on (jump.secret): the jump redirects only to "
                        "BFUS addresses under it.")
    if jump.links:
        if not jump.secret:
            problems.append(f"jump.secret: Must be set when jump.links names link properties (config file or "
                            f"{ENV_PREFIX}JUMP__SECRET).")
        if not config.receiver.public_url:
            problems.append("receiver.public_url: Must be set when jump.links names link properties (the links "
                            "written to Lime point to <public_url>jump/...).")
    synced: dict[str, list[str]] = {}
    for objecttype, spec in config.mapping.objects.items():
        if spec.sync:
            synced.setdefault(spec.limetype, []).append(objecttype)
    for limetype in sorted(jump.links):
        if limetype not in synced:
            problems.append(f"jump.links.{limetype}: '{limetype}' is not the limetype of a synced mapping "
                            f"(synced: {', '.join(sorted(synced)) or 'none'}).")
        elif len(synced[limetype]) > 1:
            problems.append(f"jump.links.{limetype}: '{limetype}' is the limetype of more than one synced mapping "
                            f"({', '.join(synced[limetype])}), so a jump could not tell which BFUS object to open.")
    return problems


def build_config(
    raw: Mapping | None = None,
    environ: Mapping[str, str] | None = None,
    need: tuple[str, ...] = (),
    source: str = "defaults",
) -> Config:
    """Validate defaults + ``raw`` + environment. ``need`` names settings that must be
    non-empty for the caller (e.g. ``("lime.api_key",)`` for a worker)."""
    with DEFAULTS_PATH.open("rb") as fh:
        tree = tomllib.load(fh)
    tree = deep_merge(tree, raw or {})
    tree = deep_merge(tree, env_overrides(os.environ if environ is None else environ))
    try:
        config: Config = ConfigSchema().load(tree)
    except ValidationError as err:
        raise ConfigError(_flatten(err.messages)) from None
    problems = _jump_problems(config) + _required_secrets(config, need)
    if problems:
        raise ConfigError(problems)
    return Config(**{**config.__dict__, "source": source})


def load_config(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    need: tuple[str, ...] = (),
) -> Config:
    """Read the configuration file (``path``, else ``$BFUSLIME_CONFIG``, else none)."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV)
    raw: dict = {}
    source = "defaults"
    if path:
        path = Path(path)
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([f"config file {path}: not found"]) from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError([f"config file {path}: not valid TOML ({err})"]) from None
        source = str(path)
    return build_config(raw, environ, need, source)
