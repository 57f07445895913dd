"""Burst benchmark (issue 14, docs/operations.md "Lime calls"): a backlog drained at the
floor of Lime calls.

For each mode (coalescing and no-op skipping on, then both off), on a fresh stack:

1. BFUS creates its customers, one message each, and the workers put them in Lime
   (their caches now know every company, as after any day of running);
2. Lime goes down; BFUS sends CHANGES updates over those customers, which wait in the
   partitions (the workers stop taking messages while Lime is away);
3. Lime comes back allowing RATE calls a second from this address (429 beyond), with
   the workers' shared budget lime.rate_limit = 0.97 x RATE, and the backlog drains.

Printed per mode: drain time, Lime calls (and 429s), calls per message, the floor
M + C (one log record per message, one write per company whose values really
changed), calls / floor, drain time / (calls / RATE), and the checker's counts (one log
record per message, companies equal to BFUS's newest snapshot).

    python -m bench.burst [--changes 20000] [--customers 2000] [--rate 100] [--prefetch 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import with_broker
from sandbox.bfus.changes import ChangeMix
from sandbox.bfus.store import now
from sandbox.check import CheckReport, check_customers
from sandbox.stack import Stack, wait_for
from shared.lime import LimeClient, option_key
from shared.limemeta import check_against_lime

WORKERS = 2
# lime.rate_limit a little below what Lime allows: two workers pacing exactly R together
# overrun a strict one-second window now and then (docs/operations.md).
BUDGET_SHARE = 0.97


@dataclass
class Result:
    mode: str
    messages: int
    changed: int  # companies whose mapped values the burst really changed (C)
    calls: int  # Lime calls while draining, 429s included
    refused: int  # of them answered 429
    seconds: float
    rate: float
    report: CheckReport

    @property
    def floor(self) -> int:
        return self.messages + self.changed

    def row(self) -> list[str]:
        ideal = self.calls / self.rate
        return [self.mode, f"{self.messages}", f"{self.calls} ({self.refused} x 429)",
                f"{self.calls / self.messages:.3f}", f"{self.floor}", f"{self.calls / self.floor:.3f}",
                f"{self.seconds:.1f} s",
                f"{self.seconds / ideal:.3f}", "yes" if self.report.ok else f"NO: {self.report.summary()}"]


def mapped(stack: Stack, mapper: Any) -> dict[str, dict[str, Any]]:
    """customerno -> the company's mapped values as Lime holds them (no watermark)."""
    props = set(mapper.properties) - {mapper.spec.watermark}
    return {str(c.get(mapper.key_property)): {p: option_key(c.get(p)) for p in props}
            for c in stack.lime_objects(mapper.limetype)}


def run_mode(url: str, workdir: Path, mode: str, on: bool, changes: int, customers: int, rate: float,
             prefetch: int) -> Result:
    stack = Stack(url, workdir / mode, partitions=16, config={
        "lime": {"rate_limit": rate * BUDGET_SHARE},
        "worker": {"prefetch": prefetch, "coalesce": on, "skip_unchanged": on, "retry_max": 2.0,
                   "breaker_threshold": 3}})
    try:
        stack.start(workers=WORKERS)
        today = now().date()
        for _ in range(customers):  # each customer exactly once: every company in the workers' caches
            key = stack.bfus.changes.new_customerno()
            stack.bfus.store.change("customer", "created", key, key, stack.bfus.changes.data.customer(key, today))
        stack.wait_quiet(timeout=customers / rate * 4 + 120)
        mapper = check_against_lime(stack.config, LimeClient(stack.config.lime).limetypes())["customer"]
        before = mapped(stack, mapper)
        print(f"  [{mode}] {customers} customers in Lime; Lime goes down, BFUS sends {changes} changes",
              file=sys.stderr, flush=True)
        stack.lime.stop()
        stack.bfus.changes.make(changes, customers=customers, mix=ChangeMix(update=1.0, delete=0.0))
        wait_for(lambda: stack.bfus.store.queue_status()["pending"] == 0, 900, "BFUS to post the burst")
        stack.lime.faults.configure({"rate_limit": int(rate), "rate_window": 1.0})
        stack.lime.faults.reset_stats()
        started = time.monotonic()
        stack.lime.start()
        total = customers + changes
        wait_for(lambda: stack.logged_count() >= total, changes * 4 / rate + 300, "the backlog to drain")
        seconds = time.monotonic() - started
        stats = stack.lime.faults.stats()
        stack.lime.faults.configure({"rate_limit": 0})
        stack.wait_quiet(timeout=120)
        after = mapped(stack, mapper)
        changed = sum(1 for key, values in after.items() if before.get(key) != values)
        calls = stats["total"] - sum(n for k, n in stats["requests"].items() if k.startswith("GET limetype"))
        print(f"  [{mode}] drained in {seconds:.1f} s", file=sys.stderr, flush=True)
        return Result(mode, changes, changed, calls, stats["answers"].get("429", 0), seconds, rate,
                      check_customers(stack))
    finally:
        stack.stop()


def run(url: str, workdir: Path, changes: int, customers: int, rate: float, prefetch: int) -> None:
    results = [run_mode(url, workdir, "on", True, changes, customers, rate, prefetch),
               run_mode(url, workdir, "off", False, changes, customers, rate, prefetch)]
    header = ["coalescing + no-op skip", "messages M", "Lime calls", "calls/msg", "floor M+C", "calls/floor",
              "drain", "drain/(calls/R)", "one record each, Lime = BFUS"]
    print(f"\nBurst: {changes} changes over {customers} customers queued while Lime was down, then Lime back at "
          f"R = {rate:g} calls/s; {WORKERS} workers sharing lime.rate_limit = {BUDGET_SHARE:g} R, prefetch {prefetch} "
          "per partition")
    print(" | ".join(header))
    for result in results:
        print(" | ".join(result.row()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=20_000)
    parser.add_argument("--customers", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=100.0, help="calls per second Lime allows (R)")
    parser.add_argument("--prefetch", type=int, default=2_000, help="worker.prefetch: the window per partition")
    args = parser.parse_args(argv)
    return with_broker(lambda url, workdir: run(url, workdir, args.changes, args.customers, args.rate, args.prefetch))


if __name__ == "__main__":
    sys.exit(main())
