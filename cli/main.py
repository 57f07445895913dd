"""The ``bfus-lime`` command: the composition root. It wires the components together
from the configuration and is imported by nothing."""

from __future__ import annotations

from functools import partial
from typing import Any

import click

from cli import operations, outbound, services
from cli.config import config_option, load
from cli.failures import explain
from deadletters.commands import dlq
from migration.command import migrate
from migration.linkrefresh_command import jump_links
from shared.exitcodes import STOPPED


class Commands(click.Group):
    """The group: every expected failure of a command ends as one line and an exit
    code (cli/failures.py), never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("bfus-lime: stopped", err=True)
            ctx.exit(STOPPED)
        except Exception as err:
            explained = explain(err, (ctx.obj or {}).get("config"))
            if explained is None:
                raise
            message, code = explained
            click.echo(f"bfus-lime {ctx.invoked_subcommand or ''}: {message}".replace(" :", ":"), err=True)
            ctx.exit(code)


@click.group(cls=Commands)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="BFUSLIME_CONFIG",
              help="Configuration file (TOML); also accepted after the command. Environment: BFUSLIME_CONFIG.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """BFUS -> Lime CRM integration."""
    obj = ctx.ensure_object(dict)
    obj.setdefault("config_path", config_path)  # a --config after the command was read first
    obj["load"] = partial(load, ctx)  # for commands that live with their component (dlq, migrate)


def _accept_config(command: click.Command) -> None:
    command.params.append(config_option())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_config(sub)


for command in (*services.COMMANDS, *operations.COMMANDS, *outbound.COMMANDS, migrate, jump_links, dlq):
    _accept_config(command)
    main.add_command(command)
