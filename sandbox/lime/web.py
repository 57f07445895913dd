"""Lime's web client, as far as a jump to BFUS needs it: an object's card (issue 13).

    GET /<application>/web/<limetype>/<id>

The card shows the object's properties (label: value; a relation as a link to the
related card) and, in its actionpad, every non-empty *link* property as a link named by
the property's localname ("Open in MFU"), the way a Lime user clicks to BFUS. Link
properties appear only there, not among the properties.

No API key: a real Lime web client has its own login; this one shows anything to anyone
who asks. Reading a card is not an API request: it is not counted in /_admin/stats and
no fault (down, latency, errors, rate limit) touches it. An unknown limetype or object
is a 404 page.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, url_for

from sandbox.lime.schema import Limetype, Property
from sandbox.lime.store import Filter, LimeRequestError, LimeStore
from sandbox.pages import html_page

RELATED_SHOWN = 20  # objects of a hasmany relation listed on a card


def _store() -> LimeStore:
    return current_app.extensions["lime_store"]


def _card_link(limetype: str, object_id: Any) -> str:
    return url_for("lime_web.card", limetype=limetype, object_id=str(object_id))


def _related(limetype: str, object_id: Any) -> dict[str, str]:
    """A link to a related object's card, named by its descriptive."""
    try:
        text = _store().get(limetype, int(object_id))["_descriptive"]
    except (LimeRequestError, TypeError, ValueError):
        text = f"{limetype} {object_id}"
    return {"text": text, "href": _card_link(limetype, object_id)}


def _row(lt: Limetype, prop: Property, obj: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"label": prop.localname or prop.name, "name": prop.name, "value": "", "links": []}
    value = obj.get(prop.name)
    if prop.type == "hasmany":
        if prop.related and prop.backreference:
            found, more = _store().query(prop.related, [Filter(prop.backreference, "=", obj["_id"])], [],
                                         RELATED_SHOWN, 0)
            row["links"] = [{"text": o["_descriptive"], "href": _card_link(prop.related, o["_id"])} for o in found]
            row["value"] = "and more" if more else ""
    elif prop.type == "belongsto":
        row["links"] = [_related(prop.related or "", value)] if value is not None else []
    elif prop.type == "option":
        row["value"] = value.get("text", "") if isinstance(value, dict) else ""
    elif prop.type == "yesno":
        row["value"] = "Yes" if value else "No"
    else:
        row["value"] = "" if value is None else str(value)
    return row


def web_blueprint() -> Blueprint:
    bp = Blueprint("lime_web", __name__)

    @bp.get("/<limetype>/<object_id>")
    def card(limetype: str, object_id: str) -> Response:
        lt = _store().limetypes.get(limetype)
        if lt is None:
            return _page(404, "Not found", note=f"Lime has no limetype '{limetype}'.")
        try:
            obj = _store().get(limetype, int(object_id))
        except (LimeRequestError, ValueError):
            return _page(404, "Not found", note=f"Lime has no {limetype} {object_id}.")
        actions = [{"text": p.localname or p.name, "name": p.name, "href": obj[p.name]}
                   for p in lt.properties.values() if p.type == "link" and obj.get(p.name)]
        rows = [_row(lt, p, obj) for p in lt.properties.values() if p.type != "link"]
        kind = lt.localname.get("singular") or limetype
        return _page(200, obj["_descriptive"], kind=kind, obj=obj, rows=rows, actions=actions, limetype=limetype)

    return bp


def _page(status: int, title: str, **context: Any) -> Response:
    return html_page(PAGE, status, title, **context)


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}{% if kind %} · {{ kind }}{% endif %} · Lime CRM</title>
<style>
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328;
         background: #f6f8fa; }
  header { background: #3b2f63; color: #fff; padding: 10px 24px; display: flex; gap: 24px; align-items: baseline; }
  header strong { font-weight: 600; }
  main { padding: 16px 24px; max-width: 1100px; display: grid; grid-template-columns: 220px 1fr; gap: 16px; }
  main.plain { display: block; max-width: 720px; }
  h1 { font-size: 20px; margin: 8px 0 12px; }
  h2 { font-size: 14px; margin: 0 0 8px; color: #57606a; text-transform: uppercase; letter-spacing: .04em; }
  aside { background: #fff; border: 1px solid #d0d7de; padding: 10px; align-self: start; }
  aside ul { list-style: none; margin: 0; padding: 0; } aside li { margin: 4px 0; }
  dl { display: grid; grid-template-columns: 180px 1fr; gap: 4px 12px; background: #fff; padding: 10px;
       border: 1px solid #d0d7de; margin: 0; }
  dt { color: #57606a; } dd { margin: 0; word-break: break-word; }
  .note { padding: 8px 12px; background: #ddf4ff; border: 1px solid #54aeff; border-radius: 4px; margin-bottom: 12px; }
  .error { background: #ffebe9; border-color: #ff8182; }
  .status { color: #57606a; font-size: 12px; }
</style>
</head>
<body>
<header><strong>Lime CRM</strong><span>web client (stand-in)</span></header>
{% if obj %}<main>
<aside id="actionpad" aria-label="Actionpad">
  <h2>{{ kind }}</h2>
  <ul>
  {% for action in actions %}<li><a href="{{ action.href }}" data-property="{{ action.name }}">
    {{- action.text }}</a></li>
  {% else %}<li class="status">No links.</li>
  {% endfor %}</ul>
</aside>
<section>
<h1>{{ title }}</h1>
<dl id="card">
{% for row in rows %}  <dt>{{ row.label }}</dt><dd data-property="{{ row.name }}">
    {%- for link in row.links %}<a href="{{ link.href }}">{{ link.text }}</a>{% if not loop.last %}, {% endif %}
    {%- endfor %}{% if row.links and row.value %} {% endif %}{{ row.value }}</dd>
{% endfor %}</dl>
<p class="status">{{ limetype }} {{ obj._id }} · created {{ obj._createdtime }} · changed {{ obj._timestamp }}</p>
</section>
</main>{% else %}<main class="plain">
<h1>{{ title }}</h1>
<div class="note error" role="alert">{{ note }}</div>
<p class="status">HTTP {{ status }}</p>
</main>{% endif %}
</body>
</html>
"""
