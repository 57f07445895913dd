"""How a migration ends early."""


class MigrationError(Exception):
    """The migration cannot run or go on (its message says why)."""


class OptionsMismatch(MigrationError):
    """The checkpoint belongs to a migration run with other options."""


class Stopped(Exception):
    """The migration was asked to stop (Ctrl-C, SIGTERM)."""
