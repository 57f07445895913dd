"""``GET /jump/<limetype>/<id>?client=MFU|BFU&sig=...``: from a Lime object to the
same object in BFUS (docs/jump.md). The link is signed (shared/jumplinks.py); a valid
one costs one Lime call (the object, for its BFUS key) and one BFUS call (a bookmark),
then a 302 to the bookmark, only when it lies under ``bfus.ui_url``. Every other
outcome is a small page a Lime user understands. Every jump is logged with limetype,
id, client and outcome, never a value of the object.

The only requests of the receiver that call Lime or BFUS: a person clicked, and
waits for the answer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Blueprint, Response, abort, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

from receiver import context
from shared import jumplinks
from shared.bfus import BfusError, BfusRejected, BfusUnavailable
from shared.config import Config
from shared.lime import LimeRejected, LimeUnavailable
from shared.logs import get_logger
from shared.mapping import objecttype_of

bp = Blueprint("jump", __name__, template_folder="templates")
log = get_logger(component="receiver")

# What a BFUS key is called on the pages, per objecttype (else "<objecttype> key").
KEY_NAMES = {"customer": "customer number", "contract": "contract number", "facility": "facility number",
             "meter": "meter number"}


@dataclass(frozen=True)
class Outcome:
    """How one jump ended: ``what`` goes to the log, ``response`` to the browser."""

    what: str
    response: BaseResponse
    objecttype: str | None = None


@bp.get("/jump/<limetype>/<int:object_id>")
def jump(limetype: str, object_id: int) -> BaseResponse:
    config = context.config()
    if not config.jump.enabled:
        abort(404)  # jump off: no secret configured
    started = time.monotonic()
    client = request.args.get("client", "")
    outcome = _jump(config, limetype, object_id, client, request.args.get("sig"))
    fields = {"limetype": limetype[:64], "lime_id": object_id, "client": client[:8], "outcome": outcome.what,
              "objecttype": outcome.objecttype, "ms": round((time.monotonic() - started) * 1000, 1)}
    if outcome.what == "redirected":
        log.info("jump", **fields)
    else:
        log.warning("jump", **fields)
    response = outcome.response
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the signed address stays out of other sites' logs
    return response


def _jump(config: Config, limetype: str, object_id: int, client: str, sig: str | None) -> Outcome:
    if client not in jumplinks.CLIENTS:
        return Outcome("unknown_client", _page(403, "This link does not work",
                                               f"It asks for a BFUS client the integration does not know; "
                                               f"it opens {' or '.join(jumplinks.CLIENTS)}.", hint=_FROM_LIME))
    if not jumplinks.verify(sig, limetype, object_id, client, config.jump.secrets):
        what = "missing_signature" if not sig else "bad_signature"
        return Outcome(what, _page(403, "This link does not work",
                                   "The link is incomplete or was changed, or it was made before the integration's "
                                   "signing key changed.", hint=_FROM_LIME))
    found = objecttype_of(config.mapping, limetype)
    if found is None:
        return Outcome("not_mapped", _page(404, "Not an object BFUS has",
                                           f"Lime's {limetype} objects are not synced with BFUS, so there is "
                                           f"nothing to open there."))
    objecttype, spec = found
    what = f"{limetype} {object_id}"
    try:
        lime_object = context.lime().get(limetype, object_id)
    except LimeRejected as err:
        if err.status == 404:
            return Outcome("not_found", _page(404, "Not found in Lime",
                                              f"Lime has no {what}: it may have been deleted or merged."), objecttype)
        log.warning("jump_lime_refused", limetype=limetype, lime_id=object_id, status=err.status, code=err.code)
        return Outcome("lime_refused", _page(502, "Lime refused",
                                             f"Lime would not show {what} to the integration "
                                             f"(it answered {err.status})."), objecttype)
    except LimeUnavailable as err:
        log.warning("jump_lime_unavailable", limetype=limetype, lime_id=object_id, error=str(err))
        return Outcome("lime_unavailable", _page(503, "Lime is not answering",
                                                 "The integration could not read the object from Lime just now.",
                                                 retry=True), objecttype)
    key = lime_object.get(spec.key) if isinstance(lime_object, dict) else None
    if key in (None, ""):
        key_name = KEY_NAMES.get(objecttype, f"{objecttype} key")
        return Outcome("not_synced", _page(409, "Not in BFUS yet",
                                           f"This {limetype} has no BFUS {key_name} yet (its Lime property "
                                           f"'{spec.key}' is empty), so BFUS cannot open it. It gets one once "
                                           f"BFUS has the {objecttype} and the integration has synced it."),
                       objecttype)
    try:
        url = context.bfus().bookmark(objecttype, str(key), client)
    except BfusUnavailable as err:
        log.warning("jump_bfus_unavailable", limetype=limetype, lime_id=object_id, error=str(err))
        return Outcome("bfus_unavailable", _page(503, "BFUS is not answering",
                                                 "BFUS did not answer the integration just now.", retry=True),
                       objecttype)
    except BfusRejected as err:
        log.warning("jump_bfus_refused", limetype=limetype, lime_id=object_id, status=err.status, code=err.code)
        return Outcome("bfus_refused", _page(502, "BFUS refused",
                                             f"BFUS would not open this {objecttype}.",
                                             detail=f"BFUS answered: {err.message}"), objecttype)
    except BfusError as err:
        log.warning("jump_bfus_unexpected", limetype=limetype, lime_id=object_id, error=str(err))
        return Outcome("bfus_unexpected", _page(502, "BFUS answered unexpectedly",
                                                "BFUS's answer held no address to open."), objecttype)
    if not jumplinks.is_under(url, config.bfus.ui_url):
        parts = urlsplit(url)
        log.error("jump_bfus_address_refused", limetype=limetype, lime_id=object_id,
                  answered=f"{parts.scheme}://{parts.netloc}"[:200], expected=config.bfus.ui_url)
        return Outcome("bfus_address_refused", _page(502, "BFUS answered an unexpected address",
                                                     "BFUS answered with an address outside its own user interface, "
                                                     "so the integration did not follow it. This has been logged for "
                                                     "the administrators."), objecttype)
    return Outcome("redirected", redirect(url, 302), objecttype)


_FROM_LIME = "Open the object in Lime again and use its BFUS link from there."


def _page(status: int, title: str, message: str, detail: str | None = None, hint: str | None = None,
          retry: bool = False) -> Response:
    """A small HTML page; ``retry`` adds a link to this very address (relative, so it
    holds behind a proxy that serves the receiver under a path of its own)."""
    query = request.query_string.decode("latin-1")
    again = request.path.rsplit("/", 1)[-1] + (f"?{query}" if query else "")
    body = render_template("jump/page.html", status=status, title=title, message=message, detail=detail,
                           hint=hint or ("Try again in a minute." if retry else None), retry=again if retry else None)
    response = Response(body, status, mimetype="text/html")
    if retry:
        response.headers["Retry-After"] = "30"
    return response
