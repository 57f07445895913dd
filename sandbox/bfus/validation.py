"""What BFUS accepts when a customer is written through its API (contract.md §4): the
customer's own fields, a personnummer or organisationsnummer with a valid check digit,
a name, an address with a Swedish postcode, an e-mail address that looks like one.
Fields BFUS owns (its number, status, category, dates) are not writable. And what a
bookmark request must hold."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sandbox.bfus.swedish import luhn_digit

OBJECTTYPES = ("customer", "contract", "facility", "meter")
CLIENTS = ("BFU", "MFU")  # BFUS's desktop client and its web client
KEY_LENGTH = 64  # an object key is at most this long (contract.md §1)
WRITABLE = ("customertype", "name", "firstname", "lastname", "socialsecurityno", "orgno", "street", "zipcode",
            "city", "country", "phone", "mobilephone", "email", "paymentmethod", "einvoice")
BFUS_OWNED = ("customerno", "status", "category", "createddate", "changeddate")
_PERSONNUMMER = re.compile(r"^(\d{2})?(\d{6})[-+]?(\d{4})$")
_ORGNR = re.compile(r"^(\d{6})-?(\d{4})$")
_ZIPCODE = re.compile(r"^\d{3} ?\d{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def personnummer_problem(value: Any) -> str | None:
    match = _PERSONNUMMER.match(value) if isinstance(value, str) else None
    if not match:
        return "Must be a personnummer: YYYYMMDD-NNNN."
    century, short, tail = match.groups()
    try:
        dt.datetime.strptime((century or "19") + short, "%Y%m%d")
    except ValueError:
        return "Not a personnummer: no such birth date."
    if luhn_digit(short + tail[:3]) != int(tail[3]):
        return "Not a personnummer: the check digit is wrong."
    return None


def orgnr_problem(value: Any) -> str | None:
    match = _ORGNR.match(value) if isinstance(value, str) else None
    if not match:
        return "Must be an organisationsnummer: NNNNNN-NNNN."
    digits = "".join(match.groups())
    if luhn_digit(digits[:9]) != int(digits[9]):
        return "Not an organisationsnummer: the check digit is wrong."
    return None


def customer_problems(customer: dict[str, Any]) -> dict[str, list[str]]:
    """Per field, what is wrong with a customer as it would be stored."""
    problems: dict[str, list[str]] = {}

    def problem(name: str, text: str) -> None:
        problems.setdefault(name, []).append(text)

    kind = customer.get("customertype")
    if kind not in ("private", "company"):
        problem("customertype", "Must be private or company.")
    if kind == "private":
        for name in ("firstname", "lastname"):
            if not _text(customer.get(name)):
                problem(name, "Required for a private customer.")
        found = personnummer_problem(customer.get("socialsecurityno"))
        if found:
            problem("socialsecurityno", found)
    if kind == "company":
        if not _text(customer.get("name")):
            problem("name", "Required for a company.")
        found = orgnr_problem(customer.get("orgno"))
        if found:
            problem("orgno", found)
    for name in ("street", "city"):
        if not _text(customer.get(name)):
            problem(name, "Required.")
    if not (isinstance(customer.get("zipcode"), str) and _ZIPCODE.match(customer["zipcode"])):
        problem("zipcode", "Must be a Swedish postcode: NNN NN.")
    email = customer.get("email")
    if email not in (None, "") and not (isinstance(email, str) and _EMAIL.match(email)):
        problem("email", "Not an e-mail address.")
    if "einvoice" in customer and not isinstance(customer["einvoice"], bool):
        problem("einvoice", "Must be true or false.")
    for name in WRITABLE:
        value = customer.get(name)
        if value is not None and name != "einvoice" and not isinstance(value, str):
            problem(name, "Must be text.")
    return problems


def write_problems(changes: Any) -> dict[str, list[str]]:
    """What is wrong with the fields of a write itself (before it is merged)."""
    if not isinstance(changes, dict):
        return {"_body": ["Send one JSON object of customer fields."]}
    problems: dict[str, list[str]] = {}
    for name in changes:
        if name in BFUS_OWNED:
            problems[name] = ["Managed by BFUS; not writable."]
        elif name not in WRITABLE:
            problems[name] = ["Unknown field."]
    return problems


def bookmark_problems(body: dict[str, Any]) -> dict[str, list[str]]:
    """Per field, what is wrong with a bookmark request ``{"objecttype", "key", "client"}``."""
    problems: dict[str, list[str]] = {}
    objecttype = body.get("objecttype")
    if not isinstance(objecttype, str) or objecttype not in OBJECTTYPES:
        problems["objecttype"] = [f"Must be one of {', '.join(OBJECTTYPES)}."]
    key: Any = body.get("key")
    if not _text(key):
        problems["key"] = ["Required: the object's key (customer, contract, facility or meter number)."]
    elif len(key) > KEY_LENGTH:
        problems["key"] = [f"At most {KEY_LENGTH} characters."]
    client = body.get("client")
    if not isinstance(client, str) or client not in CLIENTS:
        problems["client"] = ["Must be BFU (the desktop client) or MFU (the web client)."]
    for name in body:
        if name not in ("objecttype", "key", "client"):
            problems[name] = ["Unknown field."]
    return problems


def _text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""
