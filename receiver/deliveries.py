"""The v2 delivery ids the receiver has queued, in one SQLite file shared by its
processes, so that a replayed delivery is refused whichever process it reaches. An
id is noted only once its event is confirmed by RabbitMQ (Lime then may send it again
if our answer is lost, and that copy is answered as a duplicate, queueing nothing);
ids older than twice the freshness window are forgotten, as a replay that old fails
the timestamp check anyway."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
import time
from pathlib import Path


def default_path() -> Path:
    return Path(tempfile.gettempdir()) / "bfus-lime-deliveries.sqlite"


class Deliveries:
    def __init__(self, path: str | Path, keep: float):
        self.path = str(path) if path else str(default_path())
        self.keep = keep
        self._local = threading.local()
        self._noted = 0
        with self._db() as db:
            db.execute("create table if not exists delivery (id text primary key, seen real not null)")
            db.execute("create index if not exists delivery_seen on delivery (seen)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("pragma journal_mode=wal")
            db.execute("pragma synchronous=normal")
            self._local.db = db
        return db

    def seen(self, delivery_id: str) -> bool:
        row = self._db().execute("select 1 from delivery where id = ? and seen > ?",
                                 (delivery_id, time.time() - self.keep)).fetchone()
        return row is not None

    def note(self, delivery_id: str) -> bool:
        """Remember ``delivery_id``; False when another request noted it first."""
        db = self._db()
        now = time.time()
        added = db.execute("insert or ignore into delivery (id, seen) values (?, ?)", (delivery_id, now)).rowcount
        self._noted += 1
        if self._noted % 500 == 0:
            db.execute("delete from delivery where seen < ?", (now - self.keep,))
        return added == 1
