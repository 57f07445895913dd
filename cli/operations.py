"""Operations on a running installation: checking the configuration, the broker's
topology, purging old log records."""

from __future__ import annotations

import click

from cli.config import load
from cli.failures import public


@click.command("check-config")
@click.pass_context
def check_config(ctx: click.Context) -> None:
    """Validate the configuration and check the mapping against Lime's metadata."""
    from shared.lime import LimeClient
    from shared.limemeta import check_against_lime

    config = load(ctx, need=("lime.api_key",))
    click.echo(f"configuration {config.source}: every key valid; checking the mapping against Lime at "
               f"{config.lime.url} ...")
    mappers = check_against_lime(config, LimeClient(config.lime).limetypes())
    for objecttype, mapper in sorted(mappers.items()):
        click.echo(f"  {objecttype} -> {mapper.limetype} by {mapper.key_property}: {len(mapper.fields)} fields")
        fields = ", ".join(f if f == r.property else f"{f}->{r.property}" for f, r in mapper.fields.items())
        click.echo(f"      fields: {fields}")
        for prop, rule in mapper.relations.items():
            click.echo(f"      {prop}: the {rule.objecttype} whose key is {rule.field}")
        sd = mapper.spec.soft_delete
        mark = {"option": f"{sd.property} = {sd.value}", "yesno": f"{sd.property} = yes",
                "date": f"{sd.property} = day deleted", "none": "nothing"}[sd.kind]
        click.echo(f"      deleted in BFUS: {mark}")
    skipped = sorted(t for t, o in config.mapping.objects.items() if not o.sync)
    if skipped:
        click.echo(f"  not synced (logged as skipped_not_configured): {', '.join(skipped)}")
    if config.mapping.exclude_personal_data:
        click.echo("  personal data: left out")
    jump = config.jump
    if jump.enabled:
        links = ", ".join(f"{lt}.{prop}" for lt, prop in sorted(jump.links.items())) or "none written"
        click.echo(f"  jump: on, to bookmarks under {config.bfus.ui_url}; links ({jump.client}): {links}"
                   + ("; previous secret still accepted" if jump.previous_secret else ""))
    else:
        click.echo("  jump: off (no jump.secret)")
    click.echo("mapping fits Lime")


@click.command()
@click.pass_context
def topology(ctx: click.Context) -> None:
    """Declare the topology (idempotent) and show partitions, owners, consumers and depths."""
    from rich.console import Console
    from rich.table import Table

    from shared.inspect import describe
    from shared.topology import declare_topology

    config = load(ctx)
    declare_topology(config.broker)
    views = describe(config.broker, config.broker.management_url or None)
    nodes = ", ".join(public(url) for url in config.broker.urls)
    table = Table(title=f"{config.broker.partitions} partitions at {nodes}")
    replicas = any(view.members for view in views)
    cluster = ("leader", "online", "members") if replicas else ()
    columns = ("queue", "owner", "consumers", "ready", "unacked", *cluster)
    short = _node_names({node for view in views for node in view.members})
    for column in columns:
        table.add_column(column, justify="right" if column in ("consumers", "ready", "unacked", "online") else "left")
    for i, view in enumerate(views):
        owner = (view.owner or "free") if i < config.broker.partitions else "-"
        unacked = "?" if view.unacked is None else str(view.unacked)
        row = [view.name, owner, str(view.consumers), str(view.ready), unacked]
        if replicas:
            members = ", ".join(short[m] + ("" if m in view.online else " (down)") for m in view.members)
            row += [short.get(view.leader or "", view.leader or "-"),
                    f"{len(view.online)}/{len(view.members)}" if view.members else "-", members or "-"]
        table.add_row(*row)
    Console(width=200).print(table)
    for warning in filter(None, (view.replica_warning() for view in views)):
        click.echo(f"warning: {warning}", err=True)
    partitions = views[: config.broker.partitions]
    owners = {v.owner for v in partitions if v.owner and v.owner != "migration"}
    owning = len(owners) if "(held)" not in owners else "unknown (no management_url)"
    migrating = sum(1 for v in partitions if v.owner == "migration")
    click.echo(f"workers owning partitions: {owning}; free partitions: {sum(1 for v in partitions if v.owner is None)}"
               + (f"; held by a running migration: {migrating}" if migrating else ""))


def _node_names(nodes: set[str]) -> dict[str, str]:
    """Node name -> the part that tells the nodes apart: the host (rabbit@mq1 -> mq1),
    or the name before @ when they share one host."""
    hosts = {node.partition("@")[2] for node in nodes}
    distinct = len(hosts) == len(nodes)
    return {node: node.partition("@")[2] if distinct else node.partition("@")[0] for node in nodes}


@click.command("purge-logs")
@click.option("--older-than", "days", type=click.IntRange(min=1), required=True, help="Days.")
@click.pass_context
def purge_logs_command(ctx: click.Context, days: int) -> None:
    """Delete old log records in Lime (unresolved failed messages are kept)."""
    from shared.lime import LimeClient
    from worker.retention import purge_logs

    config = load(ctx, need=("lime.api_key",))
    deleted = [0]

    def tick() -> None:
        deleted[0] += 1
        if deleted[0] % 500 == 0:
            click.echo(f"  {deleted[0]} deleted ...", err=True)

    result = purge_logs(LimeClient(config.lime), config.lime, days, on_delete=tick)
    click.echo(result.summary())


COMMANDS = (check_config, topology, purge_logs_command)
