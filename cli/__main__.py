"""``python -m cli``: the same as ``bfus-lime``."""

from cli.main import main

main()
