"""``bfus-lime dlq ...``: failed messages from a terminal."""

from __future__ import annotations

import datetime as dt
import sys

import click
from rich.console import Console
from rich.table import Table

from deadletters.format import age, parse_age, pretty_payload
from deadletters.service import DeadLetters, direction_of
from shared import headers
from shared.exitcodes import FAILURES
from shared.lime import LimeClient
from shared.limeevents import customer_keys
from shared.logrecords import DIRECTIONS, STATUSES, status_of


def _service(ctx: click.Context) -> DeadLetters:
    """The service for this command, on the configuration the command line named
    (``ctx.obj["load"]`` is set by the ``bfus-lime`` group)."""
    config = ctx.obj["load"](("lime.api_key",))
    return DeadLetters(config.broker, LimeClient(config.lime), config.lime.failed_limetype,
                       customer_keys(config.mapping))


def _statuses(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    """``--status``: one or more of the statuses, comma-separated, or ``all``."""
    wanted = tuple(s.strip() for s in value.split(",") if s.strip())
    if wanted == ("all",):
        return STATUSES
    unknown = [s for s in wanted if s not in STATUSES]
    if unknown or not wanted:
        raise click.BadParameter(f"{', '.join(unknown) or 'nothing'} is not one of {', '.join(STATUSES)}, all")
    return wanted


def _age_option(text: str | None) -> dt.timedelta | None:
    try:
        return parse_age(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--older-than") from None


@click.group()
def dlq() -> None:
    """Failed messages: list, show, requeue, discard, reconcile."""


@dlq.command("list")
@click.option("--reason", help="e.g. mapping_error, missing_related, lime_rejected, invalid_envelope")
@click.option("--objecttype")
@click.option("--customerno")
@click.option("--older-than", help="e.g. 2d, 12h, 30m")
@click.option("--status", default="failed", show_default=True, callback=_statuses,
              help=f"{', '.join(STATUSES)} or all; several comma-separated")
@click.option("--direction", type=click.Choice(DIRECTIONS),
              help="from_bfus (BFUS -> Lime, also records without a direction) or to_bfus (Lime -> BFUS)")
@click.pass_context
def list_(ctx: click.Context, reason: str | None, objecttype: str | None, customerno: str | None,
          older_than: str | None, status: tuple[str, ...], direction: str | None) -> None:
    """Failed messages, oldest first, with how many dead letters each has in the queue."""
    service = _service(ctx)
    records = service.records(status, reason, objecttype, customerno, _age_option(older_than), direction)
    in_queue: dict[int, int] = {}
    for letter in service.letters():
        if letter.record_id is not None:
            in_queue[letter.record_id] = in_queue.get(letter.record_id, 0) + 1
    table = Table(title=f"{len(records)} message(s), status {','.join(status)}"
                  + (f", direction {direction}" if direction else ""))
    for column in ("id", "message", "direction", "objecttype", "key", "customer", "reason", "attempts", "status",
                   "age", "queued"):
        table.add_column(column, justify="right" if column in ("id", "message", "attempts", "queued") else "left")
    for r in records:
        table.add_row(str(r["_id"]), str(r.get("messageid") or "-"), direction_of(r), r.get("objecttype") or "-",
                      r.get("key") or "-", r.get("customerno") or "-", r.get("reason") or "-",
                      str(r.get("attempts") or 0), status_of(r), age(r.get("failedtime")),
                      str(in_queue.get(r["_id"], 0)))
    Console(width=150).print(table)
    counts: dict[str, int] = {}
    directions: dict[str, int] = {}
    for r in records:
        counts[r.get("reason") or "-"] = counts.get(r.get("reason") or "-", 0) + 1
        directions[direction_of(r)] = directions.get(direction_of(r), 0) + 1
    if counts:
        click.echo("by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        click.echo("by direction: " + ", ".join(f"{d} {directions.get(d, 0)}" for d in DIRECTIONS))


@dlq.command()
@click.argument("record_id", type=int)
@click.pass_context
def show(ctx: click.Context, record_id: int) -> None:
    """One failed message in full: what failed, why, and the message itself."""
    from shared.lime import LimeRejected

    service = _service(ctx)
    try:
        record = service.record(record_id)
    except LimeRejected as err:
        click.echo(f"bfus-lime dlq show: no failed-message record {record_id} ({err.message})", err=True)
        sys.exit(FAILURES)
    letters = [letter for letter in service.letters() if letter.record_id == record_id]
    click.echo(f"failed-message record {record_id} in Lime ({service.limetype})")
    click.echo(f"  {'direction:':<15} {direction_of(record)}")
    for name in ("messageid", "objecttype", "operation", "key", "customerno", "bfustimestamp", "failedtime",
                 "reason", "attempts"):
        click.echo(f"  {name + ':':<15} {record.get(name) if record.get(name) not in (None, '') else '-'}")
    click.echo(f"  {'status:':<15} {status_of(record)}" +
               (f" ({record['resolution']})" if record.get("resolution") else ""))
    if record.get("processedmessage"):
        click.echo(f"  {'processed as:':<15} record {record['processedmessage']}")
    click.echo(f"  {'error:':<15} {record.get('error')}")
    click.echo(f"dead letters in the queue: {len(letters)}")
    for letter in letters:
        click.echo(f"  from {letter.headers.get(headers.SOURCE_QUEUE, '-')}, failed at "
                   f"{letter.headers.get(headers.FAILED_AT, '-')}, attempts {letter.headers.get(headers.ATTEMPTS)}")
    click.echo("payload:")
    click.echo(pretty_payload(record.get("payload") or ""))


@dlq.command()
@click.argument("record_ids", type=int, nargs=-1)
@click.option("--reason", help="Every failed message with this reason.")
@click.option("--direction", type=click.Choice(DIRECTIONS), help="Every failed message in this direction.")
@click.option("--all", "all_", is_flag=True, help="Every failed message.")
@click.pass_context
def requeue(ctx: click.Context, record_ids: tuple[int, ...], reason: str | None, direction: str | None,
            all_: bool) -> None:
    """Send failed messages back to their partitions (oldest BFUS id first). --reason and
    --direction together: the failed messages with both."""
    if not (record_ids or reason or direction or all_):
        raise click.UsageError("name record ids, or --reason R, or --direction D, or --all")
    actions = _service(ctx).requeue(record_ids or None, reason, direction)
    for action in actions:
        click.echo(str(action))
    requeued = sum(1 for a in actions if a.what.startswith("requeued"))
    if not actions:
        click.echo("no failed message" + (f" with reason {reason}" if reason else "")
                   + (f" in direction {direction}" if direction else "") + ": nothing to requeue")
        return
    click.echo(f"{requeued} requeued")
    if requeued < len(actions):
        sys.exit(FAILURES)


@dlq.command()
@click.argument("record_ids", type=int, nargs=-1, required=True)
@click.option("--why", required=True, help="Kept in Lime with the record.")
@click.pass_context
def discard(ctx: click.Context, record_ids: tuple[int, ...], why: str) -> None:
    """Give up on failed messages: discarded in Lime, gone from the queue."""
    actions = _service(ctx).discard(record_ids, why)
    for action in actions:
        click.echo(str(action))
    discarded = sum(1 for a in actions if a.what == "discarded")
    click.echo(f"{discarded} discarded")
    if discarded < len(actions):
        sys.exit(FAILURES)


@dlq.command()
@click.pass_context
def reconcile(ctx: click.Context) -> None:
    """Repair drift between the dead-letter queue and the records in Lime."""
    fixes = _service(ctx).reconcile()
    for fix in fixes:
        click.echo(str(fix))
    click.echo(f"{len(fixes)} fix(es)" if fixes else "the dead-letter queue and the Lime records agree")
