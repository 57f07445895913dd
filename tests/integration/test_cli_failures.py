"""Every command against a stopped broker and a stopped Lime: one line naming what
failed and what to do, the documented exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

from sandbox.broker import free_port
from sandbox.stack import BFUS_LIME, config_environment

UNREACHABLE, USAGE = 3, 2


@pytest.fixture(scope="module")
def nothing_running() -> dict[str, str]:
    """A configuration whose broker, Lime and BFUS addresses have nobody listening."""
    broker, lime, bfus = free_port(), free_port(), free_port()
    raw = {"broker": {"url": f"amqp://guest:secret@127.0.0.1:{broker}/%2F"},
           "lime": {"url": f"http://127.0.0.1:{lime}/lime/api/v1/", "api_key": "k"},
           "bfus": {"url": f"http://127.0.0.1:{bfus}/", "token": "t"}, "receiver": {"api_key": "r"}}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BFUSLIME_", "RABBITMQ_URL"))}
    return {**env, **config_environment(raw)}


@pytest.mark.parametrize("args, code, names", [
    (["check-config"], UNREACHABLE, "Lime at http://127.0.0.1:"),
    (["topology"], UNREACHABLE, "RabbitMQ at amqp://guest:***@127.0.0.1:"),
    (["purge-logs", "--older-than", "30"], UNREACHABLE, "Lime at"),
    (["dlq", "list"], UNREACHABLE, "Lime at"),
    (["dlq", "list", "--status", "bogus"], USAGE, "bogus is not one of failed, requeued, resolved, discarded, all"),
    (["dlq", "show", "5"], UNREACHABLE, "Lime at"),
    (["dlq", "requeue", "5"], UNREACHABLE, "Lime at"),
    (["dlq", "discard", "5", "--why", "test"], UNREACHABLE, "RabbitMQ at"),
    (["dlq", "reconcile"], UNREACHABLE, "RabbitMQ at"),
    (["migrate", "--no-broker"], UNREACHABLE, "Lime at"),
    (["topology", "--config", "/no/such/file.toml"], USAGE, "config file /no/such/file.toml: not found"),
])
def test_a_command_says_what_failed_in_one_line(nothing_running: dict[str, str], args: list[str], code: int,
                                                names: str) -> None:
    result = subprocess.run([*BFUS_LIME, *args], env=nothing_running, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    assert names in result.stderr, result.stderr
    assert "secret" not in result.stderr + result.stdout
