"""The long-running services: each runs until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from cli.config import load
from shared.logs import configure_logging


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    done = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not done.wait(1.0):
        pass


@click.command()
@click.option("--install/--no-install", default=True, help="Install the Debian package when missing (root).")
@click.option("--nodes", type=click.IntRange(min=1, max=9), default=1, show_default=True,
              help="Nodes: more than one makes a private cluster.")
def broker(install: bool, nodes: int) -> None:
    """Start a private RabbitMQ node (or cluster), print its URLs, run until Ctrl-C."""
    from sandbox.broker import BrokerSetupError, provide_broker

    configure_logging()
    try:
        handle = provide_broker(allow_container=False, install=install, nodes=nodes)
    except BrokerSetupError as err:
        click.echo(f"bfus-lime broker: {err}", err=True)
        sys.exit(1)
    try:
        click.echo(f"RABBITMQ_URL={handle.url}")
        if handle.management_url:
            click.echo(f"management: {handle.management_url}")
        for node in [handle.node] if handle.node else handle.cluster.nodes if handle.cluster else []:
            if handle.cluster is not None:
                click.echo(f"node {node.nodename}: {node.url}")
            click.echo(f"data folder: {node.base} (removed on exit)")
        if handle.cluster is not None:
            click.echo("set broker.quorum_size = 3 (BFUSLIME_BROKER__QUORUM_SIZE=3) for three replicas of each queue")
        sys.stdout.flush()
        if handle.kind.startswith("private"):
            _wait_for_signal()
    finally:
        handle.close()


@click.command("sandbox-lime")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, help="Default: the port of lime.url.")
@click.option("--db", "db_path", default="lime-standin.db", show_default=True, type=click.Path(dir_okay=False))
@click.option("--schema", "schema_path", type=click.Path(exists=True, dir_okay=False), help="Limetypes (TOML).")
@click.option("--admin-key", default="dev-lime-admin", show_default=True)
@click.option("--latency-ms", type=float, default=0.0, help="Added to every API request.")
@click.option("--error-rate", type=float, default=0.0, help="Share of requests answered 500.")
@click.option("--rate-limit", type=int, default=0, help="Requests per --rate-window per client; 0 = off.")
@click.option("--rate-window", type=float, default=300.0, show_default=True)
@click.option("--max-limit", type=int, default=50, show_default=True, help="Largest _limit a list returns.")
@click.pass_context
def sandbox_lime(ctx: click.Context, host: str, port: int | None, db_path: str, schema_path: str | None,
                 admin_key: str, latency_ms: float, error_rate: float, rate_limit: int, rate_window: float,
                 max_limit: int) -> None:
    """Run the Lime CRM stand-in (API key and address from lime.api_key / lime.url)."""
    from sandbox.lime.app import LimeSandboxSettings, LimeStandIn
    from sandbox.lime.faults import Faults

    config = load(ctx, need=("lime.api_key",))
    url = urlsplit(config.lime.url)
    application = url.path.strip("/").split("/")[0] or "lime"
    settings = LimeSandboxSettings(
        db_path=db_path, schema_path=schema_path, api_keys=(config.lime.api_key,), admin_key=admin_key,
        application=application, max_limit=max_limit,
        faults=Faults(latency_ms=latency_ms, error_rate=error_rate, rate_limit=rate_limit, rate_window=rate_window),
    )
    standin = LimeStandIn(settings, host, port or url.port or 80).start()
    click.echo(f"Lime stand-in: {standin.api_url}  (X-API-Key: {config.lime.api_key}; admin: {admin_key})")
    sys.stdout.flush()
    _wait_for_signal()
    standin.close()


@click.command("sandbox-bfus")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, help="Default: the port of bfus.url.")
@click.option("--db", "db_path", default="bfus-standin.db", show_default=True, type=click.Path(dir_okay=False))
@click.option("--admin-key", default="dev-bfus-admin", show_default=True)
@click.option("--target-url", help="Where the queue posts. Default: the receiver of this configuration.")
@click.option("--seed-customers", type=int, default=0, help="Customers BFUS has before the first change.")
@click.option("--retry-pause", type=float, default=1.0, show_default=True,
              help="Seconds before posting a refused message again.")
@click.option("--seed", type=int, default=None, help="Random seed for generated data.")
@click.pass_context
def sandbox_bfus(ctx: click.Context, host: str, port: int | None, db_path: str, admin_key: str,
                 target_url: str | None, seed_customers: int, retry_pause: float, seed: int | None) -> None:
    """Run the BFUS stand-in: register, API, and the queue posting to the receiver."""
    from sandbox.bfus.app import BfusSandboxSettings, BfusStandIn

    config = load(ctx, need=("receiver.api_key", "bfus.token"))
    target = target_url or f"http://{config.receiver.host}:{config.receiver.port}/bfus/messages"
    settings = BfusSandboxSettings(
        db_path=db_path, target_url=target, api_key=config.receiver.api_key, token=config.bfus.token,
        admin_key=admin_key, retry_pause=retry_pause, seed=seed, ui_url=config.bfus.ui_url or None,
    )
    standin = BfusStandIn(settings, host, port or urlsplit(config.bfus.url).port or 80)
    if seed_customers:
        standin.changes.seed_customers(seed_customers)
    standin.start()
    click.echo(f"BFUS stand-in: {standin.url}  (posting to {target}; admin key {admin_key})")
    sys.stdout.flush()
    _wait_for_signal()
    standin.stop()


@click.command()
@click.option("--host", help="Default: receiver.host.")
@click.option("--port", type=int, help="Default: receiver.port.")
@click.pass_context
def receiver(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the receiver under gunicorn."""
    from receiver.server import serve

    config = load(ctx, need=("receiver.api_key",))
    serve(config, ctx.obj["config_path"], host, port)


