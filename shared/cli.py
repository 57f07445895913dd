"""The ``bfus-lime`` command."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from shared.config import Config, ConfigError, load_config
from shared.logs import configure_logging


def _load(ctx: click.Context, need: tuple[str, ...] = ()) -> Config:
    try:
        config = load_config(ctx.obj["config_path"], need=need)
    except ConfigError as err:
        click.echo(f"bfus-lime: {err}", err=True)
        sys.exit(2)
    configure_logging(config.log.level, config.log.format)
    return config


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    done = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not done.wait(1.0):
        pass


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="BFUSLIME_CONFIG",
              help="Configuration file (TOML). Environment: BFUSLIME_CONFIG.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """BFUS -> Lime CRM integration."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@main.command()
@click.option("--install/--no-install", default=True, help="Install the Debian package when missing (root).")
def broker(install: bool) -> None:
    """Start a private RabbitMQ node, print its URL, run until Ctrl-C."""
    from sandbox.broker import BrokerSetupError, provide_broker

    configure_logging()
    try:
        handle = provide_broker(allow_container=False, install=install)
    except BrokerSetupError as err:
        click.echo(f"bfus-lime broker: {err}", err=True)
        sys.exit(1)
    try:
        click.echo(f"RABBITMQ_URL={handle.url}")
        if handle.management_url:
            click.echo(f"management: {handle.management_url}")
        if handle.node is not None:
            click.echo(f"data folder: {handle.node.base} (removed on exit)")
        sys.stdout.flush()
        if handle.kind == "private":
            _wait_for_signal()
    finally:
        handle.close()


@main.command("sandbox-lime")
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

    config = _load(ctx, need=("lime.api_key",))
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
    standin.stop()


@main.command("sandbox-bfus")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, help="Default: the port of bfus.url.")
@click.option("--db", "db_path", default="bfus-standin.db", show_default=True, type=click.Path(dir_okay=False))
@click.option("--admin-key", default="dev-bfus-admin", show_default=True)
@click.option("--target-url", help="Where the queue posts. Default: the receiver of this configuration.")
@click.option("--seed-customers", type=int, default=0, help="Customers BFUS has before the first change.")
@click.option("--retry-pause", type=float, default=1.0, show_default=True, help="Seconds before posting a refused message again.")
@click.option("--seed", type=int, default=None, help="Random seed for generated data.")
@click.pass_context
def sandbox_bfus(ctx: click.Context, host: str, port: int | None, db_path: str, admin_key: str,
                 target_url: str | None, seed_customers: int, retry_pause: float, seed: int | None) -> None:
    """Run the BFUS stand-in: register, API, and the queue posting to the receiver."""
    from sandbox.bfus.app import BfusSandboxSettings, BfusStandIn

    config = _load(ctx, need=("receiver.api_key", "bfus.token"))
    target = target_url or f"http://{config.receiver.host}:{config.receiver.port}/bfus/messages"
    settings = BfusSandboxSettings(
        db_path=db_path, target_url=target, api_key=config.receiver.api_key, token=config.bfus.token,
        admin_key=admin_key, retry_pause=retry_pause, seed=seed,
    )
    standin = BfusStandIn(settings, host, port or urlsplit(config.bfus.url).port or 80)
    if seed_customers:
        standin.changes.seed_customers(seed_customers)
    standin.start()
    click.echo(f"BFUS stand-in: {standin.url}  (posting to {target}; admin key {admin_key})")
    sys.stdout.flush()
    _wait_for_signal()
    standin.stop()


