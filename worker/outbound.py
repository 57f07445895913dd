"""Lime -> BFUS for one Lime company (docs/lime-to-bfus.md). A webhook only says that
a company changed: its values may be old, repeated or out of order. So nothing is
sent from it blindly. The company's current state is read from Lime and compared with
the fingerprint of what BFUS last had (shared/fingerprint.py); only the flowing
fields a person changed in Lime since then are compared with BFUS's own current
state, and only those that really differ are sent. The integration's own writes
match their fingerprint, so they are never sent back (no echo), and a webhook whose
values already show that costs no call at all.

Raises :class:`worker.apply.PermanentFailure` for what BFUS refuses; lets
LimeUnavailable and BfusUnavailable through for what will succeed later."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from shared.bfus import BfusClient, BfusRejected, BfusUnavailable
from shared.fingerprint import advanced, changed, fingerprint, normal, parse
from shared.jumplinks import JumpLinks
from shared.lime import LimeClient, LimeRejected
from shared.logs import get_logger
from shared.mapping import PRIVATE_NAME_FIELDS, MappingError, ObjectMapper, is_private
from worker.apply import PermanentFailure

# BFUS fields sent when a customer is created, beside the flowing ones: who it is.
IDENTITY_FIELDS = ("customertype", "orgno", "socialsecurityno")
REASONS = {409: "bfus_duplicate", 404: "bfus_not_found"}
log = get_logger(component="outbound")
CREATE, UPDATE, NOTHING = "create", "update", ""
# Seconds a creation BFUS calls a duplicate waits for BFUS's "created" message to link
# the company (an earlier try created it), before it fails as bfus_duplicate.
DUPLICATE_WAIT = 120.0


@dataclass(frozen=True)
class Sent:
    """What went to BFUS for one company."""

    operation: str  # created | updated
    customerno: str
    fields: dict[str, Any]
    status: int  # BFUS's answer
    company_id: int = 0
    # What Lime's company must now hold (Outbound.remember): the customer number BFUS
    # gave a new customer, and the fingerprint with the sent fields as BFUS has them.
    lime_values: dict[str, Any] = field(default_factory=dict, repr=False)
    seen: str = ""  # the company's fingerprint when it was read, before the BFUS write

    def describe(self) -> str:
        names = ", ".join(sorted(self.fields))
        return f"{self.operation} in BFUS (answered {self.status}): {names}"


@dataclass(frozen=True)
class Plan:
    """What would go to BFUS for one company, found without writing anything.
    ``operation``: create, update, or "" when nothing needs sending (``why`` says
    why; ``found`` is False when Lime has no such company). ``fields``: the BFUS
    fields to send and their values; ``in_bfus``: an update's fields as BFUS has
    them now. Values are personal data: show them to an operator, never log them."""

    company_id: int
    operation: str
    customerno: str = ""
    fields: dict[str, Any] = field(default_factory=dict, repr=False)
    in_bfus: dict[str, Any] = field(default_factory=dict, repr=False)
    why: str = ""
    found: bool = True
    fingerprint: str | None = field(default=None, repr=False)  # the company's, once BFUS has ``fields``
    seen: str = field(default="", repr=False)  # the company's fingerprint as read


class Outbound:
    def __init__(self, lime: LimeClient, bfus: BfusClient, mapper: ObjectMapper, create_when: str = "",
                 links: JumpLinks | None = None):
        """``links``: the jump links a company gets with its new customer number."""
        self.lime = lime
        self.links = links
        self.bfus = bfus
        self.mapper = mapper
        self.create_when = create_when
        self.flowing = mapper.flowing_properties
        identity = tuple(mapper.fields[f].property for f in IDENTITY_FIELDS if f in mapper.fields)
        self.create_properties = tuple(dict.fromkeys(identity + self.flowing))
        # With personal data left out, Lime shows a private customer's name as the
        # anonymous one ("Customer 100234"): that name is not the customer's and never flows.
        name = PRIVATE_NAME_FIELDS.get(mapper.objecttype, "") if mapper.exclude_personal else ""
        self.anonymous_name = mapper.fields[name].property if name in mapper.fields else None
        self.type_property = mapper.fields["customertype"].property if "customertype" in mapper.fields else None
        self.restored = 0  # fingerprints written again after BFUS's "created" message (_after_creation)
        self.duplicate_wait = DUPLICATE_WAIT
        # company id -> when BFUS first and last answered its creation 409
        self._duplicates: dict[int, tuple[float, float]] = {}

    @property
    def limetype(self) -> str:
        return self.mapper.limetype

    def _linked(self, values: dict[str, Any]) -> str:
        return str(normal(values.get(self.mapper.key_property)))

    def _wants_create(self, values: dict[str, Any]) -> bool:
        return bool(self.create_when) and normal(values.get(self.create_when)) is True

    def _changed(self, values: dict[str, Any]) -> list[str]:
        found = changed(values, values.get(self.mapper.fingerprint_property or ""), self.flowing)
        if self.anonymous_name in found and self._private(values):
            found.remove(self.anonymous_name)
        return found

    def _private(self, values: dict[str, Any]) -> bool:
        if self.type_property is None:
            return True  # no customer type to tell: treat it as a person's
        try:
            customertype = self.mapper.bfus_values(values, (self.type_property,))
        except MappingError:
            return True
        return is_private(self.mapper.objecttype, customertype)

    def nothing_to_send(self, values: dict[str, Any]) -> bool:
        """From a webhook's values alone: no flowing field differs from what BFUS last
        had, and no creation is wanted. True for every echo of our own writes."""
        if not values:
            return False
        if not self._linked(values):
            return not self._wants_create(values)
        return not self._changed(values)

    def send(self, company_id: int) -> Sent | None:
        """Bring BFUS up to date with the company as Lime has it now, and Lime with
        what BFUS then has; None when nothing needed sending."""
        sent = self.carry_out(self.plan(company_id))
        if sent is not None:
            self.remember(sent)
        return sent

    def remember(self, sent: Sent) -> None:
        """Write to the company what BFUS now has: a new customer's number, and the
        fingerprint with the fields just sent (one Lime call). Until BFUS's own change
        message about them arrives, the next event of the company then sees those
        fields as BFUS's, not as a Lime edit to send again over a newer BFUS change.
        A step of its own, so that Lime being away here never sends BFUS anything twice.

        The company is read first (one more Lime call): if BFUS's own change message
        reached it while BFUS was being written, that write's fingerprint is BFUS's
        word on the values it put in Lime and stands (overwriting it would make them
        look like Lime edits, to be sent back over the person's edit); the sent fields
        then get their fingerprint when BFUS's message about them arrives. A company
        linked meanwhile (BFUS's "created" message overtook this) keeps its number.
        For an update no BFUS message about the customer is applied between that read
        and this write: a linked company's events share its customer's partition, so
        the same lane applies them one after the other (shared/limeevents.py,
        partition_key). A creation's event is the company's own (it had no number):
        BFUS's "created" message may land in between, which Lime's answer shows
        (:meth:`_after_creation`)."""
        values = dict(sent.lime_values)
        prop = self.mapper.fingerprint_property
        if not values:
            return
        try:
            now = self.lime.get(self.limetype, sent.company_id)
            if prop and str(now.get(prop) or "") != sent.seen:
                values.pop(prop, None)
            if self._linked(now) == sent.customerno:
                values.pop(self.mapper.key_property, None)  # and BFUS's message wrote the jump link with it
            elif self.links is not None and self.mapper.key_property in values:
                values.update(self.links.values(self.limetype, sent.company_id))
            if values:
                answer = self.lime.update(self.limetype, sent.company_id, values)
                if prop in values and sent.operation == "created":
                    self._after_creation(sent.company_id, now, answer)
        except LimeRejected as err:
            if err.status != 404:  # removed in Lime since: nothing to remember
                raise
        log.info("sent_remembered", fingerprint=prop in values, number=self.mapper.key_property in values)

    def _after_creation(self, company_id: int, read: dict[str, Any], answer: dict[str, Any]) -> None:
        """When Lime's answer to the number's write-back shows a watermark the read
        before it did not, BFUS's "created" message was applied in between, and its
        fingerprint (of the values it wrote, which Lime now holds) was overwritten:
        left so, a value BFUS set on its own (a default) would look like a Lime edit.
        Its fingerprint is written again, over the same properties (one more call, only
        in that instant; an edit a person saved in the same instant counts as BFUS's)."""
        watermark, prop = self.mapper.spec.watermark, self.mapper.fingerprint_property
        if not watermark or not prop:
            return
        if watermark not in answer:  # an answer without the object: read it
            answer = self.lime.get(self.limetype, company_id)
        written = parse(answer.get(prop))
        wanted = fingerprint(answer, tuple(written) or self.flowing)
        if answer.get(watermark) == read.get(watermark) or written == parse(wanted):
            return
        log.info("created_fingerprint_restored", message_id=answer.get(watermark))
        self.restored += 1
        self.lime.update(self.limetype, company_id, {prop: wanted})

    def plan(self, company_id: int) -> Plan:
        """What :meth:`send` would send for the company as Lime has it now, found with
        the same reads (the company; BFUS's customer when it is linked) and no write."""
        try:
            company = self.lime.get(self.limetype, company_id)
        except LimeRejected as err:
            if err.status == 404:  # removed in Lime since: nothing to send
                return Plan(company_id, NOTHING, why=f"Lime has no {self.limetype} {company_id}", found=False)
            raise
        customerno = self._linked(company)
        if not customerno:
            if not self._wants_create(company):
                rule = (f"its {self.create_when} is not set" if self.create_when
                        else "creating customers from Lime is off (outbound.create_when)")
                return Plan(company_id, NOTHING, why=f"it has no customer number and {rule}")
            fields = {k: v for k, v in self._bfus_values(company, self.create_properties).items() if v is not None}
            return Plan(company_id, CREATE, "", fields, fingerprint=self._fingerprint(company, self.flowing),
                        seen=self._seen(company))
        properties = self._changed(company)
        if not properties:
            return Plan(company_id, NOTHING, customerno,
                        why="no field that flows to BFUS was changed in Lime since BFUS last had it")
        current = self.bfus.find_customer(customerno)
        if current is None:
            raise PermanentFailure("bfus_not_found", f"BFUS has no customer {customerno}, which the {self.limetype} "
                                   f"{company_id} in Lime is linked to.", "BFUS has no such customer",
                                   customerno=customerno)
        in_bfus = self._mapped(current, customerno)
        differing = tuple(p for p in properties if normal(company.get(p)) != in_bfus.get(p))
        if not differing:
            return Plan(company_id, NOTHING, customerno, why="BFUS already has the values changed in Lime")
        fields = self._bfus_values(company, differing, customerno)
        return Plan(company_id, UPDATE, customerno, fields, {f: current.get(f) for f in fields},
                    fingerprint=self._fingerprint(company, differing), seen=self._seen(company))

    def _seen(self, company: dict[str, Any]) -> str:
        return str(company.get(self.mapper.fingerprint_property or "") or "")

    def _fingerprint(self, company: dict[str, Any], sent: tuple[str, ...]) -> str | None:
        prop = self.mapper.fingerprint_property
        return advanced(company.get(prop), company, sent) if prop else None

    def carry_out(self, plan: Plan) -> Sent | None:
        """Send what :meth:`plan` found; None when there was nothing to send (or an
        earlier try of the same creation got through)."""
        if plan.operation == CREATE:
            return self._create(plan)
        if plan.operation != UPDATE:
            return None
        try:
            answer = self.bfus.update_customer(plan.customerno, plan.fields)
        except BfusRejected as err:
            raise self._refused(err, "update", plan.customerno) from None
        return Sent("updated", str(answer.get("customerno") or plan.customerno), plan.fields, 200, plan.company_id,
                    self._known(plan), plan.seen)

    def _create(self, plan: Plan) -> Sent | None:
        try:
            created = self.bfus.create_customer(plan.fields)
        except BfusRejected as err:
            if err.status == 409:
                self._duplicate(plan.company_id, err)  # returns once the company is linked
                return None  # an earlier try got through and the company is linked since
            raise self._refused(err, "create") from None
        self._duplicates.pop(plan.company_id, None)
        customerno = str(created.get("customerno") or "")
        if not customerno:
            raise PermanentFailure("bfus_error", "BFUS created the customer but answered no customer number.",
                                   "no customerno in BFUS's answer")
        return Sent("created", customerno, plan.fields, 201, plan.company_id,
                    {self.mapper.key_property: customerno, **self._known(plan)}, plan.seen)

    def _duplicate(self, company_id: int, err: BfusRejected) -> None:
        """BFUS answered a creation 409: it has a customer with this identity. Most
        often it is this company's, created by an earlier try whose worker stopped
        before it wrote the number back: BFUS's own "created" message then links the
        company (by its identity) soon. Returns once it is linked; until
        ``duplicate_wait`` seconds from the first 409 raises BfusUnavailable (the
        event is tried again, in order); after that raises BFUS's refusal
        (bfus_duplicate: a customer that is not this company's). A 409 more than
        ``duplicate_wait`` after the company's last one starts a new wait (the event of
        the last was let go: its partition handed over, the worker stopped)."""
        if self._linked(self.lime.get(self.limetype, company_id)):
            self._duplicates.pop(company_id, None)
            return
        now = time.monotonic()
        first, last = self._duplicates.get(company_id, (now, now))
        if now - last > self.duplicate_wait:
            first = now
        self._duplicates[company_id] = (first, now)
        if now - first < self.duplicate_wait:
            raise BfusUnavailable("BFUS has a customer with this identity (409); waiting for BFUS's own message "
                                  "about it to link the company")
        self._duplicates.pop(company_id, None)
        raise self._refused(err, "create")

    def _known(self, plan: Plan) -> dict[str, Any]:
        prop = self.mapper.fingerprint_property
        return {prop: plan.fingerprint} if prop and plan.fingerprint is not None else {}

    def _mapped(self, customer: dict[str, Any], customerno: str) -> dict[str, Any]:
        try:
            return self.mapper.map(customer)
        except MappingError as err:
            raise PermanentFailure("mapping_error", f"BFUS's customer does not map to Lime: {err}",
                                   f"field '{err.field}': {err.problem}", customerno=customerno) from None

    def _bfus_values(self, company: dict[str, Any], properties: tuple[str, ...],
                     customerno: str = "") -> dict[str, Any]:
        try:
            return self.mapper.bfus_values(company, properties)
        except MappingError as err:
            raise PermanentFailure("mapping_error", f"The {self.limetype} does not map to BFUS: {err}",
                                   f"field '{err.field}': {err.problem}", customerno=customerno) from None

    @staticmethod
    def _refused(err: BfusRejected, what: str, customerno: str = "") -> PermanentFailure:
        fields = "; ".join(f"{name}: {' '.join(map(str, texts)) if isinstance(texts, list) else texts}"
                           for name, texts in err.fields.items())
        text = f"BFUS refused the {what} ({err.status} {err.code}): {err.message}" + (f" [{fields}]" if fields else "")
        detail = f"BFUS {err.status} {err.code} ({', '.join(sorted(err.fields))})"
        return PermanentFailure(REASONS.get(err.status, "bfus_rejected"), text, detail, customerno=customerno)
