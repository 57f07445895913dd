"""The migration's checkpoint: what happened to each object so far, so that a stopped
migration continues where it stopped and never writes an object twice."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from migration.errors import OptionsMismatch


class Checkpoint:
    """Append-only JSON lines: a header with the options, then one line per object
    outcome. The last line for an object wins.

    In memory: the outcomes of the earlier runs (by objecttype, key; the reason and
    error of the failed ones), what a continued run skips. This run's lines are only
    written."""

    def __init__(self, path: Path, identity: dict[str, Any], fresh: bool, dry_run: bool):
        self.path = path
        self.dry_run = dry_run
        self.outcomes: dict[str, dict[str, str]] = {}  # objecttype -> key -> outcome
        self.failures: dict[tuple[str, str], tuple[str, str]] = {}  # (objecttype, key) -> (reason, error)
        self._lock = threading.Lock()
        self._file: Any = None
        if dry_run:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh and path.exists():
            path.unlink()
        if path.exists():
            with path.open(encoding="utf-8") as lines:
                first = lines.readline()
                header = json.loads(first) if first else {}
                if header.get("options") != identity:
                    raise OptionsMismatch(
                        f"checkpoint {path} belongs to a migration run with {identity_flags(header.get('options'))}, "
                        f"not {identity_flags(identity)}: run with those, or add --fresh to start over"
                    )
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a crash: that object is simply done again
                    outcome = sys.intern(entry["o"])
                    self.outcomes.setdefault(sys.intern(entry["t"]), {})[entry["k"]] = outcome
                    if outcome == "failed":
                        self.failures[(entry["t"], entry["k"])] = (entry.get("r", ""), entry.get("e", ""))
                    else:
                        self.failures.pop((entry["t"], entry["k"]), None)
        self._file = path.open("a", encoding="utf-8")
        if path.stat().st_size == 0:
            self._file.write(json.dumps({"options": identity}) + "\n")
            self._file.flush()

    def outcome(self, objecttype: str, key: str) -> str | None:
        """What an earlier run did with the object (None: nothing yet)."""
        return self.outcomes.get(objecttype, {}).get(key)

    def failure(self, objecttype: str, key: str) -> tuple[str, str]:
        """(reason, error) of an object an earlier run failed."""
        return self.failures.get((objecttype, key), ("", ""))

    def record(self, item: Any, outcome: str, reason: str = "", error: str = "") -> None:
        entry = {"t": item.objecttype, "k": item.key, "o": outcome}
        if reason:
            entry.update(r=reason, e=error)
        with self._lock:
            if self._file is not None:
                self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def identity_flags(identity: dict[str, Any] | None) -> str:
    """A checkpoint's options as the flags that give them (``(none)`` for the defaults)."""
    if not identity:
        return "(unknown)"
    flags = []
    if identity.get("objecttypes"):
        flags.append(f"--objecttypes {','.join(identity['objecttypes'])}")
    if identity.get("only_active_contract"):
        flags.append("--only active-contract")
    if identity.get("changed_since"):
        flags.append(f"--changed-since {identity['changed_since']}")
    if identity.get("customer_category"):
        flags.append(f"--customer-category {identity['customer_category']}")
    if identity.get("limit") is not None:
        flags.append(f"--limit {identity['limit']}")
    return " ".join(flags) or "(no filters)"
