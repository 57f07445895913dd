"""Realistic Swedish customer data for the BFUS stand-in: names, addresses with real
post-code areas, personnummer and organisationsnummer with valid check digits,
phone numbers with real area codes. Every value is made up; any likeness to a real
person is chance."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

FIRST_NAMES_F = [
    "Anna", "Eva", "Maria", "Karin", "Sara", "Kristina", "Lena", "Emma", "Kerstin", "Marie", "Malin", "Ingrid",
    "Jenny", "Hanna", "Linnéa", "Sofia", "Elin", "Ida", "Åsa", "Birgitta", "Maja", "Ebba", "Agnes", "Märta",
]
FIRST_NAMES_M = [
    "Lars", "Mikael", "Anders", "Johan", "Erik", "Per", "Karl", "Peter", "Jan", "Thomas", "Daniel", "Fredrik",
    "Hans", "Bengt", "Oskar", "Magnus", "Björn", "Göran", "Nils", "Olof", "Axel", "Måns", "Sven", "Örjan",
]
LAST_NAMES = [
    "Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson", "Persson", "Svensson",
    "Gustafsson", "Pettersson", "Jonsson", "Jansson", "Hansson", "Bengtsson", "Jönsson", "Lindberg", "Jakobsson",
    "Magnusson", "Lindström", "Olofsson", "Lindqvist", "Lindgren", "Berg", "Axelsson", "Bergström", "Lundberg",
    "Lundgren", "Lind", "Mattsson", "Berglund", "Fredriksson", "Sandberg", "Henriksson", "Åberg", "Öberg",
    "Sjöberg", "Wallin", "Engström", "Håkansson", "Danielsson", "Lundin", "Björk", "Holm", "Ström", "Söderberg",
]
STREETS = [
    "Storgatan", "Drottninggatan", "Kungsgatan", "Skolgatan", "Södra vägen", "Järnvägsgatan", "Kyrkogatan",
    "Nygatan", "Parkvägen", "Ringvägen", "Björkvägen", "Tallvägen", "Granvägen", "Ekvägen", "Lärkstigen",
    "Solrosvägen", "Åkervägen", "Hagagatan", "Västra Hamngatan", "Östra Promenaden", "Bruksgatan", "Mölnvägen",
]
# (city, post-code prefix, area code, district)
CITIES = [
    ("Stockholm", "11", "08", "Södermalm"), ("Stockholm", "12", "08", "Enskede"), ("Göteborg", "41", "031", "Majorna"),
    ("Malmö", "21", "040", "Limhamn"), ("Uppsala", "75", "018", "Luthagen"), ("Västerås", "72", "021", "Bäckby"),
    ("Örebro", "70", "019", "Adolfsberg"), ("Linköping", "58", "013", "Ryd"), ("Helsingborg", "25", "042", "Tågaborg"),
    ("Jönköping", "55", "036", "Huskvarna"), ("Norrköping", "60", "011", "Klingsberg"), ("Lund", "22", "046",
                                                                                         "Norra Fäladen"),
    ("Umeå", "90", "090", "Ålidhem"), ("Gävle", "80", "026", "Sätra"), ("Borås", "50", "033", "Norrby"),
    ("Sundsvall", "85", "060", "Skönsberg"), ("Luleå", "97", "0920", "Porsön"), ("Kalmar", "39", "0480", "Berga"),
    ("Karlstad", "65", "054", "Herrhagen"), ("Växjö", "35", "0470", "Teleborg"), ("Östersund", "83", "063",
                                                                                  "Odenslund"),
]
COMPANY_WORDS = [
    "Bygg", "Fastighets", "Måleri", "El", "Rör", "VVS", "Bageri", "Konsult", "Transport", "Handels", "Gård",
    "Snickeri", "Data", "Frisör", "Tandvård", "Redovisning", "Café", "Åkeri", "Skog", "Fisk",
]
COMPANY_FORMS = ["AB", "AB", "AB", "HB", "Ekonomisk förening", "Bostadsrättsförening"]
PAYMENT_METHODS = ["autogiro", "einvoice", "paper", "card"]
CATEGORIES_PRIVATE = ["residential", "residential", "residential", "holiday_home"]
CATEGORIES_COMPANY = ["business", "business", "agriculture", "housing_association"]


def luhn_digit(digits: str) -> int:
    total = 0
    for i, ch in enumerate(digits):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return (10 - total % 10) % 10


def personnummer(rng: random.Random) -> str:
    born = dt.date(1935, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 70))
    serial = f"{rng.randrange(0, 1000):03d}"
    short = born.strftime("%y%m%d") + serial
    return f"{born:%Y%m%d}-{serial}{luhn_digit(short)}"


def organisationsnummer(rng: random.Random) -> str:
    body = "55" + f"{rng.randrange(0, 10**7):07d}"
    return f"{body[:6]}-{body[6:]}{luhn_digit(body)}"


def _ascii(text: str) -> str:
    table = str.maketrans({"å": "a", "ä": "a", "ö": "o", "é": "e", "Å": "A", "Ä": "A", "Ö": "O", " ": ""})
    return text.translate(table).lower()


class SwedishData:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def address(self) -> dict[str, str]:
        city, prefix, _area, _district = self.rng.choice(CITIES)
        return {
            "street": f"{self.rng.choice(STREETS)} {self.rng.randrange(1, 120)}",
            "zipcode": f"{prefix}{self.rng.randrange(100, 999)}",
            "city": city,
            "country": "SE",
        }

    def phone(self, city: str) -> str:
        area = next((c[2] for c in CITIES if c[0] == city), "08")
        return f"+46{area[1:]}{self.rng.randrange(100000, 999999)}"

    def mobile(self) -> str:
        return f"+467{self.rng.choice('02369')}{self.rng.randrange(1000000, 9999999)}"

    def customer(self, customerno: str, today: dt.date) -> dict[str, Any]:
        rng = self.rng
        private = rng.random() < 0.8
        address = self.address()
        created = today - dt.timedelta(days=rng.randrange(0, 3650))
        data: dict[str, Any] = {"customerno": customerno, "customertype": "private" if private else "company"}
        if private:
            first = rng.choice(FIRST_NAMES_F + FIRST_NAMES_M)
            last = rng.choice(LAST_NAMES)
            data.update(
                firstname=first,
                lastname=last,
                name=f"{first} {last}",
                socialsecurityno=personnummer(rng),
                orgno=None,
                email=f"{_ascii(first)}.{_ascii(last)}{rng.randrange(1, 99)}@example.se",
                category=rng.choice(CATEGORIES_PRIVATE),
            )
        else:
            name = f"{rng.choice(LAST_NAMES)}s {rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_FORMS)}"
            data.update(
                firstname=None,
                lastname=None,
                name=name,
                socialsecurityno=None,
                orgno=organisationsnummer(rng),
                email=f"info@{_ascii(name.split()[0])}{rng.randrange(1, 99)}.example.se",
                category=rng.choice(CATEGORIES_COMPANY),
            )
        paymentmethod = rng.choice(PAYMENT_METHODS)
        data.update(
            address,
            phone=self.phone(address["city"]),
            mobilephone=self.mobile() if private and rng.random() < 0.7 else None,
            status="active",
            paymentmethod=paymentmethod,
            einvoice=paymentmethod == "einvoice",
            createddate=created.isoformat(),
            changeddate=today.isoformat(),
        )
        return data

    def change_customer(self, data: dict[str, Any], today: dt.date) -> dict[str, Any]:
        """A plausible update: a move, new contact details, a status or payment change."""
        rng = self.rng
        new = dict(data)
        kind = rng.choice(["move", "phone", "email", "status", "payment", "name"])
        if kind == "move":
            new.update(self.address())
        elif kind == "phone":
            new["phone"] = self.phone(new.get("city") or "Stockholm")
            if new.get("customertype") == "private":
                new["mobilephone"] = self.mobile()
        elif kind == "email":
            local = _ascii(new.get("firstname") or "kund")
            new["email"] = f"{local}.{rng.randrange(100, 999)}@example.se"
        elif kind == "status":
            new["status"] = rng.choice([s for s in ("active", "inactive", "former") if s != new.get("status")])
        elif kind == "payment":
            new["paymentmethod"] = rng.choice(PAYMENT_METHODS)
            new["einvoice"] = new["paymentmethod"] == "einvoice"
        elif new.get("customertype") == "private":
            new["lastname"] = rng.choice(LAST_NAMES)
            new["name"] = f"{new['firstname']} {new['lastname']}"
        else:
            new["name"] = f"{rng.choice(LAST_NAMES)}s {rng.choice(COMPANY_WORDS)} AB"
        new["changeddate"] = today.isoformat()
        return new


PRODUCTS = ["electricity", "electricity", "districtheating", "water", "broadband", "gas"]
METER_TYPES = {"electricity": "electricity", "districtheating": "heat", "water": "water", "gas": "gas"}
FACILITY_CATEGORIES = ["villa", "apartment", "holiday_home", "commercial", "farm"]


def _property_designation(rng: random.Random, city: str) -> str:
    block = rng.choice(["BJÖRKEN", "EKEN", "LÖNNEN", "SVALAN", "KRONAN", "HAGEN"])
    return f"{city.upper()} {block} {rng.randrange(1, 40)}:{rng.randrange(1, 300)}"


class SwedishFacilities:
    """Facilities (anläggningar), contracts (avtal) and meters (mätare) of a customer."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def facility(self, facilityno: str, customerno: str, address: dict[str, str], today: dt.date) -> dict[str, Any]:
        city = address["city"]
        district = next((c[3] for c in CITIES if c[0] == city), "Centrum")
        return {
            "facilityno": facilityno,
            "customerno": customerno,
            "street": address["street"],
            "zipcode": address["zipcode"],
            "city": city,
            "propertydesignation": _property_designation(self.rng, city),
            "district": district,
            "category": self.rng.choice(FACILITY_CATEGORIES),
            "enddate": None,
        }

    def contract(self, contractno: str, customerno: str, facilityno: str, today: dt.date) -> dict[str, Any]:
        start = today - dt.timedelta(days=self.rng.randrange(0, 2000))
        return {
            "contractno": contractno,
            "customerno": customerno,
            "facilityno": facilityno,
            "product": self.rng.choice(PRODUCTS),
            "status": "active",
            "startdate": start.isoformat(),
            "enddate": None,
        }

    def meter(self, meterno: str, facilityno: str, customerno: str, product: str, today: dt.date) -> dict[str, Any]:
        return {
            "meterno": meterno,
            "facilityno": facilityno,
            "customerno": customerno,
            "metertype": METER_TYPES.get(product, "electricity"),
            "installeddate": (today - dt.timedelta(days=self.rng.randrange(0, 3000))).isoformat(),
            "removeddate": None,
        }

    def change(self, objecttype: str, data: dict[str, Any], today: dt.date) -> dict[str, Any]:
        """A plausible update of a facility, contract or meter."""
        rng = self.rng
        new = dict(data)
        if objecttype == "facility":
            if rng.random() < 0.2:
                new["enddate"] = (today + dt.timedelta(days=rng.randrange(1, 90))).isoformat()
            else:
                new["category"] = rng.choice([c for c in FACILITY_CATEGORIES if c != data.get("category")])
        elif objecttype == "contract":
            if data.get("status") == "active" and rng.random() < 0.5:
                new["status"] = "ended"
                new["enddate"] = today.isoformat()
            else:
                new["status"] = rng.choice(["active", "pending"])
                new["enddate"] = None
        elif objecttype == "meter":
            new["removeddate"] = None if data.get("removeddate") else today.isoformat()
        return new
