"""What the benchmarks share: a private broker and a scratch folder to run in, Lime
calls as the stand-in counted them, and percentiles."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from sandbox.broker import BrokerHandle, exit_on_sigterm, provide_broker
from sandbox.stack import Stack
from shared.logs import configure_logging


def with_broker(body: Callable[[str, Path], None]) -> int:
    """``body(amqp_url, workdir)`` on a vhost of a private RabbitMQ node (installed if
    need be) and in a scratch folder, both removed afterwards; the exit code."""
    return with_node(lambda broker, workdir: body(broker.create_vhost(), workdir))


def with_node(body: Callable[[BrokerHandle, Path], None]) -> int:
    """``body(broker, workdir)`` with a private RabbitMQ node (for a benchmark that
    wants a fresh vhost per stack, and the management API) and a scratch folder, both
    removed afterwards; the exit code."""
    exit_on_sigterm()
    configure_logging("error")
    broker = provide_broker(allow_container=False, install=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bfus-lime-bench-") as workdir:
            body(broker, Path(workdir))
    finally:
        broker.close()
    return 0


def lime_calls(stack: Stack) -> int:
    """API calls the Lime stand-in answered, but for metadata reads (start-up checks)."""
    return sum(n for k, n in stack.lime.faults.stats()["requests"].items() if not k.startswith("GET limetype"))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")
