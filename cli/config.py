"""Loading the configuration for a command: the file the command line names (or
BFUSLIME_CONFIG), environment overrides, validated once; a bad key ends the command
with a message naming it."""

from __future__ import annotations

import sys

import click

from shared.config import Config, ConfigError, load_config
from shared.exitcodes import USAGE
from shared.logs import configure_logging


def load(ctx: click.Context, need: tuple[str, ...] = ()) -> Config:
    """The configuration, with ``need`` (keys such as ``lime.api_key``) required to be set."""
    try:
        config = load_config(ctx.obj["config_path"], need=need)
    except ConfigError as err:
        click.echo(f"bfus-lime: {err}", err=True)
        sys.exit(USAGE)
    configure_logging(config.log.level, config.log.format)
    ctx.obj["config"] = config  # for the messages of cli/failures.py
    return config


def remember_config_path(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """``--config`` given after a subcommand: it counts as if given before."""
    if value is not None:
        ctx.ensure_object(dict)["config_path"] = value


def config_option() -> click.Option:
    return click.Option(["--config", "config_path"], type=click.Path(dir_okay=False), expose_value=False,
                        callback=remember_config_path, is_eager=True,
                        help="Configuration file (TOML); also accepted before the command. Environment: "
                             "BFUSLIME_CONFIG.")
