"""The Lime stand-in's front door: one ASGI app, served by uvicorn (sandbox/serve.py).

API requests (``/<application>/api/v1/...``) are served on the event loop itself: the
body is read, sandbox/lime/api.py admits the request (routes it, counts it, decides its
fault), the latency passes as an ``asyncio.sleep`` and the handler answers, all in the
loop's thread. Every other path (the admin API, the web client's cards) goes to the
Flask app through a2wsgi, in a2wsgi's threads.

Why: every Lime call of every benchmark lands here, and the stand-in shares the
machine (issue 14). Under waitress each request crossed to a thread of its own, which
then slept out the latency and woke with cold caches; here a request costs the loop a
parse, a timer and a call (docs/operations.md, "CPU").
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any, cast

from a2wsgi import WSGIMiddleware
from a2wsgi.wsgi import build_environ

from sandbox.lime.api import MOST_BODY, Answer, LimeAPI, error_answer

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class LimeFront:
    def __init__(self, wsgi_app: Callable[..., Any], api: LimeAPI, prefix: str):
        self.api = api
        self.prefix = prefix
        self.rest = WSGIMiddleware(wsgi_app)

    def close(self) -> None:
        """Let a2wsgi's threads end (they would wait for admin requests for good)."""
        self.rest.executor.shutdown(wait=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path != self.prefix and not path.startswith(self.prefix + "/"):
            await self.rest(scope, receive, send)  # type: ignore[arg-type]
            return
        body = await read_body(receive)
        if body is None:  # the client left before sending it all
            return
        if len(body) > MOST_BODY:
            await reply(send, error_answer(413, "too_large", f"A request's body is at most {MOST_BODY} bytes.",
                                           {"Connection": "close"}))
            return
        environ = cast(dict[str, Any], build_environ(scope, io.BytesIO(body)))  # type: ignore[arg-type]
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = self.prefix, environ["PATH_INFO"][len(self.prefix):]
        admitted = self.api.admit(environ)
        if isinstance(admitted, Answer):
            await reply(send, admitted)
            return
        if admitted.delay:
            await asyncio.sleep(admitted.delay)
        await reply(send, self.api.serve(admitted))


async def read_body(receive: Receive) -> bytes | None:
    """The request's body, or None when the client left before sending it all; reading
    stops past MOST_BODY bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body") or size > MOST_BODY:
            return b"".join(chunks)


async def reply(send: Send, answer: Answer) -> None:
    await send({"type": "http.response.start", "status": answer.status,
                "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.header_list()]})
    await send({"type": "http.response.body", "body": answer.body})
