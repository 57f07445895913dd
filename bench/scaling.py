"""Scaling benchmark: messages per second applied by 1, 2 and 4 worker processes
against the Lime stand-in with a fixed per-request latency, Lime calls per message,
and the CPU each message costs (worker processes, and the process serving the Lime
stand-in), which shows when the machine rather than Lime's latency is the limit.

For each latency and worker count: a fresh virtual host; the workers start and share
the 16 partitions, then pause (Lime "down") while the BFUS stand-in's updates are
queued in RabbitMQ; Lime comes back and the rate is measured between the first and
the last log record written.

    python -m bench.scaling [--latency-ms 20,100] [--workers 1,2,4] [--messages 3000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

from sandbox.bfus.changes import ChangeMix
from sandbox.broker import exit_on_sigterm, provide_broker
from sandbox.stack import Stack, wait_for
from shared.logs import configure_logging

PARTITIONS = 16


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def measure(broker_url: str, management_url: str, workers: int, messages: int, customers: int,
            latency_ms: float, concurrency: int, workdir: Path) -> dict[str, float]:
    stack = Stack(broker_url, workdir, partitions=PARTITIONS, management_url=management_url,
                  config={"lime": {"rate_limit": 100_000.0}, "worker": {"concurrency": concurrency}})
    try:
        stack.start(workers=0)
        children = [stack.spawn_worker(f"bench-{i + 1}") for i in range(workers)]
        fair = -(-PARTITIONS // workers)

        def spread() -> bool:
            owners = list(stack.owners().values())
            return None not in owners and len(set(owners)) == workers and max(map(owners.count, owners)) <= fair

        wait_for(spread, 120, "partitions spread over the workers")
        stack.lime.faults.configure({"down": True})  # the workers pause; everything waits in RabbitMQ
        stack.bfus.changes.make(messages, customers=customers, mix=ChangeMix(update=1.0, delete=0.0))
        stack.wait_delivered(600)
        stack.lime.faults.reset_stats()
        worker_cpu = sum(cpu_seconds(c.process.pid) for c in children)
        lime_cpu = cpu_seconds(os.getpid())
        stack.lime.faults.configure({"down": False, "latency_ms": latency_ms})
        wait_for(lambda: stack.logged_count() >= messages, 3600, f"{messages} messages applied")
        worker_cpu = sum(cpu_seconds(c.process.pid) for c in children) - worker_cpu
        lime_cpu = cpu_seconds(os.getpid()) - lime_cpu
        processed, _failed = stack.log_records()
        stamps = sorted(dt.datetime.fromisoformat(r["processedtime"]) for r in processed)
        seconds = (stamps[-1] - stamps[0]).total_seconds()
        calls = sum(n for k, n in stack.lime.faults.stats()["requests"].items() if not k.startswith("GET limetype"))
        return {
            "rate": (len(stamps) - 1) / seconds,
            "seconds": seconds,
            "calls_per_message": calls / messages,
            "worker_ms": 1000 * worker_cpu / messages,
            "lime_ms": 1000 * lime_cpu / messages,
        }
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="at the lowest latency; fewer at higher ones")
    parser.add_argument("--customers", type=int, default=600)
    parser.add_argument("--latency-ms", default="20,100")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--concurrency", type=int, default=4, help="worker.concurrency")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    configure_logging("error")
    latencies = [float(x) for x in args.latency_ms.split(",")]
    counts = [int(n) for n in args.workers.split(",")]
    broker = provide_broker(allow_container=False, install=True)
    tables = []
    try:
        for latency in latencies:
            messages = max(600, int(args.messages * min(latencies) / latency))
            rows = []
            for n in counts:
                url = broker.create_vhost()
                with tempfile.TemporaryDirectory(prefix="bfus-lime-bench-") as workdir:
                    result = measure(url, broker.management_url or "", n, messages, args.customers, latency,
                                     args.concurrency, Path(workdir))
                broker.delete_vhost(url)
                rows.append((n, result))
                print(f"  latency {latency:g} ms, {n} worker(s): {result['rate']:.1f} msg/s", file=sys.stderr,
                      flush=True)
            tables.append((latency, messages, rows))
    finally:
        broker.close()
    print(f"\nScaling on {os.cpu_count()} CPUs: updates over {args.customers} customers, {PARTITIONS} partitions, "
          f"worker.concurrency {args.concurrency}")
    for latency, messages, rows in tables:
        base = rows[0][1]["rate"]
        print(f"\nLime latency {latency:g} ms per request, {messages} messages")
        print(f"{'workers':>7}  {'msg/s':>7}  {'vs 1':>5}  {'Lime calls/msg':>14}  {'CPU ms/msg worker':>17}  "
              f"{'CPU ms/msg Lime stand-in':>24}")
        for n, r in rows:
            print(f"{n:>7}  {r['rate']:>7.1f}  {r['rate'] / base:>4.2f}x  {r['calls_per_message']:>14.2f}  "
                  f"{r['worker_ms']:>17.1f}  {r['lime_ms']:>24.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
