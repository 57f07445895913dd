"""Lime -> BFUS from a terminal (docs/lime-to-bfus.md): ``bfus-lime webhooks register |
list | remove`` manages Lime's webhook subscription for this receiver, and
``bfus-lime send-to-bfus --company ID [--dry-run]`` sends one company now."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import click

from cli.config import load
from shared.config import Config
from shared.exitcodes import FAILURES, USAGE
from shared.logs import get_logger

log = get_logger(component="cli")


def _fail(ctx: click.Context, message: str, code: int) -> NoReturn:
    """One line on stderr naming the command, and the exit code."""
    names: list[str] = []
    at: click.Context | None = ctx
    while at is not None and at.parent is not None:  # the command's own names, whatever the program is called
        names.insert(0, at.info_name or "")
        at = at.parent
    click.echo(f"bfus-lime {' '.join(names)}: {message}", err=True)
    ctx.exit(code)


# ----------------------------------------------------------------------------- webhooks


@contextmanager
def _webhook_right(ctx: click.Context) -> Iterator[None]:
    """Lime's 403 for a user without the right to manage webhooks: one line naming it."""
    from shared.subscriptions import WebhookRightMissing

    try:
        yield
    except WebhookRightMissing as err:
        _fail(ctx, str(err), USAGE)


def _target(ctx: click.Context, target_url: str | None, need: tuple[str, ...] = ()) -> tuple[Config, str]:
    """The configuration and the subscription's target: ``--target-url``, else
    ``receiver.public_url`` + ``lime/events``."""
    config = load(ctx, need=("lime.api_key", *need, *(() if target_url else ("receiver.public_url",))))
    return config, target_url or config.receiver.lime_events_url


def _subscriptions(config: Config) -> Any:
    from shared.lime import LimeClient
    from shared.subscriptions import Subscriptions

    return Subscriptions(LimeClient(config.lime))


_target_option = click.option(
    "--target-url", help="Where Lime posts its events. Default: receiver.public_url followed by lime/events.")


@click.group()
def webhooks() -> None:
    """Lime's webhook subscription for this receiver: register, list, remove."""


@webhooks.command()
@_target_option
@click.pass_context
def register(ctx: click.Context, target_url: str | None) -> None:
    """Subscribe the receiver to company events (idempotent: one subscription per target)."""
    from shared.subscriptions import Wanted

    config, target = _target(ctx, target_url, need=("receiver.lime_secret",))
    with _webhook_right(ctx):
        done = _subscriptions(config).register(Wanted(target, config.receiver.lime_secret))
    what = {"created": "created", "updated": f"updated ({', '.join(done.changed)})",
            "unchanged": "already as wanted"}[done.action]
    click.echo(f"subscription {done.subscription_id} for {target}: {what}")
    if done.secret_sent:
        click.echo("  secret: sent again (Lime does not show it, so it cannot be compared)")
    if done.removed:
        click.echo(f"  duplicates removed: {', '.join(map(str, done.removed))}")
    log.info("webhooks_registered", subscription=done.subscription_id, action=done.action,
             changed=list(done.changed), removed=list(done.removed))


@webhooks.command("list")
@_target_option
@click.pass_context
def list_(ctx: click.Context, target_url: str | None) -> None:
    """Every subscription in Lime (never a secret); this receiver's are marked."""
    config = load(ctx, need=("lime.api_key",))
    ours = target_url or config.receiver.lime_events_url
    with _webhook_right(ctx):
        found = _subscriptions(config).listing()
    if not found:
        click.echo("no webhook subscriptions in Lime")
        return
    for sub in found:
        dont = {True: "yes", False: "no", None: "?"}[sub.dont_disable]
        mark = "  <- this receiver" if ours and sub.target_url == ours else ""
        click.echo(f"{sub.id:>6}  {'enabled ' if sub.enabled else 'DISABLED'}  dont_disable={dont:<3}  "
                   f"{sub.target_url}  {','.join(sub.events)}{mark}")
    if ours and sum(1 for s in found if s.target_url == ours) != 1:
        click.echo(f"{sum(1 for s in found if s.target_url == ours)} subscriptions for {ours}: "
                   "`bfus-lime webhooks register` makes it one")


