"""Limetypes of the Lime stand-in, read from a TOML schema file.

    [limetypes.company]
    descriptive = "name"
    [limetypes.company.properties]
    name = { type = "string", length = 128, required = true }
    customertype = { type = "option", options = ["private", "company"] }
    persons = { type = "hasmany", related = "person", backreference = "company" }
    bfuslink = { type = "link", length = 512, localname = "Open in MFU" }

A link property is text holding an http(s) address or "" (checked by the store); the
web card shows it in the actionpad, named by its localname (sandbox/lime/web.py).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

DEFAULT_SCHEMA = Path(__file__).with_name("default_schema.toml")

PROPERTY_TYPES = frozenset(
    {
        "string", "text", "phone", "link", "integer", "decimal", "percent", "yesno",
        "option", "time", "date", "belongsto", "hasmany", "file", "user",
    }
)
TEXT_TYPES = frozenset({"string", "text", "phone", "link"})
RELATION_TYPES = frozenset({"belongsto", "hasmany"})


class SchemaError(ValueError):
    pass


@dataclass(frozen=True)
class Option:
    id: int
    key: str
    text: str
    inactive: bool = False


@dataclass(frozen=True)
class Property:
    name: str
    type: str
    required: bool = False
    length: int | None = None
    options: tuple[Option, ...] = ()
    default: Any = None
    related: str | None = None
    backreference: str | None = None
    localname: str = ""

    @property
    def stored(self) -> bool:
        return self.type != "hasmany"

    def option(self, key: str) -> Option | None:
        return self._options_by_key.get(key)

    @cached_property
    def _options_by_key(self) -> dict[str, Option]:
        return {o.key: o for o in reversed(self.options)}  # the first of a key wins, as a search in order

    def to_json(self, base_url: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "localname": self.localname or self.name,
            "type": self.type,
            "required": self.required,
            "length": self.length,
        }
        if self.type == "option":
            out["options"] = [{"id": o.id, "key": o.key, "text": o.text, "inactive": o.inactive} for o in self.options]
        if self.related:
            out["relation"] = {"limetype": self.related, "backreference": self.backreference}
            out["_links"] = {
                "related_type": {"href": f"{base_url}limetype/{self.related}/", "name": self.related}
            }
        return out


@dataclass(frozen=True)
class Limetype:
    name: str
    properties: dict[str, Property]
    descriptive: str | None = None
    localname: dict[str, str] = field(default_factory=dict)

    @cached_property
    def stored_properties(self) -> list[Property]:
        return [p for p in self.properties.values() if p.stored]

    def to_json(self, base_url: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "localname": self.localname or {"singular": self.name, "plural": self.name},
            "_links": {"self": {"href": f"{base_url}limetype/{self.name}/"}},
            "_embedded": {"properties": [p.to_json(base_url) for p in self.properties.values()]},
        }


def _options(limetype: str, name: str, raw: Any, next_id: list[int]) -> tuple[Option, ...]:
    if not isinstance(raw, list) or not raw:
        raise SchemaError(f"{limetype}.{name}: an option property needs a non-empty 'options' list")
    options = []
    for item in raw:
        if isinstance(item, str):
            item = {"key": item}
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise SchemaError(f"{limetype}.{name}: each option is a key or a table with 'key'")
        next_id[0] += 1
        options.append(
            Option(
                id=next_id[0],
                key=item["key"],
                text=item.get("text", item["key"].replace("_", " ").capitalize()),
                inactive=bool(item.get("inactive", False)),
            )
        )
    return tuple(options)


def parse_schema(raw: dict[str, Any]) -> dict[str, Limetype]:
    limetypes: dict[str, Limetype] = {}
    next_id = [1000]
    for lt_name, lt_raw in (raw.get("limetypes") or {}).items():
        props: dict[str, Property] = {}
        for name, spec in (lt_raw.get("properties") or {}).items():
            if isinstance(spec, str):
                spec = {"type": spec}
            ptype = spec.get("type")
            if ptype not in PROPERTY_TYPES:
                raise SchemaError(f"{lt_name}.{name}: unknown property type {ptype!r}")
            if name.startswith("_"):
                raise SchemaError(f"{lt_name}.{name}: property names may not start with '_'")
            options = _options(lt_name, name, spec.get("options"), next_id) if ptype == "option" else ()
            if ptype in RELATION_TYPES and not spec.get("related"):
                raise SchemaError(f"{lt_name}.{name}: a {ptype} property needs 'related'")
            props[name] = Property(
                name=name,
                type=ptype,
                required=bool(spec.get("required", False)),
                length=spec.get("length") or (255 if ptype == "string" else None),
                options=options,
                default=spec.get("default"),
                related=spec.get("related"),
                backreference=spec.get("backreference"),
                localname=spec.get("localname", ""),
            )
        limetypes[lt_name] = Limetype(
            name=lt_name,
            properties=props,
            descriptive=lt_raw.get("descriptive"),
            localname=lt_raw.get("localname") or {},
        )
    for lt in limetypes.values():
        for prop in lt.properties.values():
            if prop.related and prop.related not in limetypes:
                raise SchemaError(f"{lt.name}.{prop.name}: related limetype {prop.related!r} is not defined")
    return limetypes


def load_schema(path: str | Path | None = None) -> dict[str, Limetype]:
    with Path(path or DEFAULT_SCHEMA).open("rb") as fh:
        return parse_schema(tomllib.load(fh))
