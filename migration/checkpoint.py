"""The migration's checkpoint: what happened to each object so far, so that a stopped
migration continues where it stopped and never writes an object twice."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from migration.errors import MigrationError


class Checkpoint:
    """Append-only JSON lines: a header with the options, then one line per object
    outcome. The last line for an object wins."""

    def __init__(self, path: Path, identity: dict[str, Any], fresh: bool, dry_run: bool):
        self.path = path
        self.dry_run = dry_run
        self.outcomes: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._file: Any = None
        if dry_run:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and path.exists():
            path.unlink()
        if path.exists():
            lines = path.read_text().splitlines()
            header = json.loads(lines[0]) if lines else {}
            if header.get("options") != identity:
                raise MigrationError(
                    f"checkpoint {path} belongs to a migration with other options ({header.get('options')}); "
                    "run with the same options, or with --fresh to start over"
                )
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut short by a crash: that object is simply done again
                self.outcomes[(entry["t"], entry["k"])] = entry
        self._file = path.open("a", encoding="utf-8")
        if not self.outcomes and path.stat().st_size == 0:
            self._file.write(json.dumps({"options": identity}) + "\n")
            self._file.flush()

    def record(self, item: Any, outcome: str, reason: str = "", error: str = "") -> None:
        entry = {"t": item.objecttype, "k": item.key, "o": outcome}
        if reason:
            entry.update(r=reason, e=error)
        with self._lock:
            self.outcomes[(item.objecttype, item.key)] = entry
            if self._file is not None:
                self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
