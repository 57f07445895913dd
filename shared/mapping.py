"""The mapping engine: BFUS object data -> Lime property values. Pure code, no I/O.

A mapper is built from the mapping configuration of one BFUS objecttype and the Lime
metadata of its target limetype (``GET limetype/``). Standard fields are mapped unless
excluded; a field may be renamed or added with a value map. Values are converted to
what the Lime property type takes; a value that cannot be placed raises
:class:`MappingError` naming the field and the value, so nothing half-mapped is
ever written."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared import fingerprint as fp
from shared.config import FieldRule, MappingConfig, ObjectMapping, ProblemsError, RelationRule

# BFUS field -> Lime property of the default Lime schema, per objecttype. These are
# mapped unless a configuration excludes or renames them.
STANDARD_FIELDS: dict[str, dict[str, str]] = {
    "customer": {
        "customerno": "customerno",
        "name": "name",
        "customertype": "customertype",
        "orgno": "registrationno",
        "socialsecurityno": "socialsecurityno",
        "firstname": "firstname",
        "lastname": "lastname",
        "street": "postaladdress1",
        "zipcode": "postalzipcode",
        "city": "postalcity",
        "country": "country",
        "phone": "phone",
        "mobilephone": "mobilephone",
        "email": "email",
        "status": "bfusstatus",
        "category": "category",
        "paymentmethod": "paymentmethod",
        "einvoice": "einvoice",
        "createddate": "bfuscreateddate",
        "changeddate": "bfuschangeddate",
    },
    "contract": {
        "contractno": "contractno",
        "product": "product",
        "status": "status",
        "startdate": "startdate",
        "enddate": "enddate",
    },
    "facility": {
        "facilityno": "facilityno",
        "street": "street",
        "zipcode": "zipcode",
        "city": "city",
        "propertydesignation": "propertydesignation",
        "district": "district",
        "category": "category",
        "enddate": "enddate",
    },
    "meter": {
        "meterno": "meterno",
        "metertype": "metertype",
        "installeddate": "installeddate",
        "removeddate": "removeddate",
    },
}

# The BFUS field that holds each object's key (the envelope's `key`).
BFUS_KEY_FIELDS: dict[str, str] = {
    "customer": "customerno",
    "contract": "contractno",
    "facility": "facilityno",
    "meter": "meterno",
}

# BFUS fields that hold personal data: left out of Lime when
# mapping.exclude_personal_data is on (whatever property they are mapped to).
PERSONAL_FIELDS: dict[str, frozenset[str]] = {
    "customer": frozenset(
        {"socialsecurityno", "firstname", "lastname", "street", "zipcode", "city", "phone", "mobilephone", "email"}
    ),
    "facility": frozenset({"street", "zipcode", "city", "propertydesignation"}),
}
# Fields that are personal only for private customers; with the switch on they get
# mapping.anonymous_name instead (Lime requires a company name).
PRIVATE_NAME_FIELDS: dict[str, str] = {"customer": "name"}


def is_private(objecttype: str, data: Mapping[str, Any]) -> bool:
    return objecttype == "customer" and data.get("customertype") != "company"


TEXT_TYPES = frozenset({"string", "text", "phone", "link"})
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TRUE = {"true", "yes", "ja", "j", "y", "1"}
_FALSE = {"false", "no", "nej", "n", "0", ""}


class MappingError(ValueError):
    """A BFUS value the mapping cannot place in Lime. ``problem`` never quotes the value."""

    def __init__(self, field: str, value: Any, problem: str):
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"field '{field}' value {value!r}: {problem}")


class MappingSetupError(ProblemsError):
    """The mapping does not fit Lime; ``problems`` lists each misfit."""

    title = "mapping does not fit Lime"


@dataclass(frozen=True)
class ObjectMapper:
    objecttype: str
    spec: ObjectMapping
    fields: Mapping[str, FieldRule]  # effective BFUS field -> rule
    properties: Mapping[str, dict[str, Any]]  # Lime metadata of the target limetype
    exclude_personal: bool = False
    anonymous_name: str = "Customer {customerno}"
    to_bfus: tuple[str, ...] = ()  # BFUS fields that also flow from Lime to BFUS (outbound on)

    @property
    def fingerprint_property(self) -> str | None:
        return self.spec.fingerprint if self.to_bfus else None

    @property
    def flowing_properties(self) -> tuple[str, ...]:
        """The Lime properties of the fields in ``to_bfus``."""
        return tuple(self.fields[f].property for f in self.to_bfus)

    @property
    def limetype(self) -> str:
        return self.spec.limetype

    @property
    def key_property(self) -> str:
        return self.spec.key

    @property
    def relations(self) -> Mapping[str, RelationRule]:
        return self.spec.relations

    def map(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Lime values for a BFUS snapshot (fields present in ``data`` only), or
        MappingError: all fields are mapped before anything is written."""
        values: dict[str, Any] = {}
        anonymous_field = PRIVATE_NAME_FIELDS.get(self.objecttype) if self.exclude_personal else None
        for bfus_field, rule in self.fields.items():
            if bfus_field not in data:
                continue
            raw = data[bfus_field]
            if bfus_field == anonymous_field and is_private(self.objecttype, data):
                raw = self.anonymous_name.format_map(_Blank(data))
            elif rule.values is not None and raw is not None:
                if str(raw) not in rule.values:
                    known = ", ".join(sorted(map(str, rule.values)))
                    raise MappingError(bfus_field, raw, f"no value map entry (mapped values: {known})")
                raw = rule.values[str(raw)]
            values[rule.property] = convert(bfus_field, raw, self.properties[rule.property], rule.truncate)
        if self.fingerprint_property:
            values[self.fingerprint_property] = fp.fingerprint(values, self.flowing_properties)
        return values

    def bfus_values(self, lime_values: Mapping[str, Any], properties: tuple[str, ...]) -> dict[str, Any]:
        """The BFUS fields of the mapped ``properties`` from a Lime object: the mapping
        run backwards (value maps reversed, no value as null)."""
        by_property = {rule.property: f for f, rule in self.fields.items()}
        out: dict[str, Any] = {}
        for prop in properties:
            bfus_field = by_property[prop]
            value = fp.normal(lime_values.get(prop))
            rule = self.fields[bfus_field]
            if rule.values is not None and value != "":
                back = {str(v): k for k, v in rule.values.items()}
                if str(value) not in back:
                    raise MappingError(bfus_field, value, f"no value map entry maps to it ({', '.join(sorted(back))})")
                value = back[str(value)]
            out[bfus_field] = None if value == "" else value
        return out

    def relation_keys(self, data: Mapping[str, Any]) -> dict[str, str | None]:
        """Lime belongsto property -> BFUS key of the related object (None: no relation)."""
        out: dict[str, str | None] = {}
        for prop, rule in self.relations.items():
            if rule.field in data:  # a relation absent from the snapshot is left as it is
                value = data[rule.field]
                out[prop] = None if value in (None, "") else str(value)
        return out

    def soft_delete_values(self, when: dt.date) -> dict[str, Any]:
        rule = self.spec.soft_delete
        if rule.kind == "none" or rule.property is None:
            return {}
        if rule.kind == "option":
            return {rule.property: rule.value}
        if rule.kind == "yesno":
            return {rule.property: True if rule.value is None else bool(rule.value)}
        return {rule.property: when.isoformat()}


