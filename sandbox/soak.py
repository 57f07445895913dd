"""The soak test: a long stream through the whole integration while things break.

The BFUS stand-in sends N changes over M customers through the receiver while worker
processes run; meanwhile one worker is SIGKILLed and restarted twice, another joins,
the broker is restarted, and the Lime stand-in fails a share of requests, adds
latency spikes and is down for a while. Afterwards the checker proves from the Lime
stand-in's data that every company equals its customer's last snapshot, that every
message id has exactly one log record, that no message was applied after a newer one
of the same object, and that nothing was lost.

    python -m sandbox.soak                      # the full run (make soak)
    python -m sandbox.soak --changes 2000 --customers 300 --outage 5
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox.broker import BrokerHandle, exit_on_sigterm, provide_broker
from sandbox.check import CheckReport, check_customers
from sandbox.lime.faults import Faults
from sandbox.stack import Stack, WorkerChild, wait_for
from shared.logs import configure_logging


@dataclass
class SoakOptions:
    changes: int = 20_000
    customers: int = 2_000
    workers: int = 3
    outage: float = 30.0  # seconds Lime is down
    error_rate: float = 0.05
    spike_rate: float = 0.02
    spike_ms: float = 400.0
    partitions: int = 16
    timeout: float = 1800.0


@dataclass
class SoakResult:
    report: CheckReport
    wall_time: float
    events: list[str] = field(default_factory=list)
    lime_calls: int = 0

    def summary(self) -> str:
        r = self.report
        return "\n".join([
            f"soak: {'PASSED' if r.ok else 'FAILED'} in {self.wall_time:.1f}s",
            f"  messages delivered by BFUS: {r.messages}",
            f"  log records: {r.processed} processed + {r.failed} failed; lost (no record): {len(r.unlogged)}; "
            f"with more than one record: {len(r.logged_twice)}",
            f"  companies checked: {r.objects}; differing from the last snapshot: {len(r.mismatched)}; "
            f"missing: {len(r.missing)}; duplicated: {len(r.duplicated)}",
            f"  applied after a newer message of the same object: {len(r.out_of_order)}",
            f"  Lime calls: {self.lime_calls} ({self.lime_calls / max(1, r.messages):.2f} per message)",
            "  events: " + "; ".join(self.events),
        ])


def _say(text: str) -> None:
    print(text, flush=True)


def run_soak(broker: BrokerHandle, options: SoakOptions, workdir: Path,
             say: Callable[[str], None] = _say) -> SoakResult:
    started = time.monotonic()
    events: list[str] = []

    def event(text: str) -> None:
        events.append(f"{time.monotonic() - started:.0f}s {text}")
        say(f"  [{time.monotonic() - started:6.1f}s] {text}")

    url = broker.create_vhost()
    faults = Faults(error_rate=options.error_rate, spike_rate=options.spike_rate, spike_ms=options.spike_ms)
    stack = Stack(url, workdir, partitions=options.partitions, management_url=broker.management_url or "",
                  config={"lime": {"rate_limit": 5000.0}, "worker": {"retry_max": 2.0, "breaker_threshold": 5}},
                  lime_settings={"faults": faults, "seed": 11}, bfus_retry_pause=0.2)
    try:
        stack.start(workers=0)
        children = [stack.spawn_worker(f"worker-{i + 1}") for i in range(options.workers)]
        for child in children:
            child.wait_log("worker_consuming")
        event(f"{options.workers} workers up; sending {options.changes} changes over {options.customers} customers")
        stack.bfus.feed(options.changes, customers=options.customers)

        def restart_killed(child: WorkerChild) -> None:
            child.process.kill()
            child.process.wait(10)
            event(f"SIGKILLed {child.name}")
            replacement = stack.spawn_worker(child.name + "-again")
            replacement.wait_log("worker_consuming")
            children[children.index(child)] = replacement
            event(f"restarted it as {replacement.name}")

        def join() -> None:
            child = stack.spawn_worker(f"worker-{options.workers + 1}")
            child.wait_log("worker_consuming")
            children.append(child)
            event(f"{child.name} joined")

        def restart_broker() -> None:
            event("restarting RabbitMQ")
            broker.restart()
            event("RabbitMQ back")

        def lime_outage() -> None:
            stack.lime.stop()
            event(f"Lime down for {options.outage:.0f}s")
            time.sleep(options.outage)
            stack.lime.start()
            event("Lime back")

        plan = [(0.10, lambda: restart_killed(children[0])), (0.25, join), (0.40, restart_broker),
                (0.55, lambda: restart_killed(children[1])), (0.70, lime_outage)]
        last_report = 0.0
        deadline = started + options.timeout
        while time.monotonic() < deadline:
            logged = stack.logged_count()
            while plan and logged >= plan[0][0] * options.changes:
                plan.pop(0)[1]()
            if logged >= options.changes and not plan:
                break
            if time.monotonic() - last_report > 10:
                status = stack.bfus.store.queue_status()
                say(f"  [{time.monotonic() - started:6.1f}s] delivered {status['delivered']}/{options.changes}, "
                    f"logged {logged}")
                last_report = time.monotonic()
            time.sleep(0.5)
        wait_for(lambda: stack.logged_count() >= options.changes, 120, f"{options.changes} log records")
        wall = time.monotonic() - started
        stack.lime.faults.configure({"error_rate": 0, "spike_rate": 0})
        report = check_customers(stack)
        return SoakResult(report, wall, events, stack.lime.faults.stats()["total"])
    finally:
        stack.stop()
        broker.delete_vhost(url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SoakOptions()
    parser.add_argument("--changes", type=int, default=defaults.changes)
    parser.add_argument("--customers", type=int, default=defaults.customers)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--outage", type=float, default=defaults.outage, help="seconds Lime is down")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    configure_logging("error")
    options = SoakOptions(changes=args.changes, customers=args.customers, workers=args.workers, outage=args.outage)
    broker = provide_broker(allow_container=False, install=True)
    if broker.node is None:
        print("soak: needs a private RabbitMQ node it may restart (unset RABBITMQ_URL)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bfus-lime-soak-"))
    try:
        result = run_soak(broker, options, workdir)
    finally:
        broker.close()
    print(result.summary())
    if not result.report.ok:
        print(result.report.details(), file=sys.stderr)
        print(f"worker logs kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