@main.command()
@click.option("--host", help="Default: receiver.host.")
@click.option("--port", type=int, help="Default: receiver.port.")
@click.pass_context
def receiver(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the receiver under gunicorn."""
    from receiver.server import serve

    config = _load(ctx, need=("receiver.api_key",))
    serve(config, ctx.obj["config_path"], host, port)


@main.command()
@click.option("--name", default="worker", show_default=True, help="Shown in logs and the broker's connection list.")
@click.pass_context
def worker(ctx: click.Context, name: str) -> None:
    """Run a worker until SIGTERM / Ctrl-C."""
    from shared.mapping import MappingSetupError
    from shared.lime import LimeUnavailable
    from worker.main import run_worker

    config = _load(ctx, need=("lime.api_key",))
    try:
        run_worker(config, name)
    except (MappingSetupError, ConfigError) as err:
        click.echo(f"bfus-lime worker: {err}", err=True)
        sys.exit(2)
    except LimeUnavailable as err:
        click.echo(f"bfus-lime worker: Lime is not reachable at {config.lime.url}: {err}", err=True)
        sys.exit(1)


@main.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration and check the mapping against Lime's metadata."""
    from shared.lime import LimeClient, LimeError
    from shared.mapping import MappingSetupError
    from worker.main import check_against_lime

    config = _load(ctx, need=("lime.api_key",))
    click.echo(f"configuration {config.source}: valid")
    try:
        limetypes = LimeClient(config.lime).limetypes()
        mappers = check_against_lime(config, limetypes)
    except LimeError as err:
        click.echo(f"Lime at {config.lime.url}: {err}", err=True)
        sys.exit(1)
    except MappingSetupError as err:
        click.echo(str(err), err=True)
        sys.exit(2)
    for objecttype, mapper in sorted(mappers.items()):
        click.echo(f"  {objecttype} -> {mapper.limetype} by {mapper.key_property}: {len(mapper.fields)} fields")
        fields = ", ".join(f if f == r.property else f"{f}->{r.property}" for f, r in mapper.fields.items())
        click.echo(f"      fields: {fields}")
        for prop, rule in mapper.relations.items():
            click.echo(f"      {prop}: the {rule.objecttype} whose key is {rule.field}")
        sd = mapper.spec.soft_delete
        rule = {"option": f"{sd.property} = {sd.value}", "yesno": f"{sd.property} = yes",
                "date": f"{sd.property} = day deleted", "none": "nothing"}[sd.kind]
        click.echo(f"      deleted in BFUS: {rule}")
    skipped = sorted(t for t, o in config.mapping.objects.items() if not o.sync)
    if skipped:
        click.echo(f"  not synced (logged as skipped_not_configured): {', '.join(skipped)}")
    if config.mapping.exclude_personal_data:
        click.echo("  personal data: left out")
    click.echo("mapping fits Lime")


@main.command()
@click.pass_context
def topology(ctx: click.Context) -> None:
    """Declare the topology (idempotent) and show partitions, owners, consumers and depths."""
    from rich.console import Console
    from rich.table import Table

    from shared.inspect import describe
    from shared.topology import declare_topology

    config = _load(ctx)
    try:
        declare_topology(config.broker)
        views = describe(config.broker, config.broker.management_url or None)
    except Exception as err:
        click.echo(f"bfus-lime topology: RabbitMQ at {_public(config.broker.url)}: {err or type(err).__name__}", err=True)
        sys.exit(1)
    table = Table(title=f"{config.broker.partitions} partitions at {_public(config.broker.url)}")
    for column in ("queue", "owner", "consumers", "ready", "unacked"):
        table.add_column(column, justify="right" if column in ("consumers", "ready", "unacked") else "left")
    for i, view in enumerate(views):
        owner = (view.owner or "free") if i < config.broker.partitions else "-"
        table.add_row(view.name, owner, str(view.consumers), str(view.ready),
                      "?" if view.unacked is None else str(view.unacked))
    Console(width=120).print(table)
    owners = {v.owner for v in views[: config.broker.partitions] if v.owner}
    click.echo(f"workers owning partitions: {len(owners) if '(held)' not in owners else 'unknown (no management_url)'}; "
               f"free partitions: {sum(1 for v in views[: config.broker.partitions] if v.owner is None)}")


def _public(url: str) -> str:
    """A URL without its password."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url


@main.command("purge-logs")
@click.option("--older-than", "days", type=click.IntRange(min=1), required=True, help="Days.")
@click.pass_context
def purge_logs_command(ctx: click.Context, days: int) -> None:
    """Delete old log records in Lime (unresolved failed messages are kept)."""
    from shared.lime import LimeClient
    from shared.retention import purge_logs

    config = _load(ctx, need=("lime.api_key",))
    deleted = [0]

    def tick() -> None:
        deleted[0] += 1
        if deleted[0] % 500 == 0:
            click.echo(f"  {deleted[0]} deleted ...", err=True)

    result = purge_logs(LimeClient(config.lime), config.lime, days, on_delete=tick)
    click.echo(result.summary())


@main.command()
@click.option("--only", type=click.Choice(["active-contract"]), help="Only customers with an active contract "
              "(and only their contracts, facilities and meters).")
@click.option("--objecttypes", help="Comma-separated, e.g. customer,contract. Default: every synced objecttype.")
@click.option("--changed-since", type=click.DateTime(["%Y-%m-%d"]), help="Only objects BFUS changed on or after DATE.")
@click.option("--customer-category", help="Only customers of this category (and their objects).")
@click.option("--limit", type=click.IntRange(min=1), help="At most N customers (and their objects).")
@click.option("--dry-run", is_flag=True, help="Count what would be created, updated, unchanged or failed; write nothing.")
@click.option("--retry-failed", is_flag=True, help="Only the objects that failed in the checkpoint's run.")
@click.option("--fresh", is_flag=True, help="Forget the checkpoint and start over.")
@click.option("--parallel", type=click.IntRange(1, 64), default=4, show_default=True, help="Writes in flight at once.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default="migration-checkpoint.jsonl", show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False), default="migration-report.json",
              show_default=True)
@click.option("--no-broker", is_flag=True, help="Do not hold partitions in RabbitMQ (only when no worker runs).")
@click.pass_context
def migrate(ctx: click.Context, only: str | None, objecttypes: str | None, changed_since: Any,
            customer_category: str | None, limit: int | None, dry_run: bool, retry_failed: bool, fresh: bool,
            parallel: int, checkpoint: str, report_path: str, no_broker: bool) -> None:
    """Fill or overwrite Lime from BFUS (resumable; see docs/migration.md)."""
    from worker.migrate_cli import run_migration

    config = _load(ctx, need=("lime.api_key", "bfus.token"))
    sys.exit(run_migration(config, only, objecttypes, changed_since, customer_category, limit, dry_run,
                           retry_failed, fresh, parallel, Path(checkpoint), Path(report_path), not no_broker))


@main.command()
@click.option("--changes", type=int, default=300, show_default=True, help="Changes the BFUS stand-in makes.")
@click.option("--customers", type=int, default=50, show_default=True, help="Over this many customers.")
@click.option("--rate", type=float, default=20.0, show_default=True, help="Changes per second.")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--until-done", is_flag=True, help="Exit once every change is logged in Lime (exit 1 if any failed).")
@click.option("--workdir", default=".run", show_default=True, type=click.Path(file_okay=False))
def run(changes: int, customers: int, rate: float, workers: int, until_done: bool, workdir: str) -> None:
    """Everything on this machine: broker, stand-ins, receiver, workers, and a stream of changes."""
    from sandbox.run import RunOptions, run_all

    configure_logging()
    sys.exit(run_all(RunOptions(Path(workdir), changes, customers, rate, workers, until_done)))


def _register() -> None:
    from shared.dlq_cli import dlq

    main.add_command(dlq)


_register()

if __name__ == "__main__":
    main()
