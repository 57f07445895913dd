"""Jump benchmark (docs/jump.md): what the jump links cost and how fast a jump answers.

1. BFUS's changes of all four object types synced with the links on, and the same
   stream with them off: Lime calls per message (a link costs a second call only when
   an object is created; on updates it rides along).
2. 200 jumps over the synced objects, one after another as users click: the receiver's
   answer time (p50, p99), next to the stand-ins' own answer times for the two calls a
   jump makes (Lime's object read, BFUS's bookmark).
3. The backfill after a secret rotation (every link outdated), then again with every
   link current: Lime calls per object.

    python -m bench.jump [--changes 2000] [--customers 200] [--jumps 200]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from bench.measure import lime_calls, percentile, with_broker
from migration.linkrefresh import LinkRefresh, RefreshOptions
from sandbox.bfus.changes import ChangeMix
from sandbox.stack import Stack
from shared.bfus import BfusClient
from shared.config import build_config, deep_merge
from shared.jumplinks import JumpLinks
from shared.lime import LimeClient
from shared.limemeta import check_against_lime
from shared.retry import Backoff

OBJECTTYPES = ("customer", "facility", "contract", "meter")
KEYS = {"company": ("customer", "customerno"), "agreement": ("contract", "contractno"),
        "facility": ("facility", "facilityno"), "meter": ("meter", "meterno")}


def sync(url: str, workdir: Path, jump: bool, changes: int, customers: int) -> tuple[Stack, float, int]:
    """A stack (jump on or off) with the stream applied: (stack, Lime calls per message, objects)."""
    stack = Stack(url, workdir, partitions=8, jump=jump, config={"lime": {"rate_limit": 100_000.0}}, seed=11)
    stack.start(workers=2)
    stack.bfus.changes.make(changes, customers=customers, mix=ChangeMix(update=1.0, delete=0.0),
                            objecttypes=OBJECTTYPES)
    stack.wait_quiet(timeout=900)
    objects = sum(len(stack.lime_objects(lt)) for lt in KEYS)
    return stack, lime_calls(stack) / changes, objects


def timed(call: Callable[[], Any], times: int) -> list[float]:
    out = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return out


def line(name: str, ms: list[float]) -> str:
    return f"  {name:<36} p50 {percentile(ms, 0.5):6.1f} ms   p99 {percentile(ms, 0.99):6.1f} ms   ({len(ms)})"


def jumps(stack: Stack, count: int) -> None:
    rng = random.Random(5)
    picked = [(lt, rng.choice(stack.lime_objects(lt))) for lt in rng.choices(list(KEYS), k=count)]
    browser = requests.Session()
    answers: list[float] = []
    for limetype, obj in picked:
        started = time.perf_counter()
        response = browser.get(obj["bfuslink"], allow_redirects=False, timeout=30)
        answers.append((time.perf_counter() - started) * 1000)
        if response.status_code != 302:
            raise SystemExit(f"jump to {limetype} {obj['_id']} answered {response.status_code}")
    lime, bfus = LimeClient(stack.config.lime), BfusClient(stack.config.bfus)
    reads = iter(picked)

    def read() -> None:
        limetype, obj = next(reads)
        lime.get(limetype, obj["_id"])

    lime_ms = timed(read, count)
    marks = iter(picked)

    def bookmark() -> None:
        limetype, obj = next(marks)
        objecttype, key = KEYS[limetype]
        bfus.bookmark(objecttype, obj[key], "MFU")

    bfus_ms = timed(bookmark, count)
    print(f"\n{count} jumps, one at a time (receiver in-process, waitress; stand-ins over local HTTP):")
    print(line("jump: link -> 302 to the bookmark", answers))
    print(line("Lime stand-in: GET the object", lime_ms))
    print(line("BFUS stand-in: POST a bookmark", bfus_ms))
    own = percentile(answers, 0.5) - percentile(lime_ms, 0.5) - percentile(bfus_ms, 0.5)
    print(f"  the jump's own share (p50): {own:.1f} ms")


def backfill(stack: Stack, workdir: Path) -> None:
    stack.config = build_config(deep_merge(stack.raw, {"jump": {"secret": "a-rotated-jump-secret"}}), environ={})
    lime = LimeClient(stack.config.lime)
    mappers = check_against_lime(stack.config, lime.limetypes())
    links = JumpLinks(stack.config.jump, stack.config.receiver.public_url)
    print("\nBackfill (bfus-lime jump-links --refresh) after a secret rotation:")
    for label in ("every link outdated", "every link current"):
        options = RefreshOptions(write=True, checkpoint=workdir / "jump-links.json")
        report = LinkRefresh(lime, links, mappers, options, Backoff(0.05, 1.0)).run()
        written = sum(report.written.values())
        print(f"  {label:<20} {report.checked} objects, {written} links written, {report.lime_calls} Lime calls "
              f"= {report.lime_calls / report.checked:.3f} per object, {report.seconds:.1f} s")


def run(url: str, workdir: Path, changes: int, customers: int, count: int) -> None:
    plain, plain_calls, _ = sync(url, workdir / "off", False, changes, customers)
    plain.stop()
    stack, calls, objects = sync(url, workdir / "on", True, changes, customers)
    try:
        print(f"\n{changes} BFUS changes of {', '.join(OBJECTTYPES)} over {customers} customers, "
              f"{objects} Lime objects:")
        print(f"  Lime calls per message: links off {plain_calls:.3f}, links on {calls:.3f} "
              f"(+{(calls - plain_calls) * changes / objects:.2f} per object created)")
        jumps(stack, count)
        backfill(stack, workdir)
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--jumps", type=int, default=200)
    args = parser.parse_args(argv)
    return with_broker(lambda url, workdir: run(url, workdir, args.changes, args.customers, args.jumps))

if __name__ == "__main__":
    sys.exit(main())
