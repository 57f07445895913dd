"""SQLite storage for the Lime stand-in: one table per limetype, one column per stored
property, values checked the way Lime checks them."""

from __future__ import annotations

import datetime as dt
import functools
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sandbox.lime.schema import TEXT_TYPES, Limetype, Property
from sandbox.sqlite import ThreadLocalDB

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class LimeRequestError(Exception):
    """An error answered as ``{"error": code, "message": message}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str, code: str = "bad_request") -> LimeRequestError:
    return LimeRequestError(400, code, message)


def _integer_filter(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"Filter on '{name}' expects an integer, got {raw!r}.", "invalid_filter") from None
    if value not in INTEGERS:
        raise bad_request(f"Filter on '{name}' expects an integer from -2^63 to 2^63-1.", "invalid_filter")
    return value


def _text(value: Any) -> Any:
    return value if value is not None else ""


def _option_json(prop: Property, value: Any) -> dict[str, Any] | None:
    option = prop.option(value) if value is not None else None
    return {"id": option.id, "key": option.key, "text": option.text} if option else None


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="microseconds")


def _parse_time(value: str) -> str:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.isoformat(timespec="microseconds")


def link_problem(value: str) -> str | None:
    """Why ``value`` cannot be a link property's value: a link is an http(s) address
    (what the card opens when clicked) or empty."""
    if value == "":
        return None
    if any(ord(c) < 33 or ord(c) == 127 for c in value):
        return "an address has no spaces or control characters"
    try:
        parts = urlsplit(value)
    except ValueError:
        return "not an address"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "expects an http(s) address such as https://example.com/ (or \"\" for none)"
    return None


def _parse_date(value: str) -> str:
    if _DATE.match(value):
        dt.date.fromisoformat(value)
        return value
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).date().isoformat()


# What SQLite returns for a value of each property type (_column_ddl's column types).
_STORED_AS: dict[str, type] = {"integer": int, "belongsto": int, "file": int, "user": int, "yesno": int,
                               "decimal": float, "percent": float}
INTEGERS = range(-(2**63), 2**63)  # what an integer property (an SQLite INTEGER) holds


@dataclass
class Filter:
    column: str
    op: str  # "=", ">=", "<="
    value: Any


class LimeStore:
    """Thread-safe: one SQLite connection per thread, writes under one lock."""

    def __init__(self, path: str | Path, limetypes: dict[str, Limetype]):
        self.limetypes = limetypes
        self.db = ThreadLocalDB(path)
        self._indexes: set[tuple[str, str]] = set()  # (limetype, column) known indexed
        self._reader_cache: dict[str, tuple[tuple[str, Callable[[Any], Any] | None], ...]] = {}
        self._create_tables()

    # ------------------------------------------------------------------ plumbing

    def _db(self) -> sqlite3.Connection:
        return self.db.conn()

    @staticmethod
    def _table(limetype: str) -> str:
        return f'"lt_{limetype}"'

    @staticmethod
    def _col(name: str) -> str:
        return f'"{name}"'

    def _create_tables(self) -> None:
        with self.db.write() as db:
            for lt in self.limetypes.values():
                cols = ", ".join(self._column_ddl(p) for p in lt.stored_properties)
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._table(lt.name)} ("
                    "_id INTEGER PRIMARY KEY AUTOINCREMENT, _createdtime TEXT NOT NULL, _timestamp TEXT NOT NULL"
                    + (", " + cols if cols else "")
                    + ")"
                )
                have = {row["name"] for row in db.execute(f"PRAGMA table_info({self._table(lt.name)})")}
                for p in lt.stored_properties:
                    if p.name not in have:  # a property added to the schema since this database was made
                        db.execute(f"ALTER TABLE {self._table(lt.name)} ADD COLUMN {self._column_ddl(p)}")
            # Lime object ids are unique across limetypes and start at 1001.
            db.execute("CREATE TABLE IF NOT EXISTS _ids (id INTEGER PRIMARY KEY AUTOINCREMENT)")
            if db.execute("SELECT COUNT(*) FROM _ids").fetchone()[0] == 0:
                db.execute("INSERT INTO _ids (id) VALUES (1000)")

    def _column_ddl(self, prop: Property) -> str:
        sql_type = {int: "INTEGER", float: "REAL", str: "TEXT"}[_STORED_AS.get(prop.type, str)]
        return f"{self._col(prop.name)} {sql_type}"

    def limetype(self, name: str) -> Limetype:
        lt = self.limetypes.get(name)
        if lt is None:
            raise LimeRequestError(404, "not_found", f"Limetype '{name}' does not exist.")
        return lt

    # ------------------------------------------------------------------ values

    def _to_db(self, lt: Limetype, prop: Property, value: Any) -> Any:
        where = f"{lt.name}.{prop.name}"
        if prop.type in TEXT_TYPES:
            if value is None:
                raise bad_request(f"Property '{where}' does not accept null; send \"\" for no value.", "invalid_value")
            if not isinstance(value, str):
                raise bad_request(f"Property '{where}' expects a string, got {type(value).__name__}.", "invalid_value")
            if prop.length and len(value) > prop.length:
                raise bad_request(
                    f"Property '{where}' is at most {prop.length} characters, got {len(value)}.", "invalid_value"
                )
            if prop.required and value == "":
                raise bad_request(f"Property '{where}' is required and may not be empty.", "required")
            problem = link_problem(value) if prop.type == "link" else None
            if problem:
                raise bad_request(f"Property '{where}': {problem}, got {value!r}.", "invalid_value")
            return value
        if value is None:
            if prop.required:
                raise bad_request(f"Property '{where}' is required and may not be null.", "required")
            if prop.type == "yesno":
                raise bad_request(f"Property '{where}' expects true or false, got null.", "invalid_value")
            return None
        if prop.type == "yesno":
            if not isinstance(value, bool):
                raise bad_request(f"Property '{where}' expects true or false, got {value!r}.", "invalid_value")
            return int(value)
        if prop.type in ("integer", "file", "user"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad_request(f"Property '{where}' expects an integer, got {value!r}.", "invalid_value")
            if value not in INTEGERS:
                raise bad_request(f"Property '{where}' expects an integer from -2^63 to 2^63-1.", "invalid_value")
            return value
        if prop.type in ("decimal", "percent"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad_request(f"Property '{where}' expects a number, got {value!r}.", "invalid_value")
            return float(value)
        if prop.type == "option":
            key = value.get("key") if isinstance(value, dict) else value
            if not isinstance(key, str) or prop.option(key) is None:
                keys = ", ".join(o.key for o in prop.options)
                raise bad_request(f"Property '{where}' has no option {key!r} (options: {keys}).", "invalid_option")
            return key
        if prop.type == "time":
            try:
                return _parse_time(value) if isinstance(value, str) else _fail()
            except ValueError:
                raise bad_request(f"Property '{where}' expects an ISO 8601 time, got {value!r}.",
                                  "invalid_value") from None
        if prop.type == "date":
            try:
                return _parse_date(value) if isinstance(value, str) else _fail()
            except ValueError:
                raise bad_request(f"Property '{where}' expects a date (YYYY-MM-DD), got {value!r}.",
                                  "invalid_value") from None
        if prop.type == "belongsto":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad_request(f"Property '{where}' expects the related object's id, got {value!r}.",
                                  "invalid_value")
            if value not in INTEGERS or self._get_row(prop.related or "", value) is None:
                raise bad_request(f"Property '{where}': {prop.related} {value} does not exist.", "invalid_relation")
            return value
        raise bad_request(f"Property '{where}' cannot be written.", "read_only")

    @staticmethod
    def _reader(prop: Property) -> Callable[[Any], Any] | None:
        """What turns a value as SQLite holds it into the value Lime answers (None: as it is)."""
        if prop.type in TEXT_TYPES:
            return _text
        if prop.type == "yesno":
            return bool
        if prop.type == "option":
            return functools.partial(_option_json, prop)
        return None

    def _checked(self, lt: Limetype, values: dict[str, Any], creating: bool) -> dict[str, Any]:
        if not isinstance(values, dict):
            raise bad_request("The body must be a JSON object of property values.", "invalid_body")
        out: dict[str, Any] = {}
        for name, value in values.items():
            if name.startswith("_"):
                continue  # system properties such as _id are read-only and ignored
            prop = lt.properties.get(name)
            if prop is None:
                raise bad_request(f"Limetype '{lt.name}' has no property '{name}'.", "unknown_property")
            if not prop.stored:
                raise bad_request(f"Property '{lt.name}.{name}' is a hasmany relation and cannot be written.",
                                  "read_only")
            out[name] = self._to_db(lt, prop, value)
        if creating:
            missing = [p.name for p in lt.stored_properties if p.required and p.name not in out]
            if missing:
                raise bad_request(f"Required properties missing for '{lt.name}': {', '.join(missing)}.", "required")
            for prop in lt.stored_properties:
                if prop.name not in out:
                    out[prop.name] = self._default(prop)
        return out

    @staticmethod
    def _default(prop: Property) -> Any:
        if prop.default is not None:
            return int(prop.default) if prop.type == "yesno" else prop.default
        if prop.type in TEXT_TYPES:
            return ""
        if prop.type == "yesno":
            return 0
        if prop.type == "option":
            return prop.options[0].key
        return None

    # ------------------------------------------------------------------ objects

    def _get_row(self, limetype: str, object_id: int) -> sqlite3.Row | None:
        if limetype not in self.limetypes:
            return None
        return self._db().execute(f"SELECT * FROM {self._table(limetype)} WHERE _id = ?", (object_id,)).fetchone()

    def row_to_object(self, lt: Limetype, row: sqlite3.Row | Mapping[str, Any]) -> dict[str, Any]:
        """The object as Lime answers it, from its row (or the same columns in a dict)."""
        obj = {name: row[name] if read is None else read(row[name]) for name, read in self._readers(lt)}
        obj["_id"] = row["_id"]
        obj["_timestamp"] = row["_timestamp"]
        obj["_createdtime"] = row["_createdtime"]
        obj["_createduser"] = 1
        obj["_updateduser"] = 1
        descriptive = row[lt.descriptive] if lt.descriptive and lt.descriptive in row.keys() else None
        obj["_descriptive"] = str(descriptive) if descriptive not in (None, "") else f"{lt.name} {row['_id']}"
        return obj

    def _readers(self, lt: Limetype) -> tuple[tuple[str, Callable[[Any], Any] | None], ...]:
        """Each stored property's column, with what converts its value (None: nothing)."""
        readers = self._reader_cache.get(lt.name)
        if readers is None:
            readers = self._reader_cache[lt.name] = tuple((p.name, self._reader(p)) for p in lt.stored_properties)
        return readers

    def get(self, limetype: str, object_id: int) -> dict[str, Any]:
        lt = self.limetype(limetype)
        row = self._get_row(limetype, object_id)
        if row is None:
            raise LimeRequestError(404, "not_found", f"{limetype} {object_id} does not exist.")
        return self.row_to_object(lt, row)

    def create(self, limetype: str, values: dict[str, Any]) -> dict[str, Any]:
        lt = self.limetype(limetype)
        checked = self._checked(lt, values, creating=True)
        stamp = now_iso()
        with self.db.write() as db:
            cur = db.execute("INSERT INTO _ids DEFAULT VALUES")
            new_id = cur.lastrowid
            cols = ["_id", "_createdtime", "_timestamp", *checked]
            db.execute(
                f"INSERT INTO {self._table(limetype)} ({', '.join(map(self._col, cols))}) "
                f"VALUES ({', '.join('?' for _ in cols)})",
                (new_id, stamp, stamp, *checked.values()),
            )
        assert new_id is not None
        if not self._as_stored(lt, checked):
            return self.get(limetype, new_id)
        return self.row_to_object(lt, {**checked, "_id": new_id, "_createdtime": stamp, "_timestamp": stamp})

    def update(self, limetype: str, object_id: int, values: dict[str, Any]) -> dict[str, Any]:
        """Update an object with ``values`` (a partial update): the object after."""
        return self._write(limetype, object_id, values)[1]

    def change(self, limetype: str, object_id: int, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``update``, with the object before: (before, after)."""
        row, after = self._write(limetype, object_id, values)
        return self.row_to_object(self.limetype(limetype), row), after

    def _write(self, limetype: str, object_id: int, values: dict[str, Any]) -> tuple[sqlite3.Row, dict[str, Any]]:
        """The object's row before, and the object after."""
        lt = self.limetype(limetype)
        with self.db.write() as db:  # the read and the write in one transaction: the row is what was replaced
            row = self._get_row(limetype, object_id)
            if row is None:
                raise LimeRequestError(404, "not_found", f"{limetype} {object_id} does not exist.")
            checked = self._checked(lt, values, creating=False)
            checked["_timestamp"] = now_iso()
            sets = ", ".join(f"{self._col(k)} = ?" for k in checked)
            db.execute(f"UPDATE {self._table(limetype)} SET {sets} WHERE _id = ?", (*checked.values(), object_id))
        if not self._as_stored(lt, checked):
            return row, self.get(limetype, object_id)
        return row, self.row_to_object(lt, {**dict(zip(row.keys(), row, strict=True)), **checked})

    @staticmethod
    def _as_stored(lt: Limetype, checked: dict[str, Any]) -> bool:
        """Whether SQLite keeps each of ``checked``'s values as it is (then the object
        is built from them, not read back): an int, float or text in a column of that
        kind, or null."""
        for name, value in checked.items():
            prop = lt.properties.get(name)
            kind = _STORED_AS.get(prop.type, str) if prop is not None else str
            if value is not None and type(value) is not kind:
                return False
        return True

    def delete(self, limetype: str, object_id: int) -> None:
        self.limetype(limetype)
        with self.db.write() as db:
            cur = db.execute(f"DELETE FROM {self._table(limetype)} WHERE _id = ?", (object_id,))
        if cur.rowcount == 0:
            raise LimeRequestError(404, "not_found", f"{limetype} {object_id} does not exist.")

    # ------------------------------------------------------------------ queries

    def filter_value(self, lt: Limetype, name: str, raw: str) -> tuple[str, Any]:
        """A query-string value converted to what the column holds."""
        if name == "_id":
            return "_id", _integer_filter(name, raw)
        if name in ("_timestamp", "_createdtime"):
            try:  # stored in this machine's offset (now_iso), so compared in it
                return name, dt.datetime.fromisoformat(_parse_time(raw)).astimezone().isoformat(
                    timespec="microseconds")
            except ValueError:
                raise bad_request(f"Filter on {name} expects an ISO 8601 time, got {raw!r}.",
                                  "invalid_filter") from None
        prop = lt.properties.get(name)
        if prop is None or not prop.stored:
            raise bad_request(f"Limetype '{lt.name}' has no property '{name}' to filter on.", "unknown_property")
        if prop.type == "yesno":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise bad_request(f"Filter on '{name}' expects true or false, got {raw!r}.", "invalid_filter")
            return name, int(raw.lower() in ("true", "1"))
        if prop.type in ("integer", "belongsto", "file", "user"):
            return name, _integer_filter(name, raw)
        if prop.type in ("decimal", "percent"):
            try:
                return name, float(raw)
            except ValueError:
                raise bad_request(f"Filter on '{name}' expects a number, got {raw!r}.", "invalid_filter") from None
        if prop.type == "option" and prop.option(raw) is None:
            raise bad_request(f"Filter on '{name}': no option {raw!r}.", "invalid_option")
        try:
            if prop.type == "time":
                return name, _parse_time(raw)  # compared as stored: ISO text in one offset
            if prop.type == "date":
                return name, _parse_date(raw)
        except ValueError:
            raise bad_request(f"Filter on '{name}' expects an ISO 8601 {prop.type}, got {raw!r}.",
                              "invalid_filter") from None
        return name, raw

    def sort_column(self, lt: Limetype, spec: str) -> str:
        descending = spec.startswith("-")
        name = spec.lstrip("-")
        if name not in ("_id", "_timestamp", "_createdtime"):
            prop = lt.properties.get(name)
            if prop is None or not prop.stored:
                raise bad_request(f"Cannot sort '{lt.name}' on unknown property '{name}'.", "unknown_property")
        return f"{self._col(name)} {'DESC' if descending else 'ASC'}"

    def query(
        self, limetype: str, filters: Iterable[Filter], order: list[str], limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], bool]:
        """Objects matching every filter; and whether more follow this page."""
        lt = self.limetype(limetype)
        where, params = self._where(limetype, filters)
        sql = f"SELECT * FROM {self._table(limetype)}{where}"
        sql += " ORDER BY " + ", ".join([*order, '"_id" ASC'])
        sql += " LIMIT ? OFFSET ?"
        rows = self._db().execute(sql, (*params, limit + 1, offset)).fetchall()
        return [self.row_to_object(lt, r) for r in rows[:limit]], len(rows) > limit

    def count(self, limetype: str, filters: Iterable[Filter] = ()) -> int:
        self.limetype(limetype)
        where, params = self._where(limetype, filters)
        return self._db().execute(f"SELECT COUNT(*) FROM {self._table(limetype)}{where}", params).fetchone()[0]

    def _where(self, limetype: str, filters: Iterable[Filter]) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for f in filters:
            self._index(limetype, f.column)
            if f.value is None and f.op == "=":
                clauses.append(f"{self._col(f.column)} IS NULL")
            else:
                clauses.append(f"{self._col(f.column)} {f.op} ?")
                params.append(f.value)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def _index(self, limetype: str, column: str) -> None:
        """An index on ``column``, made the first time a query filters on it: every
        index costs every write of its table (a page more in the write-ahead log), and
        most properties are never filtered on."""
        if column == "_id" or (limetype, column) in self._indexes:
            return
        with self.db.write() as db:
            db.execute(f'CREATE INDEX IF NOT EXISTS "ix_{limetype}_{column}" '
                       f"ON {self._table(limetype)} ({self._col(column)})")
        self._indexes.add((limetype, column))

    def indexed(self, limetype: str) -> set[str]:
        """The columns of ``limetype``'s table that have an index."""
        rows = self._db().execute(f"PRAGMA index_list({self._table(limetype)})").fetchall()
        return {info["name"] for row in rows
                for info in self._db().execute(f'PRAGMA index_info("{row["name"]}")').fetchall()}

    def all_objects(self, limetype: str) -> list[dict[str, Any]]:
        lt = self.limetype(limetype)
        rows = self._db().execute(f"SELECT * FROM {self._table(limetype)} ORDER BY _id").fetchall()
        return [self.row_to_object(lt, r) for r in rows]


def _fail() -> Any:
    raise ValueError("wrong type")
