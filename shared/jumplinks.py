"""Signed jump links (docs/jump.md): the address that opens a Lime object in BFUS,
``<public_url>jump/<limetype>/<id>?client=MFU&sig=<hex>``.

The signature is HMAC-SHA256, with ``jump.secret``, over the canonical text
``"<limetype>\\n<id>\\n<client>"``, in lower-case hex. Only someone holding the secret
can make a link, so the receiver's ``/jump`` is no oracle mapping guessed Lime ids to
BFUS keys. The receiver verifies (constant time, the current and the previous secret
while one is rotated); the worker and the migration write links into Lime. Pure code,
no I/O."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlencode, urlsplit

from shared.config import JUMP_CLIENTS, JumpConfig

CLIENTS = JUMP_CLIENTS  # MFU: BFUS's web client; BFU: its desktop client
_HEX = frozenset("0123456789abcdef")


def canonical(limetype: str, object_id: int, client: str) -> bytes:
    """What a signature covers: ``limetype\\nid\\nclient`` (UTF-8)."""
    return f"{limetype}\n{int(object_id)}\n{client}".encode()


def sign(secret: str, limetype: str, object_id: int, client: str) -> str:
    """The link's signature: hex HMAC-SHA256 of :func:`canonical` with ``secret``."""
    if not secret:
        raise ValueError("a jump link needs a secret (jump.secret)")
    return hmac.new(secret.encode(), canonical(limetype, object_id, client), hashlib.sha256).hexdigest()


def verify(signature: str | None, limetype: str, object_id: int, client: str, secrets: Iterable[str]) -> bool:
    """Whether ``signature`` signs this limetype, id and client with one of ``secrets``
    (empty ones skipped). Constant time in the signature's value; every secret is
    tried, so the answer's timing does not tell which one matched."""
    given = (signature or "").lower()
    if len(given) != 64 or not set(given) <= _HEX:  # compare_digest needs ASCII; a SHA-256 is 64 hex digits
        return False
    matched = False
    for secret in secrets:
        if secret:
            matched |= hmac.compare_digest(given, sign(secret, limetype, object_id, client))
    return matched


def jump_url(public_url: str, secret: str, limetype: str, object_id: int, client: str = "MFU") -> str:
    """The signed jump address of one Lime object under the receiver's ``public_url``
    (``https://host/`` or ``https://host/prefix/``)."""
    if client not in CLIENTS:
        raise ValueError(f"unknown BFUS client {client!r} (known: {', '.join(CLIENTS)})")
    if not public_url:
        raise ValueError("a jump link needs the receiver's public address (receiver.public_url)")
    base = public_url if public_url.endswith("/") else public_url + "/"
    query = urlencode({"client": client, "sig": sign(secret, limetype, object_id, client)})
    return f"{base}jump/{quote(limetype, safe='')}/{int(object_id)}?{query}"


def is_under(url: str, base: str) -> bool:
    """Whether ``url`` lies under ``base`` (bfus.ui_url): same scheme and host, its path
    below base's without ``.``/``..`` segments, and no spaces, control characters or
    backslashes. An empty base admits nothing."""
    if not base or not url.startswith(base if base.endswith("/") else base + "/"):
        return False
    if any(ord(c) < 33 or ord(c) == 127 or c == "\\" for c in url):
        return False
    found, wanted = urlsplit(url), urlsplit(base)
    climbs = any(unquote(segment) in (".", "..") for segment in found.path.split("/"))  # a browser would leave base
    return ((found.scheme, found.netloc) == (wanted.scheme, wanted.netloc) and found.path.startswith(wanted.path)
            and not climbs)


@dataclass(frozen=True)
class JumpLinks:
    """What the worker and the migration write to Lime: the link property of each
    configured limetype, set to the object's jump address. Build it with
    ``JumpLinks(config.jump, config.receiver.public_url)``."""

    jump: JumpConfig
    public_url: str

    @property
    def enabled(self) -> bool:
        return bool(self.jump.links and self.jump.secret and self.public_url)

    def property_of(self, limetype: str) -> str | None:
        """The link property configured for ``limetype`` (None: no link for it)."""
        return self.jump.links.get(limetype) if self.enabled else None

    def url(self, limetype: str, object_id: int) -> str:
        return jump_url(self.public_url, self.jump.secret, limetype, object_id, self.jump.client)

    def values(self, limetype: str, object_id: int) -> dict[str, str]:
        """``{link property: jump address}`` to add to a write of this object, or ``{}``
        when its limetype has no link property configured."""
        prop = self.property_of(limetype)
        return {prop: self.url(limetype, object_id)} if prop else {}
