"""CPU benchmark (issue 14, "CPU per message"): the worker's CPU time per message and
per Lime call, and the Lime stand-in's CPU time per request, measured in one run.

What runs. A stack (4 partitions) with no in-process worker and one worker in a
process of its own (``bfus-lime worker``), with the defaults but worker.concurrency 8
(worker.coalesce and worker.skip_unchanged on). BFUS first creates --customers
customers (the warm-up: the worker's cache then knows each company's Lime id and
values). Then, per round, Lime goes down, BFUS queues a backlog of --messages updates
that each really change their customer (a new e-mail address: never skipped as
unchanged), the customers taking turns so that no partition's prefetch window holds
two messages of one customer (nothing coalesced): the steady stream, 2 Lime calls per
message (the write and the log record). Lime comes back with --latency-ms per request
and the backlog drains; the round is measured from Lime's return to the last log
record.

What it measures. CPU is user + system time (not wall time: the machine may be busy
with others), so a loaded machine stretches the drain but not the figures.

- The worker: its process's CPU (/proc/<pid>/stat) over the drain, less what it
  spends idle over as long (heartbeats, partition checks: measured for --idle seconds
  before the first round, Lime up and nothing queued), per message logged and per
  Lime call answered. Both are printed: a message costs ``calls/msg`` calls (2 here;
  coalescing and no-op skipping lower it elsewhere, and a call's CPU is most of a
  message's).
- The stand-in: it serves from this process (uvicorn's loop thread), so its CPU is this
  process's own (getrusage, every thread) over the drain, less this process's idle
  CPU measured alongside the worker's (the receiver and the BFUS stand-in are idle by
  then; this benchmark polls the log count 5 times a second in both), per request the
  stand-in answered (every request, metadata reads too). Its latency is a sleep: no CPU.

Each figure is the median of --rounds rounds on the same stack. ``--profile DIR``
also runs every thread of the worker process and of this process under cProfile
(figures then include the profiler's overhead: compare them only with other
profiled runs), writes ``worker.prof`` and ``standin.prof`` in DIR and prints their
top functions.

    python -m bench.cpu [--messages 2000] [--customers 200] [--rounds 3] [--latency-ms 20]
                        [--idle 5] [--profile DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import pstats
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import lime_calls, process_cpu, with_broker
from sandbox.bfus.store import now
from sandbox.stack import BFUS_LIME, Stack, config_environment, wait_for
from shared.topology import Topology

POLL = 0.2  # seconds between looks at the log count, in the idle measurement as in a round

# Run ``bfus-lime worker`` with a cProfile profiler in every thread, merged into one
# file when the process exits (cProfile alone sees the main thread only).
PROFILED_WORKER = """
import atexit, cProfile, runpy, sys, threading, time
out = sys.argv.pop(1)
profiles = []
def start(*_):
    p = cProfile.Profile(time.thread_time); profiles.append(p); p.enable()
threading.setprofile(start)
main = cProfile.Profile(time.thread_time); profiles.append(main); main.enable()
def dump():
    import pstats
    for p in profiles:
        p.disable()
    pstats.Stats(*profiles).dump_stats(out)
atexit.register(dump)
sys.argv[0] = "bfus-lime"
runpy.run_module("cli", run_name="__main__")
"""


def own_cpu() -> float:
    """CPU seconds of this process so far, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ThreadProfiles:
    """cProfile in every thread started from now on, and in this one."""

    def __init__(self) -> None:
        import cProfile

        self.profiles: list[Any] = []

        def start(*_: Any) -> None:
            profile = cProfile.Profile(time.thread_time)
            self.profiles.append(profile)
            profile.enable()

        threading.setprofile(start)
        start()

    def dump(self, path: Path) -> None:
        threading.setprofile(None)
        for profile in self.profiles:
            profile.disable()
        pstats.Stats(*self.profiles).dump_stats(str(path))


@dataclass
class Round:
    messages: int
    calls: int  # Lime calls (not metadata reads) answered while draining
    requests: int  # every request the stand-in answered while draining
    seconds: float
    worker_cpu: float  # seconds, the worker's idle CPU over as long taken off
    standin_cpu: float  # seconds, this process's idle CPU over as long taken off
    worker_raw: float
    standin_raw: float

    @property
    def worker_ms_per_message(self) -> float:
        return 1000 * self.worker_cpu / self.messages

    @property
    def worker_ms_per_call(self) -> float:
        return 1000 * self.worker_cpu / self.calls

    @property
    def standin_ms_per_request(self) -> float:
        return 1000 * self.standin_cpu / self.requests