class _Blank(dict):
    """format_map source: BFUS data, with missing fields as empty text."""

    def __missing__(self, key: str) -> str:
        return ""


def effective_fields(objecttype: str, spec: ObjectMapping, exclude_personal: bool) -> dict[str, FieldRule]:
    """Standard fields, renamed, plus added fields, minus excluded (and personal) ones."""
    fields = {f: FieldRule(p) for f, p in STANDARD_FIELDS.get(objecttype, {}).items()}
    for bfus_field, prop in spec.rename.items():
        fields[bfus_field] = FieldRule(prop, fields[bfus_field].values if bfus_field in fields else None)
    fields.update(spec.fields)
    for bfus_field in spec.exclude:
        fields.pop(bfus_field, None)
    if exclude_personal:
        for bfus_field in PERSONAL_FIELDS.get(objecttype, ()):
            fields.pop(bfus_field, None)
    return fields


def is_personal(objecttype: str, field: str, data: Mapping[str, Any]) -> bool:
    if field in PERSONAL_FIELDS.get(objecttype, ()):
        return True
    return PRIVATE_NAME_FIELDS.get(objecttype) == field and is_private(objecttype, data)


def scrub_personal(objecttype: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with every personal field's value replaced (for Lime log payloads
    when personal data is left out)."""
    return {
        name: "[personal data left out]" if value not in (None, "") and is_personal(objecttype, name, data) else value
        for name, value in data.items()
    }


def objecttype_of(mapping: MappingConfig, limetype: str) -> tuple[str, ObjectMapping] | None:
    """The synced BFUS objecttype whose Lime limetype is ``limetype``, with its mapping
    (``spec.key`` the Lime property holding the BFUS key); None when none is."""
    found = [(t, spec) for t, spec in mapping.objects.items() if spec.sync and spec.limetype == limetype]
    return found[0] if len(found) == 1 else None


def build_mappers(mapping: MappingConfig, limetypes: Mapping[str, Mapping[str, Any]],
                  outbound: bool = False) -> dict[str, ObjectMapper]:
    """Mappers for every synced objecttype, checked against Lime's metadata. Raises
    MappingSetupError listing every problem found. With ``outbound``, the customer
    mapping's fields flowing to BFUS are checked and kept too."""
    problems: list[str] = []
    mappers: dict[str, ObjectMapper] = {}
    for objecttype, spec in mapping.objects.items():
        if not spec.sync:
            continue
        where = f"mapping.objects.{objecttype}"
        lt = limetypes.get(spec.limetype)
        if lt is None:
            problems.append(f"{where}.limetype: Lime has no limetype '{spec.limetype}'.")
            continue
        props = lt["properties"]
        fields = effective_fields(objecttype, spec, mapping.exclude_personal_data)
        problems.extend(_check_properties(where, spec, fields, props))
        problems.extend(_check_options(where, spec, fields, props))
        to_bfus: tuple[str, ...] = ()
        if outbound and objecttype == OUTBOUND_OBJECTTYPE:
            found = _check_to_bfus(where, spec, fields, props)
            problems.extend(found)
            to_bfus = () if found else tuple(f for f in spec.to_bfus if f in fields)
        mappers[objecttype] = ObjectMapper(
            objecttype, spec, fields, props, mapping.exclude_personal_data, mapping.anonymous_name, to_bfus
        )
    problems.extend(_check_relations(mapping, mappers, limetypes))
    if problems:
        raise MappingSetupError(problems)
    return mappers


