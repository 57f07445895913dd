"""Receiver benchmark (issue 16): BFUS's answer time with the receiver's Prometheus
metrics on and off, in one run.

What runs. Two receivers as production runs them (``bfus-lime receiver``: gunicorn,
--processes processes x --threads threads), one with ``receiver.metrics`` on and one
with it off, on the same private RabbitMQ node (a vhost each; no worker: the messages
wait in their partitions). Per round, each receiver in turn takes --messages posts of
a valid change message from --clients client threads (each on a keep-alive
connection, as BFUS's poster), so both see the same machine load; --rounds rounds.

What it prints: per receiver, the answer time BFUS sees (p50, p99 over every post of
every round, in ms) and posts per second; for the one with metrics, the time of a
``/metrics`` scrape (p50 of 20).

    python -m bench.receiver [--messages 2000] [--clients 4] [--rounds 3] [--processes 2] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import requests

from bench.measure import percentile, with_broker
from sandbox.stack import RECEIVER_KEY, Stack

HEADERS = {"Content-Type": "application/json", "X-API-Key": RECEIVER_KEY}


def body(message_id: int) -> bytes:
    return json.dumps({"id": message_id, "timestamp": "2026-11-29T12:00:00+01:00", "objecttype": "customer",
                       "operation": "updated", "key": str(100000 + message_id % 5000),
                       "customerno": str(100000 + message_id % 5000),
                       "data": {"customerno": str(100000 + message_id % 5000), "name": "Kvarnbackens Bageri AB",
                                "customertype": "company", "city": "Lund"}}).encode()


def post_all(url: str, first: int, count: int, clients: int) -> tuple[list[float], float]:
    """``count`` posts from ``clients`` threads: (answer times in ms, seconds in all)."""
    times: list[float] = []
    lock = threading.Lock()

    def client(start: int) -> None:
        mine = []
        with requests.Session() as session:
            for i in range(start, first + count, clients):
                started = time.perf_counter()
                answer = session.post(f"{url}bfus/messages", data=body(i), headers=HEADERS, timeout=30)
                mine.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 202, answer.text
        with lock:
            times.extend(mine)

    threads = [threading.Thread(target=client, args=(first + c,)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times, time.perf_counter() - started


def run(url: str, workdir: Path, args: argparse.Namespace) -> None:
    stacks = {}
    for name, on in (("metrics on", True), ("metrics off", False)):
        stack = Stack(url, workdir / name.replace(" ", "-"), partitions=4,
                      config={"receiver": {"metrics": on}})
        stack.spawn_receiver(processes=args.processes, threads=args.threads)
        stacks[name] = stack
    answers: dict[str, list[float]] = {name: [] for name in stacks}
    seconds = dict.fromkeys(stacks, 0.0)
    try:
        for round_ in range(args.rounds):
            for name, stack in stacks.items():
                times, took = post_all(stack.receiver_url, 1 + round_ * args.messages, args.messages, args.clients)
                answers[name].extend(times)
                seconds[name] += took
        scrape = []
        for _ in range(20):
            started = time.perf_counter()
            assert requests.get(f"{stacks['metrics on'].receiver_url}metrics", timeout=10).status_code == 200
            scrape.append((time.perf_counter() - started) * 1000)
    finally:
        for stack in stacks.values():
            stack.stop()
    print(f"\nReceiver answer time, {args.processes} gunicorn processes x {args.threads} threads, {args.clients} "
          f"clients on keep-alive connections, {args.messages} posts per round, {args.rounds} rounds (interleaved)")
    print(f"  {'':<12} {'p50 ms':>8} {'p99 ms':>8} {'posts/s':>9}")
    for name, times in answers.items():
        print(f"  {name:<12} {percentile(times, 0.5):8.2f} {percentile(times, 0.99):8.2f} "
              f"{len(times) / seconds[name]:9.0f}")
    print(f"  a /metrics scrape: p50 {percentile(scrape, 0.5):.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    return with_broker(lambda url, workdir: run(url, workdir, args))


if __name__ == "__main__":
    sys.exit(main())
