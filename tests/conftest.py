"""Shared fixtures. One real RabbitMQ per test session (RABBITMQ_URL, testcontainers,
or a private node from the Debian package), a fresh virtual host per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from sandbox.broker import BrokerHandle, provide_broker
from sandbox.lime.app import LimeSandboxSettings, LimeStandIn
from sandbox.stack import Stack
from shared.logs import configure_logging

# Hypothesis: a few hundred examples in `make test`; `--hypothesis-profile=long` for a
# longer run. Tests that set max_examples themselves keep it.
settings.register_profile("default", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile("default")


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    configure_logging("warning")


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[BrokerHandle]:
    handle = provide_broker(install=True)
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def amqp_url(rabbitmq: BrokerHandle) -> Iterator[str]:
    url = rabbitmq.create_vhost()
    try:
        yield url
    finally:
        rabbitmq.delete_vhost(url)


@pytest.fixture
def stoppable_broker(rabbitmq: BrokerHandle) -> BrokerHandle:
    """The session broker, for tests that stop and start it."""
    if not rabbitmq.can_stop:
        pytest.skip(f"the {rabbitmq.kind} broker cannot be stopped by tests (only a private node can)")
    return rabbitmq


@pytest.fixture
def lime(tmp_path: Path) -> Iterator[LimeStandIn]:
    standin = LimeStandIn(LimeSandboxSettings(db_path=tmp_path / "lime.db", seed=1)).start()
    try:
        yield standin
    finally:
        standin.close()


@pytest.fixture
def make_stack(amqp_url: str, rabbitmq: BrokerHandle, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        kwargs.setdefault("management_url", rabbitmq.management_url or "")
        stack = Stack(amqp_url, tmp_path / f"stack{len(stacks)}", **kwargs)
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.stop()


@pytest.fixture(scope="session")
def limetypes() -> dict[str, Any]:
    """Lime metadata of the stand-in's default schema, as the Lime client returns it."""
    from sandbox.lime.schema import load_schema

    out = {}
    for name, lt in load_schema().items():
        props = lt.to_json("http://lime.test/lime/api/v1/")["_embedded"]["properties"]
        out[name] = {"name": name, "properties": {p["name"]: p for p in props}}
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    handle = item.funcargs.get("rabbitmq") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(handle, BrokerHandle) and handle.node is not None:
        report.sections.append(("RabbitMQ node log (last lines)", handle.node.tail(80)))
