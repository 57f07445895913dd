"""A simulated Lime user: a salesperson who moves customers, changes their phone
numbers and e-mail addresses, and registers new companies marked for BFUS, through
Lime's REST API like any other Lime client (so Lime fires its webhooks).

``bfus-lime run`` and the soak use it to show and prove the Lime -> BFUS direction."""

from __future__ import annotations

import datetime as dt
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sandbox.bfus.swedish import SwedishData
from shared.lime import LimeClient, LimeError, option_key
from shared.mapping import ObjectMapper

EDITS = ("move", "phone", "email")
NEW_COMPANY_FIELDS = ("customertype", "orgno", "name", "street", "zipcode", "city", "country", "phone", "email")


@dataclass
class LimeUserReport:
    """What the user did: edits by kind, companies created (Lime ids), and writes
    Lime refused or could not take (the user gives up on those, as a person would
    after a few tries)."""

    edits: Counter[str] = field(default_factory=Counter)
    created: list[int] = field(default_factory=list)
    refused: int = 0

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.edits.items()))
        return (f"{sum(self.edits.values())} edits ({kinds or 'none'}), {len(self.created)} companies created"
                + (f", {self.refused} writes Lime did not take" if self.refused else ""))


class LimeUser:
    """Edits and creates companies in Lime. ``mapper`` is the customer mapping, so the
    user writes the Lime properties the configured mapping reads (and, like a
    person, never the fingerprint); ``mark`` is the yes/no property that sends a new
    company to BFUS (``outbound.create_when``)."""

    def __init__(self, lime: LimeClient, mapper: ObjectMapper, mark: str, seed: int = 5, tries: int = 5,
                 pause: float = 0.0):
        self.lime = lime
        self.mapper = mapper
        self.mark = mark
        self.rng = random.Random(seed)
        self.data = SwedishData(self.rng)
        self.tries = tries
        self.pause = pause  # seconds between tries
        self.report = LimeUserReport()

    def lime_values(self, bfus_values: dict[str, Any]) -> dict[str, Any]:
        """The Lime properties a person types for these BFUS fields."""
        values = self.mapper.map(bfus_values)
        values.pop(self.mapper.fingerprint_property or "", None)
        return values

    def editable(self, company: dict[str, Any]) -> bool:
        """A company linked to a BFUS customer that BFUS has not deleted (an edit of a
        deleted one is refused by BFUS: a failed record, not what a demo shows)."""
        rule = self.mapper.spec.soft_delete
        mark = company.get(rule.property) if rule.property else None
        if rule.kind == "date":
            deleted = bool(mark)
        elif rule.kind == "yesno":
            deleted = mark is True
        else:
            deleted = rule.kind == "option" and option_key(mark) == rule.value
        return bool(company.get(self.mapper.key_property)) and not deleted

    def edit(self, company: dict[str, Any]) -> str | None:
        """Change one thing about a company; the kind of edit, or None if Lime did not take it."""
        kind = self.rng.choice(EDITS)
        if kind == "move":
            change: dict[str, Any] = self.data.address()
            change.pop("country")
        elif kind == "phone":
            change = {"phone": self.data.phone(str(company.get("postalcity") or "Stockholm"))}
        else:
            change = {"email": f"kontakt.{self.rng.randrange(1000, 9999)}@example.se"}
        if not self._write(lambda: self.lime.update(self.mapper.limetype, company["_id"], self.lime_values(change))):
            return None
        self.report.edits[kind] += 1
        return kind

    def create(self) -> int | None:
        """Register a new company marked for BFUS; its Lime id, or None if Lime did not take it."""
        customer = self.data.customer("", dt.date.today())
        while customer["customertype"] != "company":
            customer = self.data.customer("", dt.date.today())
        values = self.lime_values({f: customer[f] for f in NEW_COMPANY_FIELDS})
        values[self.mark] = True
        created: list[dict[str, Any]] = []
        if not self._write(lambda: created.append(self.lime.create(self.mapper.limetype, values))):
            return None
        self.report.created.append(int(created[0]["_id"]))
        return self.report.created[-1]

    def _write(self, write: Any) -> bool:
        for _ in range(self.tries):
            try:
                write()
                return True
            except LimeError:
                time.sleep(self.pause)
        self.report.refused += 1
        return False
