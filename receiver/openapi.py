"""``GET /openapi.json``: the OpenAPI 3.1 description of every endpoint the receiver
serves. It is kept as YAML beside this module (receiver/openapi.yaml, installed with
the package) and served as JSON, read and encoded once per process."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml
from flask import Blueprint, Response

bp = Blueprint("openapi", __name__)


@functools.cache
def document() -> dict[str, Any]:
    """The description, as read from receiver/openapi.yaml."""
    text = resources.files("receiver").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@functools.cache
def _encoded() -> bytes:
    # json.dumps keeps the document's order (Flask's jsonify would sort the keys).
    return json.dumps(document(), ensure_ascii=False, indent=1).encode()


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return Response(_encoded(), mimetype="application/json")
