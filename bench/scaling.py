"""Scaling benchmark: the steady-state rate at which 1, 2 and 4 worker processes apply
a backlog against the Lime stand-in with a fixed latency per request, with Lime calls
per message, CPU, and the resource that limited each point.

What it sends. 1,600 customers, 100 in each of the 16 partitions (customer numbers
picked so that every partition holds as many), created through the BFUS stand-in and
the receiver first: that warm-up leaves each worker's cache knowing its customers'
Lime ids and values. Then, per latency, a backlog of updates is queued in RabbitMQ
while Lime is down, published as the receiver publishes BFUS's messages (faster than
the BFUS stand-in posts, and the posting path is not what is measured). Each update
really changes its customer (a new e-mail address: never skipped as unchanged), and
the customers take turns, so a partition's prefetch window (20) never holds two
messages of one customer (coalescing, on, never folds): the steady stream of updates,
2 Lime calls per message (the write and the log record).

What it measures. Lime comes back with the latency; the first --skip seconds
(breakers closing, prefetch filling) are not counted, the next --window seconds are.
The backlog is more than the slots (below) could apply if Lime's latency were all a
message took, so every partition still has messages waiting when the window ends
(checked; a point whose backlog ran out would be flagged). Each point runs --repeats
times on fresh stacks (new virtual host, new worker processes, new Lime); the table
gives the median and each value.

The limit printed is a judgement from the figures. A worker process applies at most
worker.concurrency messages at once, one per partition, so N = min(workers x
worker.concurrency, partitions) *slots*. "slots busy" is the share of the slots' time
accounted for (Little's law): msg/s x Lime calls per message x latency (the requests
waiting out Lime's latency) plus the CPU the workers and the stand-in used, over N.
The limit is "rate limit" when Lime answered 429; else, with the slots >= 80% busy,
"Lime latency x N slots" (or "partitions" when N is the partition count; "round
trips" when the CPU per request weighs as much as the latency): only more slots go
faster; else "CPU" when the machine (every process on it, the benchmark's neighbours
too) or one process was >= 70% busy: the slots' time not accounted for went to waiting
for a CPU (or for a busy process's GIL).

    python -m bench.scaling [--latency-ms 20,100] [--workers 1,2,4] [--repeats 3]
                            [--window 60] [--skip 15] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika

from bench.measure import lime_calls, process_cpu, with_node
from sandbox.bfus.store import now
from sandbox.broker import BrokerHandle
from sandbox.stack import Stack, wait_for
from shared import headers as h
from shared.topology import Topology

PARTITIONS = 16
PER_PARTITION = 100  # customers; more than worker.prefetch, so no two of one customer are in a window
FIRST_BACKLOG_ID = 10_000_000
SAMPLE_EVERY = 5.0  # seconds between looks inside the window (the steadiness check)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants (the broker: a script and its
    Erlang VM)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(c) for c in task.read_text().split()]
        except OSError:
            pass
    return process_cpu(pid) + sum(tree_cpu(c) for c in children)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every CPU added up."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / tick, sum(values) / tick


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Sample:
    """The counters at one moment of a window."""

    at: float
    logged: int
    calls: int
    throttled: int
    workers_cpu: list[float]
    standin_cpu: float
    broker_cpu: float
    machine: tuple[float, float]


@dataclass
class Point:
    """One measured window. CPU figures are shares of one CPU but ``machine_cpu``."""

    workers: int
    latency_ms: float
    rate: float
    calls_per_message: float
    worker_cpu: float  # all worker processes together
    busiest_worker_cpu: float
    standin_cpu: float  # the benchmark's own process: the Lime stand-in (the receiver and BFUS idle)
    broker_cpu: float
    machine_cpu: float  # share of all CPUs: every process on the machine, the benchmark's neighbours too
    throttled: int
    slots: int
    halves: tuple[float, float]  # msg/s in the window's first and second half
    backlog_left: int  # fewest messages ready in a partition at the window's end
    load: str = ""

    @property
    def drift(self) -> float:
        """How much faster the window's second half went than its first (0: steady)."""
        return (self.halves[1] - self.halves[0]) / self.rate

    @property
    def latency_share(self) -> float:
        """The share of the slots' time spent waiting out Lime's latency (Little's
        law: msg/s x calls per message x latency requests waiting, over the slots)."""
        return self.rate * self.calls_per_message * self.latency_ms / 1000 / self.slots

    @property
    def slots_busy(self) -> float:
        """The share of the slots' time accounted for: Lime's latency plus the CPU the
        workers and the stand-in spent. The rest is waiting for something else (a CPU)."""
        return self.latency_share + (self.worker_cpu + self.standin_cpu) / self.slots

    def limit(self) -> str:
        if self.throttled:
            return f"rate limit ({self.throttled} answers 429)"
        slots = f"{self.slots} {'partitions' if self.slots == PARTITIONS else 'slots'}"
        if self.slots_busy >= 0.8:
            what = "latency" if self.latency_share >= 0.75 else "round trips"
            return f"Lime {what} x {slots}"
        # A fifth or more of the slots' time went neither to Lime's latency nor to CPU:
        # waiting, on a busy machine for a CPU, in a busy process for its GIL.
        if self.machine_cpu >= 0.7:
            return f"CPU (machine {self.machine_cpu:.0%} busy)"
        busiest = max(self.busiest_worker_cpu, self.standin_cpu)
        if busiest >= 0.7:
            who = "the stand-in" if self.standin_cpu == busiest else "a worker"
            return f"CPU ({who} at {busiest:.0%} of one CPU)"
        return f"not found ({slots} {self.slots_busy:.0%} busy, CPU free)"


