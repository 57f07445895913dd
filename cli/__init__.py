"""The ``bfus-lime`` command line: the composition root, imported by nothing."""