def _check_properties(where: str, spec: ObjectMapping, fields: Mapping[str, FieldRule], props: Mapping) -> list[str]:
    problems = []
    needed = {spec.key: f"{where}.key"}
    if spec.watermark:
        needed[spec.watermark] = f"{where}.watermark"
    if spec.soft_delete.property:
        needed[spec.soft_delete.property] = f"{where}.soft_delete.property"
    needed.update({rule.property: f"{where}.fields.{f}" for f, rule in fields.items()})
    for prop, key in needed.items():
        if prop not in props:
            problems.append(f"{key}: limetype '{spec.limetype}' has no property '{prop}'.")
    for bfus_field, rule in fields.items():
        ptype = props.get(rule.property, {}).get("type")
        if ptype in UNMAPPABLE_TYPES:
            problems.append(
                f"{where}.fields.{bfus_field}: '{rule.property}' has type {ptype}; "
                "map relations under 'relations'."
            )
    if spec.key in props and props[spec.key].get("type") not in TEXT_TYPES | {"integer"}:
        problems.append(f"{where}.key: '{spec.key}' has type {props[spec.key].get('type')}, not text or integer.")
    if spec.watermark in props and props[spec.watermark].get("type") != "integer":
        problems.append(f"{where}.watermark: '{spec.watermark}' must be an integer property.")
    return problems


