"""The stand-ins' small HTML pages (the MFU page, the Lime card): one template string
rendered with its context, as a response with its status."""

from __future__ import annotations

from typing import Any

from flask import Response, render_template_string


def html_page(template: str, status: int, title: str, **context: Any) -> Response:
    html = render_template_string(template, title=title, status=status, **context)
    return Response(html, status=status, content_type="text/html; charset=utf-8")
