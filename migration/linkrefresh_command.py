"""``bfus-lime jump-links [--refresh]``: count, or write, the jump links Lime lacks or
has outdated (migration/linkrefresh.py, docs/jump.md "Backfill")."""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from migration.errors import MigrationError
from migration.linkrefresh import OUTCOMES, LinkRefresh, RefreshOptions, RefreshReport
from shared.config import Config
from shared.exitcodes import DONE, FAILURES, STOPPED, USAGE
from shared.jumplinks import JumpLinks
from shared.lime import CircuitBreaker, LimeClient
from shared.limemeta import check_against_lime, fetch_limetypes
from shared.retry import Backoff

LIME_WAIT = 10.0  # seconds to wait for Lime to answer at the start
PROGRESS_EVERY = 2.0  # seconds between progress lines


@click.command("jump-links")
@click.option("--refresh", is_flag=True, help="Write the missing and outdated links (without it: only count them).")
@click.option("--limetypes", help="Comma-separated, e.g. company,meter. Default: every limetype in jump.links.")
@click.option("--rate", type=click.FloatRange(min=0.1),
              help="Lime calls per second. Default: half of lime.rate_limit, leaving the rest to the workers.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=str(RefreshOptions.checkpoint),
              show_default=True, help="Where a stopped --refresh keeps its place.")
@click.option("--fresh", is_flag=True, help="Forget a stopped run's checkpoint and start over.")
@click.pass_context
def jump_links(ctx: click.Context, refresh: bool, limetypes: str | None, rate: float | None, checkpoint: str,
               fresh: bool) -> None:
    """Find Lime objects whose jump link is missing or outdated; --refresh writes them
    (resumable, rate-limited; docs/jump.md)."""
    config = ctx.obj["load"](("lime.api_key",))
    options = RefreshOptions(tuple(t.strip() for t in (limetypes or "").split(",") if t.strip()), refresh,
                             Path(checkpoint), fresh)
    sys.exit(run_refresh(config, options, rate or config.lime.rate_limit / 2))


def run_refresh(config: Config, options: RefreshOptions, rate: float) -> int:
    """Progress lines and the report on stderr; the exit code (0 done, 1 some links
    Lime refused, 2 usage or configuration, 130 stopped)."""
    console = Console(stderr=True, soft_wrap=True)
    breaker = CircuitBreaker(config.worker.breaker_threshold, config.worker.retry_initial, config.worker.retry_max)
    lime = LimeClient(dataclasses.replace(config.lime, rate_limit=rate), pool_size=2, breaker=breaker)
    mappers = check_against_lime(config, fetch_limetypes(lime, wait=LIME_WAIT))
    stop = threading.Event()
    shown = [0.0]

    def on_page(limetype: str, report: RefreshReport) -> None:
        now = time.monotonic()
        if now - shown[0] >= PROGRESS_EVERY:
            shown[0] = now
            console.print(f"  {limetype}: {sum(report.counts[limetype].values())} checked, {report.to_fix(limetype)} "
                          f"{'fixed' if options.write else 'to fix'} ...")

    try:
        refresh = LinkRefresh(lime, JumpLinks(config.jump, config.receiver.public_url), mappers, options,
                              Backoff(config.worker.retry_initial, config.worker.retry_max), stop, on_page)
    except MigrationError as err:
        console.print(f"bfus-lime jump-links: {err}")
        return USAGE

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        console.print("[yellow]Stopping after the write in flight (Ctrl-C again to quit at once) ...")
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    console.print(f"{'Refreshing' if options.write else 'Checking'} jump links of {', '.join(refresh.limetypes)} "
                  f"at {rate:g} Lime calls/s" + (" (continuing a stopped run)" if _resumable(options) else ""))
    report = refresh.run()
    print_report(report, console)
    if report.stopped:
        console.print(f"Stopped before the end; run the same command again to continue from {options.checkpoint}.")
        return STOPPED
    return FAILURES if report.failures else DONE


def _resumable(options: RefreshOptions) -> bool:
    return options.write and not options.fresh and options.checkpoint.exists()


def print_report(report: RefreshReport, console: Console) -> None:
    table = Table(title="Jump links" + ("" if report.write else " (counted only: run with --refresh to write)"))
    table.add_column("limetype")
    for outcome in OUTCOMES:
        table.add_column(outcome.replace("_", " "), justify="right")
    table.add_column("written", justify="right")
    for limetype, counts in report.counts.items():
        table.add_row(limetype, *(str(counts.get(o, 0)) for o in OUTCOMES), str(report.written[limetype]))
    if report.resumed:
        table.caption = "with the objects the stopped run it continued had checked"
    console.print(table)
    for failure in report.failures[:20]:
        console.print(f"  {failure['limetype']} {failure['id']}: {failure['error']}")
    per_object = f"{report.lime_calls / report.checked:.3f}" if report.checked else "-"
    console.print(f"{report.checked} objects checked in {report.seconds:.1f}s; Lime calls: {report.lime_calls} "
                  f"({per_object} per object checked)")
    to_fix = sum(report.to_fix(lt) for lt in report.counts)
    if not report.write and to_fix:
        console.print(f"{to_fix} links missing or outdated: `bfus-lime jump-links --refresh` writes them.")