class Bench:
    """A stack with ``workers`` worker processes sharing the partitions, and its
    customers created (the warm-up)."""

    def __init__(self, url: str, management_url: str, workdir: Path, workers: int, concurrency: int,
                 broker_pid: int | None):
        self.workers = workers
        self.broker_pid = broker_pid
        self.concurrency = concurrency
        self.stack = Stack(url, workdir, partitions=PARTITIONS, management_url=management_url,
                           config={"lime": {"rate_limit": 100_000.0}, "worker": {"concurrency": concurrency}})
        self.topology = Topology.from_config(self.stack.config.broker)
        self.customers: list[tuple[str, dict[str, Any]]] = []  # (customerno, its BFUS data), partitions in turn
        self.message_id = FIRST_BACKLOG_ID  # the last one queued; BFUS's ids of the warm-up are far below

    def start(self) -> None:
        stack = self.stack
        stack.start(workers=0)
        self.children = [stack.spawn_worker(f"bench-{i + 1}") for i in range(self.workers)]
        fair = -(-PARTITIONS // self.workers)

        def spread() -> bool:
            owners = list(stack.owners().values())
            return None not in owners and len(set(owners)) == self.workers and max(map(owners.count, owners)) <= fair

        wait_for(spread, 120, "partitions spread over the workers")
        buckets: list[list[str]] = [[] for _ in range(PARTITIONS)]
        while min(map(len, buckets)) < PER_PARTITION:
            customerno = stack.bfus.changes.new_customerno()
            bucket = buckets[self.topology.partition_of(customerno)]
            if len(bucket) < PER_PARTITION:
                bucket.append(customerno)
        today = now().date()
        for i in range(PER_PARTITION):
            for bucket in buckets:
                data = stack.bfus.changes.data.customer(bucket[i], today)
                stack.bfus.store.change("customer", "created", bucket[i], bucket[i], data)
                self.customers.append((bucket[i], data))
        stack.wait_logged(len(self.customers), 600)

    def stop(self) -> None:
        self.stack.stop()

    def queue_backlog(self, messages: int) -> None:
        """``messages`` updates queued in RabbitMQ, none taken: Lime is down, so the
        workers' breakers open and their partitions' channels close. They are published
        as the receiver publishes BFUS's messages (a thousand a second or more, where
        the BFUS stand-in posts a few hundred), so every point can have a backlog its
        Lime bound could not drain within the window."""
        stack = self.stack
        stack.lime.faults.configure({"down": True, "latency_ms": 0})
        if self.message_id > FIRST_BACKLOG_ID:  # what an earlier window left
            deadline = time.monotonic() + 60
            while self._consumers() and time.monotonic() < deadline:  # busy lanes: their breakers open at once
                time.sleep(0.2)
            self._purge()
        stamp = now().isoformat(timespec="milliseconds")
        connection = pika.BlockingConnection(pika.URLParameters(stack.config.broker.url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            for _ in range(messages):
                customerno, data = self.customers[(self.message_id - FIRST_BACKLOG_ID) % len(self.customers)]
                self.message_id += 1
                data["email"] = f"kund.{self.message_id}@example.se"  # a real change, every time
                data["changeddate"] = stamp[:10]
                body = json.dumps({"id": self.message_id, "timestamp": stamp, "objecttype": "customer",
                                   "operation": "updated", "key": customerno, "customerno": customerno,
                                   "data": data}, ensure_ascii=False).encode()
                properties = pika.BasicProperties(
                    content_type="application/json", delivery_mode=pika.DeliveryMode.Persistent,
                    message_id=str(self.message_id), headers={h.ID: self.message_id, h.OBJECTTYPE: "customer"})
                channel.basic_publish(self.topology.exchange, self.topology.route(customerno), body, properties,
                                      mandatory=True)
        finally:
            connection.close()

    def measure(self, latency_ms: float, skip: float, window: float) -> Point:
        stack = self.stack
        stack.lime.faults.reset_stats()
        stack.lime.faults.configure({"down": False, "latency_ms": latency_ms})
        started = time.monotonic()
        samples = []
        for offset in [skip + k * SAMPLE_EVERY for k in range(int(window / SAMPLE_EVERY) + 1)]:
            time.sleep(max(0.0, started + offset - time.monotonic()))
            samples.append(self._sample())
        left = min(self._depths())
        first, last, middle = samples[0], samples[-1], samples[len(samples) // 2]
        seconds = last.at - first.at
        messages = last.logged - first.logged
        workers_cpu = [b - a for a, b in zip(first.workers_cpu, last.workers_cpu, strict=True)]
        return Point(
            workers=self.workers,
            latency_ms=latency_ms,
            rate=messages / seconds,
            calls_per_message=(last.calls - first.calls) / max(1, messages),
            worker_cpu=sum(workers_cpu) / seconds,
            busiest_worker_cpu=max(workers_cpu) / seconds,
            standin_cpu=(last.standin_cpu - first.standin_cpu) / seconds,
            broker_cpu=(last.broker_cpu - first.broker_cpu) / seconds,
            machine_cpu=(last.machine[0] - first.machine[0]) / (last.machine[1] - first.machine[1]),
            throttled=last.throttled - first.throttled,
            slots=min(self.workers * self.concurrency, PARTITIONS),
            halves=((middle.logged - first.logged) / (middle.at - first.at),
                    (last.logged - middle.logged) / (last.at - middle.at)),
            backlog_left=left,
        )

    def _sample(self) -> Sample:
        stack = self.stack
        stats = stack.lime.faults.stats()
        return Sample(
            at=time.monotonic(),
            logged=stack.logged_count(),
            calls=lime_calls(stack),
            throttled=stats["answers"].get("429", 0),
            workers_cpu=[process_cpu(c.process.pid) for c in self.children],
            standin_cpu=process_cpu(os.getpid()),
            broker_cpu=tree_cpu(self.broker_pid) if self.broker_pid else float("nan"),
            machine=machine_cpu(),
        )

    def _queues(self, look: Any) -> list[Any]:
        connection = pika.BlockingConnection(pika.URLParameters(self.stack.config.broker.url))
        try:
            channel = connection.channel()
            return [look(channel, q) for q in self.topology.partition_queues]
        finally:
            connection.close()

    def _depths(self) -> list[int]:
        return self._queues(lambda ch, q: ch.queue_declare(q, passive=True).method.message_count)

    def _consumers(self) -> int:
        return sum(self._queues(lambda ch, q: ch.queue_declare(q, passive=True).method.consumer_count))

    def _purge(self) -> None:
        self._queues(lambda ch, q: ch.queue_purge(q))


@dataclass
class Table:
    """Every window measured, by (workers, latency)."""

    points: dict[tuple[int, float], list[Point]] = field(default_factory=dict)

    def add(self, point: Point) -> None:
        self.points.setdefault((point.workers, point.latency_ms), []).append(point)

    def median(self, workers: int, latency: float) -> Point:
        """The window with the median rate (its other figures with it)."""
        runs = sorted(self.points[(workers, latency)], key=lambda p: p.rate)
        return runs[len(runs) // 2]


def run(broker: BrokerHandle, workdir: Path, latencies: list[float], counts: list[int], repeats: int,
        skip: float, window: float, concurrency: int) -> Table:
    table = Table()
    broker_pid = broker.node.process.pid if broker.node is not None and broker.node.process is not None else None
    for repeat in range(1, repeats + 1):
        for n in counts:
            url, folder = broker.create_vhost(), workdir / f"run{repeat}-workers{n}"
            bench = Bench(url, broker.management_url or "", folder, n, concurrency, broker_pid)
            try:
                bench.start()
                for latency in latencies:
                    # More than the slots could apply if Lime's latency were all a message took
                    # (2 calls each), with every lane's prefetch on top.
                    bound = min(n * concurrency, PARTITIONS) / (2 * latency / 1000)
                    backlog = int(bound * (skip + window + 5)) + 2 * PARTITIONS * bench.stack.config.worker.prefetch
                    queued = time.monotonic()
                    bench.queue_backlog(backlog)
                    queued = time.monotonic() - queued
                    point = bench.measure(latency, skip, window)
                    point.load = load_average()
                    table.add(point)
                    print(f"  run {repeat}, {n} worker(s), {latency:g} ms: {point.rate:.1f} msg/s (halves "
                          f"{point.halves[0]:.1f} / {point.halves[1]:.1f}), {backlog} queued in {queued:.0f} s, "
                          f"{point.backlog_left} left in the emptiest partition; load {point.load}",
                          file=sys.stderr, flush=True)
            finally:
                bench.stop()
                broker.delete_vhost(url)
                shutil.rmtree(folder, ignore_errors=True)
    return table


def report(table: Table, latencies: list[float], counts: list[int], args: argparse.Namespace) -> None:
    print(f"\nScaling in steady state on {os.cpu_count()} CPUs: {PARTITIONS} partitions x {PER_PARTITION} "
          f"customers, worker.concurrency {args.concurrency}; updates that each change their customer (nothing "
          f"coalesced or skipped as unchanged); {args.window:g} s windows after {args.skip:g} s, median of "
          f"{args.repeats} runs")
    for latency in latencies:
        base = table.median(counts[0], latency).rate
        print(f"\nLime latency {latency:g} ms per request")
        print(f"{'workers':>7}  {'msg/s':>6}  {'runs':<17}  {'vs ' + str(counts[0]):>5}  {'calls/msg':>9}  "
              f"{'drift':>5}  {'CPU workers':>11}  {'stand-in':>8}  {'broker':>6}  {'machine':>7}  "
              f"{'slots busy':>10}  limit")
        for n in counts:
            runs = [p.rate for p in table.points[(n, latency)]]
            p = table.median(n, latency)
            flag = " (backlog ran out)" if any(q.backlog_left == 0 for q in table.points[(n, latency)]) else ""
            print(f"{n:>7}  {statistics.median(runs):>6.1f}  {' '.join(f'{r:.1f}' for r in runs):<17}  "
                  f"{p.rate / base:>4.2f}x  {p.calls_per_message:>9.2f}  {p.drift:>+5.0%}  {p.worker_cpu:>11.0%}  "
                  f"{p.standin_cpu:>8.0%}  {p.broker_cpu:>6.0%}  {p.machine_cpu:>7.0%}  {p.slots_busy:>10.0%}  "
                  f"{p.limit()}{flag}")
    print("\nEach row is the median run's, but msg/s and runs. drift: the window's second half's rate less its "
          "first half's, over the rate. CPU: share of one CPU (all worker processes together; the stand-in is "
          "the benchmark's process, serving Lime; the broker is the RabbitMQ node) but machine: share of all "
          "CPUs, every process on the machine, the benchmark's neighbours too. slots busy: (msg/s x calls/msg x "
          "latency + the workers' and the stand-in's CPU) / slots, slots = min(workers x worker.concurrency, "
          "partitions).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", default="20,100")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--skip", type=float, default=15.0, help="seconds not measured after Lime is back")
    parser.add_argument("--concurrency", type=int, default=4, help="worker.concurrency")
    args = parser.parse_args(argv)
    latencies = [float(x) for x in args.latency_ms.split(",")]
    counts = [int(n) for n in args.workers.split(",")]
    started, load = time.monotonic(), load_average()

    def body(broker: BrokerHandle, workdir: Path) -> None:
        table = run(broker, workdir, latencies, counts, args.repeats, args.skip, args.window, args.concurrency)
        report(table, latencies, counts, args)

    with_node(body)
    print(f"\nWall time {time.monotonic() - started:.0f} s; load average (1, 5, 15 min) before {load}, "
          f"after {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
