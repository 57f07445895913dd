"""What the jump tests share (docs/jump.md): a stack with the jump on, and the `synced`
fixture, a whole stack whose worker synced BFUS's objects (and their links) to Lime.
A test module uses the fixture by importing it (``from jumpstack import synced as
synced``: the explicit re-export tells the linter the import is meant)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pytest

from sandbox.bfus.changes import ChangeMix
from sandbox.stack import Stack

SECRET = "jump-secret-for-the-tests"


class BookmarkServer(Protocol):
    """A BFUS answering bookmarks: its API address and its user-interface base."""

    @property
    def url(self) -> str: ...

    @property
    def ui_url(self) -> str: ...


def jump_stack(make_stack: Callable[..., Stack], bfus: BookmarkServer | None = None, start: bool = True,
               **jump: Any) -> Stack:
    """A stack with the jump on (links written to Lime), its receiver started; BFUS is
    ``bfus`` when given, else the stack's stand-in."""
    config: dict[str, Any] = {"jump": {"secret": SECRET, **jump}}
    if bfus is not None:
        config["bfus"] = {"url": bfus.url, "ui_url": bfus.ui_url}
    stack = make_stack(partitions=2, config=config, jump=True)
    if start:
        stack.start_receiver()
    return stack


@pytest.fixture
def synced(make_stack: Callable[..., Stack]) -> Stack:
    """The whole stack with jump on: BFUS's customers, contracts, facilities and meters
    synced to Lime by a worker (none deleted: BFUS makes no bookmark of a deleted one)."""
    stack = jump_stack(make_stack, start=False)
    stack.start(workers=1)
    stack.bfus.changes.make(60, customers=5, mix=ChangeMix(update=1.0, delete=0.0),
                            objecttypes=("customer", "contract", "facility", "meter"))
    stack.wait_quiet()
    return stack