class Bench:
    def __init__(self, url: str, workdir: Path, customers: int, profile: Path | None):
        self.stack = Stack(url, workdir, partitions=4, config={"lime": {"rate_limit": 100_000.0}})
        self.customers_wanted = customers
        self.profile = profile
        self.customers: list[tuple[str, dict[str, Any]]] = []
        self.sequence = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        stack = self.stack
        stack.start(workers=0)
        self.process = self._spawn_worker()
        wait_for(lambda: None not in stack.owners().values(), 120, "the worker to take every partition")
        topology = Topology.from_config(stack.config.broker)
        buckets: list[list[str]] = [[] for _ in range(stack.config.broker.partitions)]
        per = -(-self.customers_wanted // len(buckets))
        while min(map(len, buckets)) < per:
            customerno = stack.bfus.changes.new_customerno()
            bucket = buckets[topology.partition_of(customerno)]
            if len(bucket) < per:
                bucket.append(customerno)
        today = now().date()
        for i in range(per):  # partitions in turn, so each window holds distinct customers
            for bucket in buckets:
                data = stack.bfus.changes.data.customer(bucket[i], today)
                stack.bfus.store.change("customer", "created", bucket[i], bucket[i], data)
                self.customers.append((bucket[i], data))
        stack.wait_logged(len(self.customers), 600)

    def _spawn_worker(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BFUSLIME_", "RABBITMQ_URL"))}
        env.update(config_environment(self.stack.raw))
        args = [*BFUS_LIME, "worker", "--name", "bench-cpu"]
        if self.profile is not None:
            args = [sys.executable, "-c", PROFILED_WORKER, str(self.profile / "worker.prof"), "worker", "--name",
                    "bench-cpu"]
        log = open(self.stack.workdir / "bench-cpu.log", "ab")  # noqa: SIM115 - the child's, closed with it
        return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.stack.stop()

    def idle(self, seconds: float) -> tuple[float, float]:
        """CPU seconds per second of the worker and of this process, nothing to do."""
        worker, own, started = process_cpu(self.pid), own_cpu(), time.monotonic()
        self._poll(lambda: time.monotonic() - started >= seconds)
        elapsed = time.monotonic() - started
        return (process_cpu(self.pid) - worker) / elapsed, (own_cpu() - own) / elapsed

    def _poll(self, done: Callable[[], bool]) -> None:
        while True:
            self.stack.logged_count()  # the same look in the idle measurement as in a round
            if done():
                return
            time.sleep(POLL)

    def round(self, messages: int, latency_ms: float, idle: tuple[float, float]) -> Round:
        stack = self.stack
        stack.lime.faults.configure({"down": True, "latency_ms": 0})
        today = now().date().isoformat()
        for _ in range(messages):
            customerno, data = self.customers[self.sequence % len(self.customers)]
            self.sequence += 1
            data["email"] = f"kund.{self.sequence}@example.se"  # a real change, every time
            data["changeddate"] = today
            stack.bfus.store.change("customer", "updated", customerno, customerno, data)
        stack.wait_delivered(1800)
        target = stack.logged_count() + messages
        time.sleep(1.0)  # the worker's breaker open, its channels closed
        stack.lime.faults.reset_stats()
        worker, own, started = process_cpu(self.pid), own_cpu(), time.monotonic()
        stack.lime.faults.configure({"down": False, "latency_ms": latency_ms})
        self._poll(lambda: stack.logged_count() >= target)
        seconds = time.monotonic() - started
        worker_raw, own_raw = process_cpu(self.pid) - worker, own_cpu() - own
        stats = stack.lime.faults.stats()
        return Round(messages=messages, calls=lime_calls(stack), requests=stats["total"], seconds=seconds,
                     worker_cpu=worker_raw - idle[0] * seconds, standin_cpu=own_raw - idle[1] * seconds,
                     worker_raw=worker_raw, standin_raw=own_raw)


def top(path: Path, limit: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit * 2)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="updates per round")
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of the idle measurement")
    parser.add_argument("--profile", type=Path, help="profile both processes, write the files here")
    args = parser.parse_args(argv)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rounds: list[Round] = []
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    def body(url: str, workdir: Path) -> None:
        profiles = ThreadProfiles() if args.profile is not None else None
        bench = Bench(url, workdir, args.customers, args.profile)
        try:
            bench.start()
            idle = bench.idle(args.idle)
            print(f"idle: worker {1000 * idle[0]:.1f} ms/s, this process {1000 * idle[1]:.1f} ms/s",
                  file=sys.stderr, flush=True)
            for n in range(1, args.rounds + 1):
                r = bench.round(args.messages, args.latency_ms, idle)
                rounds.append(r)
                print(f"  round {n}: {r.messages} messages in {r.seconds:.1f} s, {r.calls} Lime calls, "
                      f"worker {r.worker_ms_per_message:.2f} ms/msg {r.worker_ms_per_call:.2f} ms/call, stand-in "
                      f"{r.standin_ms_per_request:.2f} ms/request", file=sys.stderr, flush=True)
        finally:
            bench.stop()
            if profiles is not None:
                profiles.dump(args.profile / "standin.prof")

    with_broker(body)
    med = statistics.median
    print(f"\nCPU per message on {os.cpu_count()} CPUs, Lime latency {args.latency_ms:g} ms, one worker process "
          f"(worker.concurrency 8, 4 partitions), {args.messages} updates per round over {args.customers} "
          f"customers, median of {len(rounds)} rounds{' (PROFILED)' if args.profile else ''}")
    print(f"  calls/msg                      {med(r.calls / r.messages for r in rounds):.2f}")
    print(f"  worker CPU ms per message      {med(r.worker_ms_per_message for r in rounds):.2f}   "
          f"(raw, idle not taken off: {med(1000 * r.worker_raw / r.messages for r in rounds):.2f})")
    print(f"  worker CPU ms per Lime call    {med(r.worker_ms_per_call for r in rounds):.2f}")
    print(f"  stand-in CPU ms per request    {med(r.standin_ms_per_request for r in rounds):.2f}   "
          f"(raw: {med(1000 * r.standin_raw / r.requests for r in rounds):.2f})")
    print(f"  msg/s                          {med(r.messages / r.seconds for r in rounds):.1f}")
    print(f"Load average (1, 5, 15 min) before {load}, after "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if args.profile is not None:
        for name in ("worker", "standin"):
            path = args.profile / f"{name}.prof"
            if path.exists():
                (args.profile / f"{name}.txt").write_text(top(path))
                print(f"profile of the {name}: {path} (top functions in {name}.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
