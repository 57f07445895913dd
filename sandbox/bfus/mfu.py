"""MFU, BFUS's web client, as far as a jump from Lime needs it: one page per object,
where BFUS's bookmarks lead (contract.md §4, issue 13).

    GET /mfu/<objecttype>/<key>              the object: its name, number, status and the rest
    GET /mfu/<objecttype>/<key>?client=BFU   the same page as a hand-off to BFU, the desktop
                                             client: an "Open in BFU" link (bfu://open/...)

No login: a real MFU has its own; this one shows anything to anyone who asks. The API's
outage switch (``BfusStandIn.unavailable``) does not touch these pages; a stopped
stand-in answers nothing at all. An unknown object, objecttype, or an object deleted in
BFUS (the API's reads do not show those either) is a 404 page.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, request, url_for

from sandbox.bfus.validation import OBJECTTYPES
from sandbox.pages import html_page

NAMES = {"customer": "Customer", "contract": "Contract", "facility": "Facility", "meter": "Meter"}
NUMBERS = {"customer": "customerno", "contract": "contractno", "facility": "facilityno", "meter": "meterno"}


def bfu_url(objecttype: str, key: str) -> str:
    """The address BFU, the desktop client, registers for itself: it opens the object."""
    return f"bfu://open/{objecttype}/{quote(key, safe='')}"


def _store() -> Any:
    return current_app.extensions["bfus"].store


def _link(objecttype: str, key: Any) -> dict[str, str] | None:
    if not key:
        return None
    return {"text": str(key), "href": url_for("mfu.page", objecttype=objecttype, key=str(key))}


def _status(objecttype: str, data: dict[str, Any]) -> str:
    """The object's status as MFU shows it: customers and contracts have one; a facility
    is active until its end date, a meter installed until it is removed."""
    if objecttype in ("customer", "contract"):
        return str(data.get("status") or "")
    if objecttype == "facility":
        end = data.get("enddate")
        if not end:
            return "active"
        return "ended" if str(end) <= dt.date.today().isoformat() else f"active, ends {end}"
    return f"removed {data['removeddate']}" if data.get("removeddate") else "installed"


def _heading(objecttype: str, key: str, data: dict[str, Any]) -> str:
    if objecttype == "customer":
        return str(data.get("name") or f"Customer {key}")
    if objecttype == "contract" and data.get("product"):
        return f"Contract {key} ({data['product']})"
    return f"{NAMES[objecttype]} {key}"


def _address(data: dict[str, Any]) -> str:
    place = " ".join(str(data[k]) for k in ("zipcode", "city") if data.get(k))
    return ", ".join(p for p in (str(data.get("street") or ""), place) if p)


def _rows(objecttype: str, key: str, data: dict[str, Any]) -> list[dict[str, Any]]:
    """(label, value or link) rows of the page; ``field`` names the ones tests look for."""
    rows: list[dict[str, Any]] = [
        {"label": "Object type", "field": "objecttype", "value": objecttype},
        {"label": f"{NAMES[objecttype]} number", "field": "number", "value": key},
    ]
    if objecttype == "customer":
        rows.append({"label": "Name", "field": "name", "value": data.get("name")})
    rows.append({"label": "Status", "field": "status", "value": _status(objecttype, data)})
    if objecttype != "customer":
        rows.append({"label": "Customer", "field": "customerno", "link": _link("customer", data.get("customerno"))})
    if objecttype in ("contract", "meter"):
        rows.append({"label": "Facility", "field": "facilityno", "link": _link("facility", data.get("facilityno"))})
    more: dict[str, tuple[tuple[str, str], ...]] = {
        "customer": (("Customer type", "customertype"), ("Category", "category"), ("Phone", "phone"),
                     ("E-mail", "email"), ("Customer since", "createddate")),
        "contract": (("Product", "product"), ("Start date", "startdate"), ("End date", "enddate")),
        "facility": (("Property designation", "propertydesignation"), ("District", "district"),
                     ("Category", "category"), ("End date", "enddate")),
        "meter": (("Meter type", "metertype"), ("Installed", "installeddate"), ("Removed", "removeddate")),
    }
    if objecttype in ("customer", "facility"):
        rows.append({"label": "Address", "field": "address", "value": _address(data)})
    rows += [{"label": label, "field": name, "value": data.get(name)} for label, name in more[objecttype]]
    return [r for r in rows if r.get("value") not in (None, "") or r.get("link")]


def mfu_blueprint() -> Blueprint:
    bp = Blueprint("mfu", __name__)

    @bp.get("/<objecttype>/<path:key>")
    def page(objecttype: str, key: str) -> Response:
        client = "BFU" if request.args.get("client") == "BFU" else "MFU"
        if objecttype not in OBJECTTYPES:
            return _page(404, "Not found in BFUS", note=f"BFUS has no objecttype '{objecttype}'.")
        found = _store().get(objecttype, key)
        if found is None:
            return _page(404, "Not found in BFUS", note=f"BFUS has no {objecttype} {key}.")
        if found["deleted"]:
            return _page(404, "Not found in BFUS", note=f"{NAMES[objecttype]} {key} was deleted in BFUS.")
        data = found["data"]
        children = []
        if objecttype == "customer":
            children = [{"objecttype": c["objecttype"], "name": NAMES.get(c["objecttype"], c["objecttype"]),
                         "status": _status(c["objecttype"], c["data"]), **(_link(c["objecttype"], c["key"]) or {})}
                        for c in _store().children(key) if c["objecttype"] in OBJECTTYPES]
        return _page(200, _heading(objecttype, key, data), rows=_rows(objecttype, key, data), children=children,
                     client=client, bfu=bfu_url(objecttype, key) if client == "BFU" else None,
                     mfu=url_for("mfu.page", objecttype=objecttype, key=key))

    return bp


def _page(status: int, title: str, **context: Any) -> Response:
    return html_page(PAGE, status, title, **context)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} · MFU</title>
<style>
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328;
         background: #f6f8fa; }
  header { background: #1b3a5c; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline; }
  header strong { font-weight: 600; }
  main { padding: 16px 24px; max-width: 900px; }
  h1 { font-size: 20px; margin: 8px 0 12px; }
  h2 { font-size: 16px; margin: 18px 0 8px; }
  dl { display: grid; grid-template-columns: 180px 1fr; gap: 4px 12px; background: #fff; padding: 10px;
       border: 1px solid #d0d7de; margin: 0; }
  dt { color: #57606a; } dd { margin: 0; word-break: break-word; }
  table { border-collapse: collapse; width: 100%; background: #fff; }
  th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid #d0d7de; }
  th { background: #eef1f4; font-weight: 600; }
  .note { padding: 8px 12px; background: #ddf4ff; border: 1px solid #54aeff; border-radius: 4px; margin-bottom: 12px; }
  .error { background: #ffebe9; border-color: #ff8182; }
  a.button { display: inline-block; padding: 5px 12px; border-radius: 4px; border: 1px solid #1b3a5c;
             background: #2a5b8c; color: #fff; text-decoration: none; }
  .status { color: #57606a; font-size: 12px; }
</style>
</head>
<body>
<header><strong>MFU</strong><span>BFUS web client (stand-in)</span></header>
<main>
<h1>{{ title }}</h1>
{% if note %}<div class="note{% if status >= 400 %} error{% endif %}" role="alert">{{ note }}</div>{% endif %}
{% if bfu %}<div class="note" role="status">This bookmark opens in BFU, BFUS's desktop client.
  <a class="button" id="open-bfu" href="{{ bfu }}">Open in BFU</a>
  Without BFU on this computer, <a href="{{ mfu }}">stay in MFU</a>: the object is shown below.</div>{% endif %}
{% if rows %}<dl id="object">
{% for row in rows %}  <dt>{{ row.label }}</dt><dd data-field="{{ row.field }}">
    {%- if row.link %}<a href="{{ row.link.href }}">{{ row.link.text }}</a>{% else %}{{ row.value }}{% endif -%}
  </dd>
{% endfor %}</dl>{% endif %}
{% if children %}<h2>Facilities, contracts and meters</h2>
<table><tr><th>Object</th><th>Number</th><th>Status</th></tr>
{% for child in children %}<tr><td>{{ child.name }}</td><td><a href="{{ child.href }}">{{ child.text }}</a></td>
  <td>{{ child.status }}</td></tr>
{% endfor %}</table>{% endif %}
<p class="status">HTTP {{ status }}</p>
</main>
</body>
</html>
"""
