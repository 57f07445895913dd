"""The ``bfus-lime`` command: the composition root. It wires the components together
from the configuration and is imported by nothing."""

from __future__ import annotations

from functools import partial

import click

from cli import operations, services
from cli.config import load
from deadletters.commands import dlq
from migration.command import migrate


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="BFUSLIME_CONFIG",
              help="Configuration file (TOML). Environment: BFUSLIME_CONFIG.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """BFUS -> Lime CRM integration."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["load"] = partial(load, ctx)  # for commands that live with their component (dlq, migrate)


for command in (*services.COMMANDS, *operations.COMMANDS, migrate, dlq):
    main.add_command(command)
