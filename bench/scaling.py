"""Scaling benchmark: messages per second applied by 1, 2 and 4 worker processes
against the Lime stand-in with a fixed per-request latency, and Lime calls per
message.

For each worker count: a fresh virtual host; the BFUS stand-in's changes are first
queued in RabbitMQ (no worker running), then the workers start; the rate is measured
between the first and the last log record written in Lime.

    python -m bench.scaling [--messages 3000] [--latency-ms 20] [--workers 1,2,4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

from sandbox.bfus.changes import ChangeMix
from sandbox.broker import provide_broker
from sandbox.stack import Stack, wait_for
from shared.logs import configure_logging


def measure(broker_url: str, management_url: str, workers: int, messages: int, customers: int,
            latency_ms: float, workdir: Path) -> dict[str, float]:
    stack = Stack(broker_url, workdir, partitions=16, management_url=management_url,
                  config={"lime": {"rate_limit": 100_000.0}, "worker": {"concurrency": 4}})
    try:
        stack.start(workers=0)
        for i in range(workers):
            stack.spawn_worker(f"bench-{i + 1}")
        fair = -(-16 // workers)
        wait_for(lambda: (o := stack.owners()) and None not in o.values() and len(set(o.values())) == workers
                 and max(list(o.values()).count(w) for w in set(o.values())) <= fair, 120, "partitions spread")
        stack.lime.faults.configure({"down": True})  # the workers pause; everything waits in RabbitMQ
        stack.bfus.changes.make(messages, customers=customers, mix=ChangeMix(update=1.0, delete=0.0))
        stack.wait_delivered(600)
        stack.lime.faults.reset_stats()
        stack.lime.faults.configure({"down": False, "latency_ms": latency_ms})
        wait_for(lambda: stack.logged_count() >= messages, 1800, f"{messages} messages applied")
        processed, _failed = stack.log_records()
        stamps = sorted(dt.datetime.fromisoformat(r["processedtime"]) for r in processed)
        seconds = (stamps[-1] - stamps[0]).total_seconds()
        calls = sum(n for k, n in stack.lime.faults.stats()["requests"].items() if not k.startswith("GET limetype"))
        return {"rate": (len(stamps) - 1) / seconds, "seconds": seconds, "calls_per_message": calls / messages}
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--customers", type=int, default=600)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args(argv)
    configure_logging("error")
    counts = [int(n) for n in args.workers.split(",")]
    broker = provide_broker(allow_container=False, install=True)
    rows = []
    try:
        for n in counts:
            url = broker.create_vhost()
            with tempfile.TemporaryDirectory(prefix="bfus-lime-bench-") as workdir:
                started = time.monotonic()
                result = measure(url, broker.management_url or "", n, args.messages, args.customers,
                                 args.latency_ms, Path(workdir))
                result["wall"] = time.monotonic() - started
            broker.delete_vhost(url)
            rows.append((n, result))
            print(f"  {n} worker(s): {result['rate']:.1f} msg/s", file=sys.stderr, flush=True)
    finally:
        broker.close()
    base = rows[0][1]["rate"]
    print(f"\nScaling: {args.messages} updates over {args.customers} customers, 16 partitions, "
          f"Lime latency {args.latency_ms:g} ms per request, worker.concurrency 4")
    print(f"{'workers':>7}  {'msg/s':>8}  {'vs 1':>5}  {'Lime calls/msg':>14}  {'apply time':>10}")
    for n, r in rows:
        print(f"{n:>7}  {r['rate']:>8.1f}  {r['rate'] / base:>4.2f}x  {r['calls_per_message']:>14.2f}  "
              f"{r['seconds']:>9.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
