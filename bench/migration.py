"""Migration benchmark: N customers with their facilities and contracts from the BFUS
stand-in into an empty Lime stand-in, and into one already holding half of them (a
third of those with stale values), for each N asked. Prints objects per second, Lime
calls per object and the migration process's peak memory, in all and per object.

The migration runs as its own process (``bfus-lime migrate``); the stand-ins and
RabbitMQ run beside it. Its peak memory is its own high-water resident set (VmHWM),
which the process writes down as it exits: not the ``ru_maxrss`` its parent gets from
``wait4``, because Linux carries the high-water mark of the process image it replaced
over an ``execve``, so a child of this (large) process would report this process's
peak. Per object: (peak - the resident set of the process with its code loaded,
before it reads anything) / objects.

    python -m bench.migration [--customers 20000,100000] [--parallel 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sandbox.broker import exit_on_sigterm, provide_broker
from sandbox.stack import BFUS_LIME, Stack, config_environment
from shared.config import build_config, deep_merge
from shared.lime import LimeClient
from shared.limemeta import check_against_lime
from shared.logs import configure_logging

TYPES = "customer,facility,contract"

# The migrate command, run by a wrapper that notes the resident set with the code
# loaded (the base) and the high-water mark at exit, into the file named first.
MEASURED = """
import atexit, json, runpy, sys

def status():
    with open('/proc/self/status') as f:
        return {line.split(':')[0]: int(line.split()[1]) for line in f if line.startswith(('VmRSS', 'VmHWM'))}

import cli.main  # noqa: the command's code, loaded before the base is taken
out, base = sys.argv[1], status()['VmRSS']
atexit.register(lambda: open(out, 'w').write(json.dumps({'base_kib': base, 'peak_kib': status()['VmHWM']})))
sys.argv = ['bfus-lime', *sys.argv[2:]]
runpy.run_module('cli', run_name='__main__')
"""


def run_case(broker_url: str, management_url: str, customers: int, prefill: float, parallel: int,
             workdir: Path) -> dict[str, float]:
    stack = Stack(broker_url, workdir, partitions=16, management_url=management_url,
                  config={"lime": {"rate_limit": 100_000.0}})
    try:
        stack.start(workers=0)
        raw = deep_merge(stack.raw, {"bfus": {"url": stack.bfus.url, "token": "dev-bfus-token"}})
        config = build_config(raw, environ={})
        started = time.monotonic()
        stack.bfus.changes.seed_customers(customers)
        print(f"    seeded BFUS in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
        if prefill:
            _prefill(stack, config, prefill)
        stack.lime.faults.reset_stats()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ", "BFUSLIME"))},
               **config_environment(raw)}
        started = time.monotonic()
        log = open(workdir / "migrate.log", "w+")
        memory = workdir / "memory.json"
        assert BFUS_LIME[1:] == ["-m", "cli"]  # the same command, run through MEASURED
        child = subprocess.run(
            [BFUS_LIME[0], "-c", MEASURED, str(memory), "migrate", "--objecttypes", TYPES,
             "--parallel", str(parallel), "--checkpoint", str(workdir / "cp.jsonl"),
             "--report", str(workdir / "report.json")],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        seconds = time.monotonic() - started
        if child.returncode != 0:
            log.seek(0)
            raise RuntimeError(f"migration failed ({child.returncode}):\n{log.read()[-3000:]}")
        report = json.loads((workdir / "report.json").read_text())
        kib = json.loads(memory.read_text())
        return {
            "objects": report["objects"],
            "seconds": report["seconds"],
            "wall": seconds,
            "rate": report["objects"] / report["seconds"],
            "calls_per_object": report["lime_calls_per_object"],
            "written": stack.lime.faults.stats()["objects_written"],
            "peak_mb": kib["peak_kib"] / 1024,
            "base_mb": kib["base_kib"] / 1024,
            "kb_per_object": (kib["peak_kib"] - kib["base_kib"]) * 1.024 / report["objects"],
            "counts": report["counts"],
        }
    finally:
        stack.stop()


def _prefill(stack: Stack, config, share: float) -> None:
    """Lime already holds ``share`` of the customers, their facilities and contracts;
    every third company with stale values."""
    started = time.monotonic()
    mappers = check_against_lime(config, LimeClient(config.lime).limetypes())
    store = stack.lime.store
    customers = stack.bfus.store.snapshots("customer")
    chosen = {s["key"] for s in customers[: int(len(customers) * share)]}
    ids: dict[tuple[str, str], int] = {}
    for i, snapshot in enumerate(s for s in customers if s["key"] in chosen):
        values = mappers["customer"].map(snapshot["data"])
        if i % 3 == 0:
            values["phone"] = "+46800000000"
        ids[("customer", snapshot["key"])] = store.create("company", values)["_id"]
    for objecttype in ("facility", "contract"):
        mapper = mappers[objecttype]
        for snapshot in stack.bfus.store.snapshots(objecttype):
            if snapshot["customerno"] not in chosen:
                continue
            values = mapper.map(snapshot["data"])
            for prop, key in mapper.relation_keys(snapshot["data"]).items():
                values[prop] = ids.get((mapper.relations[prop].objecttype, key)) if key else None
            ids[(objecttype, snapshot["key"])] = store.create(mapper.limetype, values)["_id"]
    print(f"    pre-filled Lime with {len(ids)} objects in {time.monotonic() - started:.0f}s", file=sys.stderr,
          flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", default="20000",
                        help="customer counts, comma-separated: 20000,100000 runs both sizes in one go")
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.customers.split(",") if n.strip()]
    exit_on_sigterm()
    configure_logging("error")
    broker = provide_broker(allow_container=False, install=True)
    rows = []
    try:
        for customers in sizes:
            for label, prefill in (("empty Lime", 0.0), ("50% already in Lime", 0.5)):
                print(f"  {customers} customers, {label} ...", file=sys.stderr, flush=True)
                url = broker.create_vhost()
                with tempfile.TemporaryDirectory(prefix="bfus-lime-bench-") as workdir:
                    rows.append((customers, label, run_case(url, broker.management_url or "", customers, prefill,
                                                            args.parallel, Path(workdir))))
                broker.delete_vhost(url)
    finally:
        broker.close()
    print(f"\nMigration of customers with their facilities and contracts (--parallel {args.parallel}, "
          f"Lime stand-in without added latency, {os.cpu_count()} CPUs)")
    print(f"{'customers':>9}  {'case':<20}  {'objects':>7}  {'objects/s':>9}  {'Lime calls/object':>17}  "
          f"{'written':>7}  {'seconds':>7}  {'peak MB':>7}  {'KB/object':>9}")
    for customers, label, r in rows:
        print(f"{customers:>9}  {label:<20}  {r['objects']:>7}  {r['rate']:>9.1f}  {r['calls_per_object']:>17.4f}  "
              f"{r['written']:>7}  {r['seconds']:>7.1f}  {r['peak_mb']:>7.1f}  {r['kb_per_object']:>9.3f}")
    base = max(r["base_mb"] for _, _, r in rows)
    print(f"peak MB: the migration process's own high-water resident set (VmHWM); KB/object: that peak less "
          f"the process's resident set with its code loaded (at most {base:.1f} MB), per object")
    for customers, label, r in rows:
        print(f"  {customers} customers, {label}: {json.dumps(r['counts'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
