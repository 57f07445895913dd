"""The BFUS stand-in's register and change queue, in SQLite. Every change to an
object and the change message describing it are written in one transaction, as
BFUS does."""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sandbox.sqlite import ThreadLocalDB

try:
    BFUS_TZ: dt.tzinfo = ZoneInfo("Europe/Stockholm")
except Exception:  # no tz database: UTC is still a valid offset
    BFUS_TZ = dt.UTC

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    objecttype TEXT NOT NULL, key TEXT NOT NULL, customerno TEXT, data TEXT NOT NULL,
    status TEXT, deleted INTEGER NOT NULL DEFAULT 0, changed TEXT NOT NULL, queueid INTEGER,
    PRIMARY KEY (objecttype, key));
CREATE INDEX IF NOT EXISTS ix_objects_customer ON objects (customerno);
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL, objecttype TEXT NOT NULL,
    operation TEXT NOT NULL, key TEXT NOT NULL, customerno TEXT, data TEXT,
    delivered_at TEXT, attempts INTEGER NOT NULL DEFAULT 0, last_status TEXT);
CREATE INDEX IF NOT EXISTS ix_queue_pending ON queue (delivered_at, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def now() -> dt.datetime:
    return dt.datetime.now(BFUS_TZ)


@dataclass(frozen=True)
class QueuedMessage:
    id: int
    timestamp: str
    objecttype: str
    operation: str
    key: str
    customerno: str | None
    data: dict[str, Any] | None
    attempts: int

    def envelope(self) -> dict[str, Any]:
        """The message as BFUS posts it (contract.md §1)."""
        message: dict[str, Any] = {
            "id": self.id,
            "timestamp": self.timestamp,
            "objecttype": self.objecttype,
            "operation": self.operation,
            "key": self.key,
        }
        if self.customerno is not None:
            message["customerno"] = self.customerno
        message["data"] = self.data
        return message


class BfusStore:
    def __init__(self, path: str | Path):
        self.db = ThreadLocalDB(path)
        self.queue_changed = threading.Condition()
        with self.db.write() as db:
            db.executescript(SCHEMA)

    # ------------------------------------------------------------------ register

    def next_number(self, name: str, start: int) -> int:
        with self.db.write() as db:
            row = db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            value = (row["value"] + 1) if row else start
            db.execute("INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)", (name, value))
            return value

    def get(self, objecttype: str, key: str) -> dict[str, Any] | None:
        row = self.db.conn().execute(
            "SELECT * FROM objects WHERE objecttype = ? AND key = ?", (objecttype, key)
        ).fetchone()
        return self._row(row) if row else None

    @staticmethod
    def _row(row: Any) -> dict[str, Any]:
        return {
            "objecttype": row["objecttype"],
            "key": row["key"],
            "customerno": row["customerno"],
            "data": json.loads(row["data"]),
            "deleted": bool(row["deleted"]),
            "changed": row["changed"],
            "queueid": row["queueid"],
        }

    def change(
        self, objecttype: str, operation: str, key: str, customerno: str | None, data: dict[str, Any],
        notify: bool = True
    ) -> int:
        """Write the object's new state and queue its change message; returns the queue id."""
        stamp = now()
        text = json.dumps(data, ensure_ascii=False)
        with self.db.write() as db:
            cur = db.execute(
                "INSERT INTO queue (timestamp, objecttype, operation, key, customerno, data) VALUES (?, ?, ?, ?, ?, ?)",
                (stamp.isoformat(timespec="milliseconds"), objecttype, operation, key, customerno, text),
            )
            queue_id = cur.lastrowid
            assert queue_id is not None
            db.execute(
                "INSERT INTO objects (objecttype, key, customerno, data, status, deleted, changed, queueid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (objecttype, key) DO UPDATE SET "
                "customerno = excluded.customerno, data = excluded.data, status = excluded.status, "
                "deleted = excluded.deleted, changed = excluded.changed, queueid = excluded.queueid",
                (objecttype, key, customerno, text, data.get("status"), int(operation == "deleted"),
                 stamp.date().isoformat(), queue_id),
            )
        if notify:
            self.notify()
        return queue_id

    def put_silently(self, objecttype: str, key: str, customerno: str | None, data: dict[str, Any]) -> None:
        """Seed an object without a change message (BFUS's state before we listen)."""
        with self.db.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO objects (objecttype, key, customerno, data, status, deleted, changed) "
                "VALUES (?, ?, ?, ?, ?, 0, ?)",
                (objecttype, key, customerno, json.dumps(data, ensure_ascii=False), data.get("status"),
                 now().date().isoformat()),
            )

    def page(
        self, objecttype: str, offset: int, limit: int, status: str | None = None, changedsince: str | None = None,
        category: str | None = None, customerno: str | None = None,
    ) -> tuple[list[dict[str, Any]], int, int]:
        """One page of live (not deleted) objects, the total, and the queue id the
        page is at least as new as (read before the page, so never newer than it)."""
        where = ["objecttype = ?", "deleted = 0"]
        params: list[Any] = [objecttype]
        for column, value in (("status", status), ("customerno", customerno)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if changedsince:
            where.append("changed >= ?")
            params.append(changedsince)
        if category:
            where.append("json_extract(data, '$.category') = ?")
            params.append(category)
        clause = " AND ".join(where)
        db = self.db.conn()
        with self.db.write_lock:  # no change between the queue id and the page
            queueid = db.execute("SELECT COALESCE(MAX(id), 0) FROM queue").fetchone()[0]
            total = db.execute(f"SELECT COUNT(*) FROM objects WHERE {clause}", params).fetchone()[0]
            rows = db.execute(
                f"SELECT data FROM objects WHERE {clause} ORDER BY key LIMIT ? OFFSET ?", (*params, limit, offset)
            ).fetchall()
        return [json.loads(r["data"]) for r in rows], total, queueid

    def children(self, customerno: str) -> list[dict[str, Any]]:
        """The customer's other objects (facilities, contracts, meters) not deleted."""
        rows = self.db.conn().execute(
            "SELECT * FROM objects WHERE customerno = ? AND objecttype != 'customer' AND deleted = 0 "
            "ORDER BY objecttype, key",
            (customerno,),
        )
        return [self._row(r) for r in rows]

    def keys(self, objecttype: str, include_deleted: bool = False) -> list[str]:
        sql = "SELECT key FROM objects WHERE objecttype = ?" + ("" if include_deleted else " AND deleted = 0")
        return [r["key"] for r in self.db.conn().execute(sql + " ORDER BY key", (objecttype,))]

    def live_keys_with(self, objecttype: str, field: str, value: Any) -> list[str]:
        """Keys of live objects whose data has ``field`` equal to ``value``."""
        rows = self.db.conn().execute(
            "SELECT key FROM objects WHERE objecttype = ? AND deleted = 0 AND json_extract(data, ?) = ?",
            (objecttype, f"$.{field}", value))
        return [r["key"] for r in rows]

    def snapshots(self, objecttype: str) -> list[dict[str, Any]]:
        """Every object with its last state, deleted ones included (for checkers)."""
        rows = self.db.conn().execute("SELECT * FROM objects WHERE objecttype = ? ORDER BY key", (objecttype,))
        return [self._row(r) for r in rows]

    # ------------------------------------------------------------------ queue

    def notify(self) -> None:
        with self.queue_changed:
            self.queue_changed.notify_all()

    def head(self) -> QueuedMessage | None:
        row = self.db.conn().execute(
            "SELECT * FROM queue WHERE delivered_at IS NULL ORDER BY id LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        return QueuedMessage(
            id=row["id"],
            timestamp=row["timestamp"],
            objecttype=row["objecttype"],
            operation=row["operation"],
            key=row["key"],
            customerno=row["customerno"],
            data=json.loads(row["data"]) if row["data"] is not None else None,
            attempts=row["attempts"],
        )

    def record_attempt(self, queue_id: int, status: str, delivered: bool) -> None:
        with self.db.write() as db:
            db.execute(
                "UPDATE queue SET attempts = attempts + 1, last_status = ?, delivered_at = ? WHERE id = ?",
                (status, now().isoformat() if delivered else None, queue_id),
            )

    def queue_status(self) -> dict[str, Any]:
        db = self.db.conn()
        pending = db.execute("SELECT COUNT(*) FROM queue WHERE delivered_at IS NULL").fetchone()[0]
        delivered = db.execute("SELECT COUNT(*) FROM queue WHERE delivered_at IS NOT NULL").fetchone()[0]
        head = db.execute(
            "SELECT id, attempts, last_status FROM queue WHERE delivered_at IS NULL ORDER BY id LIMIT 1"
        ).fetchone()
        last_id = db.execute("SELECT MAX(id) FROM queue").fetchone()[0]
        return {
            "pending": pending,
            "delivered": delivered,
            "last_id": last_id or 0,
            "head": dict(head) if head else None,
        }

    def delivered_ids(self) -> list[int]:
        rows = self.db.conn().execute("SELECT id FROM queue WHERE delivered_at IS NOT NULL ORDER BY id")
        return [r["id"] for r in rows]

    def messages(self) -> list[dict[str, Any]]:
        rows = self.db.conn().execute("SELECT * FROM queue ORDER BY id").fetchall()
        return [dict(r) for r in rows]
