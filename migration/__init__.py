"""The migration from BFUS to Lime: read, index, write partition by partition,
checkpoint and report (``bfus-lime migrate``)."""
