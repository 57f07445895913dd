"""``bfus-lime migrate``: the options, progress bars, Ctrl-C, the final report."""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from migration.errors import MigrationError, OptionsMismatch
from migration.report import OUTCOMES, Report
from migration.run import FOLDER, Migration, MigrationOptions
from shared.bfus import BfusClient
from shared.config import Config
from shared.exitcodes import DONE, FAILURES, STOPPED, USAGE
from shared.jumplinks import JumpLinks
from shared.lime import CircuitBreaker, LimeClient
from shared.limemeta import check_against_lime, fetch_limetypes
from shared.metrics import serve


@click.command()
@click.option("--only", type=click.Choice(["active-contract"]), help="Only customers with an active contract "
              "(and only their contracts, facilities and meters).")
@click.option("--objecttypes", help="Comma-separated, e.g. customer,contract. Default: every synced objecttype.")
@click.option("--changed-since", type=click.DateTime(["%Y-%m-%d"]), help="Only objects BFUS changed on or after DATE.")
@click.option("--customer-category", help="Only customers of this category (and their objects).")
@click.option("--limit", type=click.IntRange(min=1), help="At most N customers (and their objects).")
@click.option("--dry-run", is_flag=True,
              help="Count what would be created, updated, unchanged or failed; write nothing.")
@click.option("--retry-failed", is_flag=True, help="Only the objects that failed in the checkpoint's run.")
@click.option("--fresh", is_flag=True, help="Forget the checkpoint and start over.")
@click.option("--parallel", type=click.IntRange(1, 64), default=4, show_default=True, help="Writes in flight at once.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=str(FOLDER / "checkpoint.jsonl"),
              show_default=True)
@click.option("--report", "report_path", type=click.Path(dir_okay=False),
              help=f"Default: {FOLDER / 'report.json'} ({FOLDER / 'report.dry-run.json'} for a dry run).")
@click.option("--no-broker", is_flag=True, help="Do not hold partitions in RabbitMQ (only when no worker runs).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=0,
              help="Serve Prometheus metrics on this port while it runs (docs/operations.md, Metrics); 0 = none.")
@click.pass_context
def migrate(ctx: click.Context, **flags: Any) -> None:
    """Fill or overwrite Lime from BFUS (resumable; see docs/migration.md)."""
    config = ctx.obj["load"](("lime.api_key", "bfus.token"))
    port = flags.pop("metrics_port")
    if port:
        serve(port)
    sys.exit(run_migration(config, options_from_flags(**flags)))


def options_from_flags(only: str | None, objecttypes: str | None, changed_since: dt.datetime | None,
                       customer_category: str | None, limit: int | None, dry_run: bool, retry_failed: bool,
                       fresh: bool, parallel: int, checkpoint: str, report_path: str | None,
                       no_broker: bool) -> MigrationOptions:
    """The command line's flags as the migration's options."""
    return MigrationOptions(
        objecttypes=tuple(t.strip() for t in objecttypes.split(",") if t.strip()) if objecttypes else None,
        only_active_contract=only == "active-contract",
        changed_since=changed_since.date().isoformat() if changed_since else None,
        customer_category=customer_category,
        limit=limit,
        dry_run=dry_run,
        retry_failed=retry_failed,
        fresh=fresh,
        parallel=parallel,
        checkpoint=Path(checkpoint),
        report=Path(report_path) if report_path else FOLDER / ("report.dry-run.json" if dry_run else "report.json"),
        coordinate=not no_broker,
    )


def print_report(report: Report, console: Console) -> None:
    table = Table(title="Migration" + (" (dry run: nothing written)" if report.dry_run else ""))
    table.add_column("objecttype")
    for outcome in OUTCOMES:
        table.add_column(outcome.replace("_", " "), justify="right")
    totals = report.totals()
    for objecttype, counts in totals.items():
        table.add_row(objecttype, *(str(counts.get(o, 0)) for o in OUTCOMES))
    if report.resumed:
        table.caption = f"with {report.resumed} objects done by the earlier runs this one continued"
    console.print(table)
    if not totals:
        console.print(f"Nothing to migrate: BFUS has no objects matching {report.options}.", soft_wrap=True)
    if report.failures:
        console.print(f"[bold red]{len(report.failures)} failed[/] (retry them with --retry-failed once fixed):")
        for failure in report.failures[:20]:
            console.print(f"  {failure['objecttype']} {failure['key']}: {failure['reason']}: {failure['error']}")
        if len(report.failures) > 20:
            console.print(f"  ... and {len(report.failures) - 20} more in the report file")
    per_object = f"{report.lime_calls / report.objects:.3f}" if report.objects else "-"
    console.print(f"{report.objects} objects in {report.seconds:.1f}s; Lime calls: {report.lime_calls} "
                  f"({per_object} per object); BFUS calls: {report.bfus_calls}"
                  + (f"; {report.resumed} already done before this run" if report.resumed else ""))


LIME_WAIT = 10.0  # seconds to wait for Lime to answer at the start


def run_migration(config: Config, options: MigrationOptions) -> int:
    """Run it with progress bars on stderr; the exit code (0 done, 1 failures, 2 usage
    or configuration, 130 stopped). Lime, BFUS or RabbitMQ unreachable raise (the
    command line says so, exit 3)."""
    console = Console(stderr=True, soft_wrap=True)  # lines whole, also in a log file
    breaker = CircuitBreaker(config.worker.breaker_threshold, config.worker.retry_initial, config.worker.retry_max)
    lime = LimeClient(config.lime, pool_size=options.parallel + 2, breaker=breaker)
    mappers = check_against_lime(config, fetch_limetypes(lime, wait=LIME_WAIT))
    columns = (TextColumn("[bold]{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(show_speed=True), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        try:
            stop = threading.Event()
            migration = Migration(config.broker, config.worker, options, lime, BfusClient(config.bfus, stop=stop),
                                  mappers, progress, stop, JumpLinks(config.jump, config.receiver.public_url))
        except MigrationError as err:
            console.print(f"bfus-lime migrate: {err}", soft_wrap=True)
            return USAGE

        def on_signal(signum: int, _frame: Any) -> None:
            if migration.stop.is_set():
                raise KeyboardInterrupt
            console.print("[yellow]Stopping after the writes in flight (Ctrl-C again to quit at once) ...")
            migration.stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            report = migration.run()
        except MigrationError as err:
            console.print(f"bfus-lime migrate: {err}", soft_wrap=True)
            return USAGE if isinstance(err, OptionsMismatch) else FAILURES
    print_report(report, console)
    options.report.parent.mkdir(parents=True, exist_ok=True)
    options.report.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    console.print(f"report written to {options.report}")
    if report.stopped:
        console.print(f"Stopped before the end; run the same command again to continue from {options.checkpoint}.")
        return STOPPED
    return FAILURES if report.failures else DONE


