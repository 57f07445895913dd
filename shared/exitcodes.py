"""The exit codes of every bfus-lime command (README, "Exit codes"), in one place for
the command line and the commands that live with their components."""

DONE = 0
FAILURES = 1  # done, with failures
USAGE = 2  # usage or configuration
UNREACHABLE = 3  # a service (RabbitMQ, Lime, BFUS) unreachable
STOPPED = 130  # Ctrl-C