# BFUS fields BFUS alone writes: never sent to BFUS.
BFUS_OWNED: frozenset[str] = frozenset({"customerno", "status", "category", "createddate", "changeddate"})
OUTBOUND_OBJECTTYPE = "customer"


def _check_to_bfus(where: str, spec: ObjectMapping, fields: Mapping[str, FieldRule], props: Mapping) -> list[str]:
    """The fields of ``to_bfus`` must be mapped (a field left out, for instance as
    personal data, is skipped), BFUS's to write, and the fingerprint property text."""
    problems = []
    for bfus_field in spec.to_bfus:
        if bfus_field in BFUS_OWNED or bfus_field == BFUS_KEY_FIELDS.get(OUTBOUND_OBJECTTYPE):
            problems.append(f"{where}.to_bfus: '{bfus_field}' belongs to BFUS and never flows to it.")
        elif bfus_field not in fields and bfus_field not in STANDARD_FIELDS[OUTBOUND_OBJECTTYPE]:
            problems.append(f"{where}.to_bfus: '{bfus_field}' is not a mapped field.")
    if not spec.to_bfus:
        return problems
    if not spec.fingerprint:
        problems.append(f"{where}.fingerprint: Must be set when fields flow to BFUS (a text property).")
    elif spec.fingerprint not in props:
        problems.append(f"{where}.fingerprint: limetype '{spec.limetype}' has no property '{spec.fingerprint}'.")
    elif props[spec.fingerprint].get("type") != "text":
        problems.append(f"{where}.fingerprint: '{spec.fingerprint}' has type "
                        f"{props[spec.fingerprint].get('type')}, not text.")
    return problems


def _related_limetype(prop: Mapping[str, Any]) -> str | None:
    relation = prop.get("relation") or {}
    return relation.get("limetype") or (prop.get("_links") or {}).get("related_type", {}).get("name")