@webhooks.command()
@_target_option
@click.pass_context
def remove(ctx: click.Context, target_url: str | None) -> None:
    """Delete every subscription for the target."""
    config, target = _target(ctx, target_url)
    with _webhook_right(ctx):
        removed = _subscriptions(config).remove(target)
    click.echo(f"removed subscription {', '.join(map(str, removed))} for {target}" if removed
               else f"no subscription for {target}")
    log.info("webhooks_removed", subscriptions=removed)


# ----------------------------------------------------------------------------- send-to-bfus


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def describe_plan(plan: Any, dry_run: bool = True) -> list[str]:
    """The lines that show a plan (worker.outbound.Plan): field: BFUS value -> Lime value."""
    if plan.operation == "create":
        return [f"{'would create' if dry_run else 'creating'} a customer in BFUS with:",
                *(f"  {name}: {_value(value)}" for name, value in sorted(plan.fields.items()))]
    if plan.operation == "update":
        return [f"{'would update' if dry_run else 'updating'} BFUS customer {plan.customerno} "
                "(field: BFUS value -> Lime value):",
                *(f"  {name}: {_value(plan.in_bfus.get(name))} -> {_value(value)}"
                  for name, value in sorted(plan.fields.items()))]
    return [f"nothing to send: {plan.why}"]


@click.command("send-to-bfus")
@click.option("--company", "company_id", type=click.IntRange(min=1), required=True, help="The company's id in Lime.")
@click.option("--dry-run", is_flag=True, help="Only show what would be sent (field: BFUS value -> Lime value).")
@click.pass_context
def send_to_bfus(ctx: click.Context, company_id: int, dry_run: bool) -> None:
    """Send one Lime company to BFUS now: what a person changed, or a new customer."""
    from shared.bfus import BfusClient
    from shared.jumplinks import JumpLinks
    from shared.lime import LimeClient
    from shared.limemeta import check_against_lime
    from shared.logrecords import TO_BFUS
    from worker.apply import PermanentFailure
    from worker.outbound import Outbound
    from worker.records import LogWriter, MessageFacts

    config = load(ctx, need=("lime.api_key", "bfus.token"))
    if not config.outbound.enabled:
        _fail(ctx, "outbound.enabled is false: turn Lime -> BFUS on first (docs/lime-to-bfus.md).", USAGE)
    lime = LimeClient(config.lime)
    mapper = check_against_lime(config, lime.limetypes())["customer"]
    bfus = BfusClient(config.bfus, timeout=(config.lime.connect_timeout, config.lime.read_timeout))
    outbound = Outbound(lime, bfus, mapper, config.outbound.create_when, JumpLinks(config.jump,
                                                                                  config.receiver.public_url))
    outbound.duplicate_wait = 0.0  # a person runs this: BFUS's 409 is reported at once
    try:
        plan = outbound.plan(company_id)
        if not plan.found:
            _fail(ctx, f"{plan.why} (--company {company_id}).", USAGE)
        click.echo(f"{outbound.limetype} {company_id}" + (" (dry run: nothing is written)" if dry_run else ""))
        for line in describe_plan(plan, dry_run):
            click.echo(f"  {line}")
        if dry_run or not plan.operation:
            return
        sent = outbound.carry_out(plan)
        if sent is not None:
            outbound.remember(sent)
    except PermanentFailure as failure:
        _fail(ctx, failure.error, FAILURES)
    if sent is None:  # a creation BFUS refused as a duplicate, made by an earlier try that linked the company
        click.echo("  nothing sent: the company was linked to a BFUS customer meanwhile")
        return
    if sent.operation == "created":
        click.echo(f"created BFUS customer {sent.customerno}; its number is written to the {outbound.limetype} "
                   f"({mapper.key_property})")
    else:
        click.echo(f"updated BFUS customer {sent.customerno}: {', '.join(sorted(sent.fields))}")
    facts = MessageFacts(None, mapper.objecttype, sent.operation, sent.customerno, sent.customerno, None, TO_BFUS)
    records = LogWriter(lime, config.lime, exclude_personal=config.mapping.exclude_personal_data, directions=True)
    record = records.sent(facts, sent, outbound.limetype, company_id)
    click.echo(f"logged in Lime as processed message {record}")
    log.info("sent_to_bfus", by="command", lime_id=company_id, customerno=sent.customerno, operation=sent.operation,
             fields=sorted(sent.fields))


COMMANDS = (webhooks, send_to_bfus)
