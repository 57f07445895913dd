"""The processed- and failed-message log records in Lime (contract.md §2)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from shared.config import LimeConfig
from shared.envelope import Envelope
from shared.headers import integer
from shared.jsonbody import loads_or_none, storable
from shared.lime import LimeClient
from shared.logrecords import APPLIED, FAILED, FROM_BFUS, RESOLVED, TO_BFUS
from shared.mapping import scrub_personal
from worker.apply import Outcome
from worker.outbound import Sent


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


@dataclass(frozen=True)
class MessageFacts:
    """What is known of a message, even of one whose envelope is invalid."""

    messageid: int | None
    objecttype: str = ""
    operation: str = ""
    key: str = ""
    customerno: str = ""
    bfustimestamp: str | None = None
    direction: str = FROM_BFUS

    @classmethod
    def of(cls, env: Envelope) -> MessageFacts:
        return cls(env.id, env.objecttype, env.operation, env.key, env.customerno or "", env.timestamp.isoformat())

    @classmethod
    def guess(cls, message: Any) -> MessageFacts:
        """Best effort from a raw message that failed validation."""
        if not isinstance(message, dict):
            return cls(None)

        def text(name: str, limit: int) -> str:
            value = message.get(name)
            return storable(value[:limit]) if isinstance(value, str) else ""

        mid = integer(message.get("id"))
        return cls(
            mid if mid is not None and mid > 0 else None,
            text("objecttype", 32),
            text("operation", 16),
            text("key", 64),
            text("customerno", 64),
            None,
        )

    def values(self) -> dict[str, Any]:
        return {
            "messageid": self.messageid,
            "objecttype": self.objecttype,
            "operation": self.operation,
            "key": self.key,
            "customerno": self.customerno,
            "bfustimestamp": self.bfustimestamp,
        }


class LogWriter:
    """``directions``: the log limetypes have the direction property (outbound on)."""

    def __init__(self, lime: LimeClient, config: LimeConfig, exclude_personal: bool = False,
                 directions: bool = False):
        self.lime = lime
        self.processed_type = config.processed_limetype
        self.failed_type = config.failed_limetype
        self.exclude_personal = exclude_personal
        self.directions = directions

    def _facts(self, facts: MessageFacts) -> dict[str, Any]:
        values = facts.values()
        if self.directions:
            values["direction"] = facts.direction
        return values

    def payload(self, raw: str) -> str:
        """The raw message for the failed record; with personal data left out of Lime,
        its personal fields are blanked (the dead letter keeps the message whole).
        Characters Lime cannot store are replaced."""
        if not self.exclude_personal:
            return storable(raw)
        message = loads_or_none(raw)
        if message is None:
            return "[not JSON; left out because it may hold personal data]"
        if isinstance(message, dict) and isinstance(message.get("data"), dict):
            message["data"] = scrub_personal(str(message.get("objecttype")), message["data"])
        return storable(json.dumps(message, ensure_ascii=False))

    def processed(self, facts: MessageFacts, outcome: Outcome, detail: str | None = None) -> int:
        """``detail``: what was sent to BFUS, and its answer (a change to BFUS)."""
        values = {
            **self._facts(facts),
            "processedtime": _now(),
            "outcome": outcome.outcome,
            "limetype": outcome.limetype,
            "limeobjectid": outcome.object_id,
            "company": outcome.company_id,
        }
        if detail is not None:
            values["detail"] = storable(detail)
        return self.lime.create(self.processed_type, values)["_id"]

    def failed(
        self, facts: MessageFacts, reason: str, error: str, payload: str, attempts: int, company_id: int | None
    ) -> int:
        values = {
            **self._facts(facts),
            "failedtime": _now(),
            "reason": storable(reason[:64]),
            "error": storable(error),
            "payload": self.payload(payload),
            "attempts": attempts,
            "status": FAILED,
            "company": company_id,
        }
        return self.lime.create(self.failed_type, values)["_id"]

    def sent(self, facts: MessageFacts, sent: Sent, limetype: str, company_id: int) -> int:
        """A change that went to BFUS: what was sent and BFUS's answer."""
        return self.processed(facts, Outcome(APPLIED, limetype, company_id, company_id), sent.describe())

    def open_refusal(self, company_id: int, reason: str) -> dict[str, Any] | None:
        """The unresolved failed record of a change to BFUS of this company that BFUS
        refused for ``reason``, if any (one Lime call)."""
        found, _ = self.lime.list_page(self.failed_type, {
            "company": company_id, "direction": TO_BFUS, "status": FAILED, "reason": reason[:64], "_limit": 1})
        return found[0] if found else None

    def failed_again(self, record_id: int, reason: str, error: str, attempts: int) -> None:
        """A requeued message failed once more: its record, not a new one."""
        self.lime.update(self.failed_type, record_id, {
            "failedtime": _now(), "reason": storable(reason[:64]), "error": storable(error), "attempts": attempts,
            "status": FAILED,
        })

    def resolve(self, record_id: int, processed_id: int | None, outcome: str) -> None:
        """A requeued message got through: its failed record says so and links the
        processed record (a Lime event that needed nothing sent any more has none)."""
        linked = f" processed message {processed_id}," if processed_id is not None else ""
        values: dict[str, Any] = {"status": RESOLVED, "resolution": f"{outcome} after requeue,{linked} {_now()}"}
        if processed_id is not None:
            values["processedmessage"] = processed_id
        self.lime.update(self.failed_type, record_id, values)

    def existing(self, messageid: int, processed_only: bool = False) -> tuple[str, dict[str, Any]] | None:
        """The log record already written for ``messageid``, if any (used on
        redelivery, so that a message never gets two records)."""
        kinds = [("processed", self.processed_type)] + ([] if processed_only else [("failed", self.failed_type)])
        for kind, limetype in kinds:
            found = self.lime.find(limetype, "messageid", messageid, limit=1)
            if found:
                return kind, found[0]
        return None