def _check_relations(mapping: MappingConfig, mappers: Mapping[str, ObjectMapper],
                     limetypes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    for objecttype, mapper in mappers.items():
        props = limetypes[mapper.limetype]["properties"]
        for prop, rule in mapper.relations.items():
            where = f"mapping.objects.{objecttype}.relations.{prop}"
            target = mappers.get(rule.objecttype)
            if target is None:
                spec = mapping.objects.get(rule.objecttype)
                if spec is not None and spec.sync:
                    continue  # its own mapping is broken: that problem is listed already
                problems.append(f"{where}: objecttype '{rule.objecttype}' is not synced, so it has no Lime object.")
                continue
            meta = props.get(prop)
            if meta is None:
                problems.append(f"{where}: limetype '{mapper.limetype}' has no property '{prop}'.")
            elif meta.get("type") != "belongsto":
                problems.append(f"{where}: '{prop}' has type {meta.get('type')}, not belongsto.")
            elif _related_limetype(meta) != target.limetype:
                problems.append(
                    f"{where}: '{mapper.limetype}.{prop}' points to '{_related_limetype(meta)}', "
                    f"but {rule.objecttype} objects are '{target.limetype}'."
                )
    return problems


def _option_keys(prop: Mapping[str, Any]) -> set[str]:
    return {o["key"] for o in prop.get("options") or [] if not o.get("inactive")}


def _check_options(where: str, spec: ObjectMapping, fields: Mapping[str, FieldRule], props: Mapping) -> list[str]:
    problems = []
    for bfus_field, rule in fields.items():
        prop = props.get(rule.property)
        if prop is None or prop.get("type") != "option" or rule.values is None:
            continue
        missing = sorted({str(v) for v in rule.values.values()} - _option_keys(prop))
        if missing:
            problems.append(f"{where}.fields.{bfus_field}.values: option key(s) {', '.join(missing)} "
                            f"not in {spec.limetype}.{rule.property}.")
    sd = spec.soft_delete
    if sd.kind in ("option", "yesno", "date") and sd.property in props:
        ptype = props[sd.property].get("type")
        if ptype != sd.kind:
            problems.append(f"{where}.soft_delete.property: '{sd.property}' has type {ptype}, not {sd.kind}.")
        elif sd.kind == "option" and sd.value not in _option_keys(props[sd.property]):
            problems.append(f"{where}.soft_delete.value: '{sd.value}' is not an option of "
                            f"{spec.limetype}.{sd.property}.")
    return problems


UNMAPPABLE_TYPES = frozenset({"belongsto", "hasmany", "file", "user"})


def convert(bfus_field: str, value: Any, prop: Mapping[str, Any], truncate: bool = False) -> Any:
    """``value`` as the Lime property ``prop`` takes it, or MappingError."""
    converted = _convert(bfus_field, value, prop, truncate)
    if prop.get("required") and converted in ("", None):
        raise MappingError(bfus_field, value, f"empty, but Lime requires {prop['name']}")
    return converted


def _convert(bfus_field: str, value: Any, prop: Mapping[str, Any], truncate: bool) -> Any:
    ptype = prop.get("type")
    if ptype in TEXT_TYPES:
        return _to_text(bfus_field, value, prop, truncate)
    if value is None:
        return False if ptype == "yesno" else None
    converter = _CONVERTERS.get(str(ptype))
    if converter is None:
        raise MappingError(bfus_field, value, f"Lime property type '{ptype}' cannot be mapped from a BFUS field")
    return converter(bfus_field, value, prop)


def _to_text(bfus_field: str, value: Any, prop: Mapping[str, Any], truncate: bool) -> str:
    text = "" if value is None else value if isinstance(value, str) else _scalar_text(bfus_field, value)
    length = prop.get("length")
    if length and len(text) > length:
        if truncate:
            return text[:length]
        raise MappingError(bfus_field, value, f"longer than {prop['name']} allows ({len(text)} > {length} characters)")
    return text


def _scalar_text(bfus_field: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    raise MappingError(bfus_field, value, "not a text value")


def _to_yesno(bfus_field: str, value: Any, _prop: Mapping[str, Any]) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise MappingError(bfus_field, value, "not a yes/no value")


def _to_integer(bfus_field: str, value: Any, _prop: Mapping[str, Any]) -> int:
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise MappingError(bfus_field, value, "not an integer") from None
    if not -(2**63) <= number < 2**63:
        raise MappingError(bfus_field, value, "an integer too large for Lime")
    return number


def _to_decimal(bfus_field: str, value: Any, _prop: Mapping[str, Any]) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise MappingError(bfus_field, value, "not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise MappingError(bfus_field, value, "not a finite number")
    return number


def _to_option(bfus_field: str, value: Any, prop: Mapping[str, Any]) -> str:
    key = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if key is None or key not in _option_keys(prop):
        raise MappingError(bfus_field, value,
                           f"not an option of {prop['name']} ({', '.join(sorted(_option_keys(prop)))})")
    return key


def _to_date(bfus_field: str, value: Any, _prop: Mapping[str, Any]) -> str:
    if isinstance(value, str) and _DATE.match(value):
        try:
            dt.date.fromisoformat(value)
            return value
        except ValueError:
            pass
    raise MappingError(bfus_field, value, "not a date (YYYY-MM-DD)")


def _to_time(bfus_field: str, value: Any, _prop: Mapping[str, Any]) -> str:
    try:
        parsed = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise MappingError(bfus_field, value, "not an ISO 8601 time")
    return parsed.isoformat()


# One converter per Lime property type (text-like types: _to_text).
_CONVERTERS: dict[str, Callable[[str, Any, Mapping[str, Any]], Any]] = {
    "yesno": _to_yesno, "integer": _to_integer, "decimal": _to_decimal, "percent": _to_decimal,
    "option": _to_option, "date": _to_date, "time": _to_time,
}