@click.command()
@click.option("--name", default="worker", show_default=True, help="Shown in logs and the broker's connection list.")
@click.pass_context
def worker(ctx: click.Context, name: str) -> None:
    """Run a worker until SIGTERM / Ctrl-C."""
    from worker.factory import run_worker

    run_worker(load(ctx, need=("lime.api_key",)), name)


@click.command()
@click.option("--changes", type=int, default=300, show_default=True, help="Changes the BFUS stand-in makes.")
@click.option("--customers", type=int, default=50, show_default=True, help="Over this many customers.")
@click.option("--rate", type=float, default=20.0, show_default=True, help="Changes per second.")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--until-done", is_flag=True, help="Exit once every change is logged in Lime (exit 1 if any failed).")
@click.option("--workdir", default=".run", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed-customers", type=click.IntRange(min=0), default=10, show_default=True,
              help="Customers BFUS had before the integration (with their objects): for a migration to bring over.")
@click.option("--lime-edits", type=click.IntRange(min=0), default=20, show_default=True,
              help="Companies a simulated Lime user edits once the BFUS stream is in (they go to BFUS).")
@click.option("--lime-creates", type=click.IntRange(min=0), default=3, show_default=True,
              help="Companies it registers in Lime marked for BFUS (created there, numbers written back).")
@click.option("--nodes", type=click.IntRange(min=1, max=9), envvar="NODES", default=1, show_default=True,
              help="RabbitMQ nodes: more than one runs a private cluster (env NODES).")
def run(changes: int, customers: int, rate: float, workers: int, until_done: bool, workdir: str,
        seed_customers: int, lime_edits: int, lime_creates: int, nodes: int) -> None:
    """Everything on this machine: broker, stand-ins, receiver, workers, a stream of
    changes from BFUS, then a Lime user's edits going to BFUS."""
    from sandbox.run import RunOptions, run_all

    configure_logging()
    sys.exit(run_all(RunOptions(Path(workdir), changes, customers, rate, workers, until_done, seed_customers,
                                lime_edits, lime_creates, nodes)))


COMMANDS = (broker, sandbox_lime, sandbox_bfus, receiver, worker, run)
