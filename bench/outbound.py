"""Lime -> BFUS benchmark: a simulated Lime user edits synced companies (and creates a
few marked for BFUS) at a steady pace while BFUS's own changes stream in, webhooks on.
Prints the calls each outbound change costs in Lime and in BFUS, the seconds from a
Lime edit to BFUS having it (p50, p99), the cost of one sweep, and that the
integration's own writes came back as nothing.

    python -m bench.outbound [--edits 300] [--creates 20] [--customers 200] [--rate 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import time
from pathlib import Path

from bench.measure import lime_calls, percentile, with_broker
from sandbox.bfus.changes import ChangeMix
from sandbox.bfus.swedish import luhn_digit
from sandbox.stack import Stack
from shared.lime import LimeClient, option_key


def orgno(rng: random.Random) -> str:
    digits = "55" + "".join(str(rng.randrange(10)) for _ in range(7))
    return f"{digits[:6]}-{digits[6:]}{luhn_digit(digits)}"


def run(url: str, workdir: Path, edits: int, creates: int, customers: int, rate: float) -> None:
    stack = Stack(url, workdir, partitions=16, outbound=True, lime_settings={"webhook_retry_base": 1.0},
                  config={"lime": {"rate_limit": 100_000.0}})
    rng = random.Random(3)
    try:
        stack.start(workers=2)
        stack.subscribe_webhooks()
        stack.bfus.changes.make(customers * 2, customers=customers, mix=ChangeMix(update=1.0, delete=0.0))
        stack.wait_quiet(timeout=600)
        lime = LimeClient(stack.config.lime)
        companies = stack.lime_objects("company")
        calls_before, bfus_before = lime_calls(stack), dict(stack.bfus.writes)
        bfus_reads_before = sum(p.sweep.outbound.bfus.calls for p in stack.workers if p.sweep)
        edited: dict[str, float] = {}
        edits_made = edits + creates
        started = time.monotonic()
        for i in range(edits + creates):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            if i % max(1, (edits + creates) // max(1, creates)) == 0 and creates:
                creates -= 1
                lime.create("company", {"name": f"Nya Bolaget {i} AB", "customertype": "company",
                                        "registrationno": orgno(rng), "postaladdress1": "Torget 1",
                                        "postalzipcode": "111 22", "postalcity": "Stockholm", "sendtobfus": True})
                continue
            company = rng.choice(companies)
            phone = f"+46{rng.randrange(10**8, 10**9)}"
            edited[phone] = time.time()
            lime.update("company", company["_id"], {"phone": phone})
        stack.wait_quiet(timeout=600)
        sent = [r for r in stack.log_records()[0] if option_key(r.get("direction")) == "to_bfus"]
        outbound_lime = lime_calls(stack) - calls_before
        bfus_calls = sum(p.sweep.outbound.bfus.calls for p in stack.workers if p.sweep) - bfus_reads_before
        writes = {k: stack.bfus.writes[k] - bfus_before[k] for k in bfus_before}
        latencies = []
        for message in stack.bfus.store.messages():
            phone = json.loads(message.get("data") or "{}").get("phone")
            if phone in edited:
                stamp = dt.datetime.fromisoformat(message["timestamp"]).timestamp()
                latencies.append(stamp - edited.pop(phone))
        inbound_echoes = len(sent)  # each change sent comes back once as a BFUS message (2 Lime calls)
        sweep = stack.workers[0].sweep
        assert sweep is not None
        before = lime_calls(stack)
        sweep.since = None
        sweep.start_point(300)
        queued = sweep.once()
        sweep_calls = lime_calls(stack) - before
        print(f"\nLime -> BFUS, {len(sent)} changes sent ({writes['PUT']} updates, {writes['POST']} creates) "
              f"over {customers} customers, {rate:g} Lime edits/s, webhooks on, 2 workers")
        own = 2 * inbound_echoes + edits_made  # BFUS's echo messages (write + log each), the user's own edits
        print(f"  Lime calls per change sent: {(outbound_lime - own) / len(sent):.2f} "
              f"(plus 2 for BFUS's echo message, applied like any BFUS change)")
        print(f"  BFUS calls per change sent: {bfus_calls / len(sent):.2f} ({bfus_calls} calls)")
        print(f"  Lime edit -> BFUS: p50 {percentile(latencies, 0.5):.3f} s, p99 {percentile(latencies, 0.99):.3f} s, "
              f"max {max(latencies):.3f} s over {len(latencies)} edits (mean {statistics.mean(latencies):.3f})")
        print(f"  one sweep over the last 300 s of changes: {sweep_calls} Lime calls, {queued} events queued")
        print(f"  lost edits: {len(edited)}")
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edits", type=int, default=300)
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=10.0, help="Lime edits per second")
    args = parser.parse_args(argv)
    return with_broker(lambda url, workdir: run(url, workdir, args.edits, args.creates, args.customers, args.rate))

if __name__ == "__main__":
    sys.exit(main())
