"""The soak test: a long stream through the whole integration while things break.

The BFUS stand-in sends N changes over M customers through the receiver while worker
processes run; meanwhile one worker is SIGKILLed and restarted twice, another joins,
the broker is restarted, and the Lime stand-in fails a share of requests, adds
latency spikes and is down for a while. Lime -> BFUS is on: Lime's webhooks (a share
of them lost, for the sweep to catch) reach the receiver while a simulated Lime user
edits a few hundred companies and registers new ones for BFUS. Afterwards the checker
proves from the stand-ins' data that every company equals its customer's last
snapshot, that every BFUS message id has exactly one log record, that no message was
applied after a newer one of the same object, that nothing was lost, and that Lime
and BFUS agree on every field that flows to BFUS.

    python -m sandbox.soak                      # the full run (make soak)
    python -m sandbox.soak --nodes 3            # on a three-node cluster (make soak NODES=3): the
                                                # node leading most partitions SIGKILLed for 30 s,
                                                # later another stopped and started (stop_app)
    python -m sandbox.soak --changes 2000 --customers 300 --outage 5 --lime-edits 60 --lime-creates 5
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.broker import BrokerHandle, PrivateNode, exit_on_sigterm, provide_broker
from sandbox.check import CheckReport, check_customers
from sandbox.lime.faults import Faults
from sandbox.limeuser import LimeUser, LimeUserReport
from sandbox.stack import Stack, WorkerChild, wait_for
from shared.lime import LimeClient, option_key
from shared.limemeta import check_against_lime
from shared.logs import configure_logging
from shared.topology import Topology


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
    lime_edits: int = 300  # edits by a simulated Lime user during the stream (Lime -> BFUS)
    lime_creates: int = 20  # companies it registers for BFUS
    lime_user_rate: float = 5.0  # its writes per second
    webhook_loss: float = 0.01  # share of Lime's webhooks lost, for the sweep to catch
    sweep_interval: float = 10.0
    node_down: float = 30.0  # on a cluster: seconds the SIGKILLed node stays down


@dataclass
class OutboundFigures:
    """Lime -> BFUS during the soak."""

    user: LimeUserReport
    bfus_writes: dict[str, int]
    sent: int  # processed records with direction to_bfus
    refused_deleted: int  # failed to_bfus records of edits to customers BFUS had deleted (a true refusal)
    refused_otherwise: list[str]  # any other failed to_bfus record: "reason customerno" (a fault)
    webhooks: dict[str, int]

    def summary(self) -> str:
        w = self.webhooks
        return (f"  Lime user: {self.user.summary()}\n"
                f"  to BFUS: {self.sent} sent (BFUS writes: {self.bfus_writes['POST']} POST, "
                f"{self.bfus_writes['PUT']} PUT); refused by BFUS: {self.refused_deleted} edits of customers BFUS "
                f"had deleted, {len(self.refused_otherwise)} otherwise {self.refused_otherwise[:5]}\n"
                f"  webhooks: delivered {w['delivered']}, lost {w['lost']} (for the sweep to catch), "
                f"duplicated {w['duplicated']}")


@dataclass
class SoakResult:
    report: CheckReport
    wall_time: float
    events: list[str] = field(default_factory=list)
    lime_calls: int = 0
    outbound: OutboundFigures | None = None
    answers: dict[str, int] = field(default_factory=dict)  # the receiver's answers to BFUS, by status
    longest_answer: float = 0.0
    unowned: dict[int, float] = field(default_factory=dict)  # seconds each partition had no owner

    @property
    def ok(self) -> bool:
        return self.report.ok and not (self.outbound and self.outbound.refused_otherwise)

    def summary(self) -> str:
        r = self.report
        return "\n".join([
            f"soak: {'PASSED' if self.ok else 'FAILED'} in {self.wall_time:.1f}s",
            f"  messages delivered by BFUS: {r.messages}",
            f"  log records: {r.processed} processed + {r.failed} failed; lost (no record): {len(r.unlogged)}; "
            f"with more than one record: {len(r.logged_twice)}",
            f"  companies checked: {r.objects}; differing from the last snapshot: {len(r.mismatched)}; "
            f"missing: {len(r.missing)}; duplicated: {len(r.duplicated)}",
            f"  applied after a newer message of the same object: {len(r.out_of_order)}",
            f"  Lime and BFUS disagreeing on a field that flows to BFUS: {len(r.disagreeing)}; companies marked "
            f"for BFUS never sent: {len(r.unsent)}; synced companies without their jump link: {len(r.unlinked)}",
            f"  Lime calls: {self.lime_calls} ({self.lime_calls / max(1, r.messages):.2f} per message)",
            *([self.outbound.summary()] if self.outbound else []),
            f"  receiver's answers to BFUS: {dict(sorted(self.answers.items()))}, "
            f"the longest {self.longest_answer:.2f}s",
            *([_unowned_summary(self.unowned)] if self.unowned else []),
            "  events: " + "; ".join(self.events),
        ])


def _unowned_summary(unowned: dict[int, float]) -> str:
    longest = max(unowned, key=lambda p: unowned[p])
    return (f"  partitions without an owner (no worker consuming them): the longest p{longest:03d} "
            f"{unowned[longest]:.1f}s, all together {sum(unowned.values()):.1f}s; each: "
            + ", ".join(f"{unowned[p]:.1f}" for p in sorted(unowned)))


class OwnerWatch:
    """How long each partition had no owner (no worker holding its lock, so none
    consuming it), from the broker's queue list every ``interval`` seconds; a look the
    management API does not answer counts nothing."""

    def __init__(self, broker: BrokerHandle, vhost_url: str, topology: Topology, interval: float = 0.5):
        self.broker = broker
        self.vhost_url = vhost_url
        self.topology = topology
        self.interval = interval
        self.unowned = {p: 0.0 for p in range(topology.partitions)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="owner-watch", daemon=True)

    def start(self) -> OwnerWatch:
        self._thread.start()
        return self

    def stop(self) -> dict[int, float]:
        self._stop.set()
        self._thread.join(10)
        return dict(self.unowned)

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                names = self.broker.queue_names(self.vhost_url)
            except Exception:
                last = time.monotonic()
                continue
            now = time.monotonic()
            for partition in self.unowned:
                if self.topology.lock_queue(partition) not in names:
                    self.unowned[partition] += now - last
            last = now


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
    cluster = broker.cluster
    faults = Faults(error_rate=options.error_rate, spike_rate=options.spike_rate, spike_ms=options.spike_ms)
    stack = Stack(url, workdir, partitions=options.partitions, management_url=broker.management_url or "",
                  config={"lime": {"rate_limit": 5000.0}, "worker": {"retry_max": 2.0, "breaker_threshold": 5},
                          "outbound": {"sweep_interval": options.sweep_interval},
                          "broker": {"quorum_size": 3 if cluster else 0}},
                  lime_settings={"faults": faults, "seed": 11, "webhook_retry_base": 0.5}, bfus_retry_pause=0.2,
                  outbound=True, jump=True)
    user_done = threading.Event()
    watch = OwnerWatch(broker, url, Topology.from_config(stack.config.broker))
    try:
        stack.start(workers=0)
        children = [stack.spawn_worker(f"worker-{i + 1}") for i in range(options.workers)]
        for child in children:
            child.wait_log("worker_consuming")
        watch.start()
        stack.subscribe_webhooks()
        stack.lime.webhooks.lose_rate = options.webhook_loss
        lime = LimeClient(stack.config.lime)
        user = LimeUser(lime, check_against_lime(stack.config, lime.limetypes())["customer"],
                        stack.config.outbound.create_when, seed=17, pause=0.5)
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

        touched: list[PrivateNode] = []  # the node killed

        def leaders() -> Counter[str]:
            queues = Topology.from_config(stack.config.broker).partition_queues
            return Counter(str(broker.queue_info(url, queue).get("leader")) for queue in queues)

        def kill_leading_node() -> None:
            """SIGKILL the node leading the most partitions (the management API's node
            excepted), and start it again after options.node_down seconds."""
            assert cluster is not None
            led = leaders()
            node = max(cluster.nodes[:-1], key=lambda n: led[n.nodename])
            touched.append(node)
            node.kill()
            event(f"SIGKILLed RabbitMQ node {node.nodename} (leading {led[node.nodename]} partitions)")
            time.sleep(options.node_down)
            node.start()
            event(f"{node.nodename} back")

        def stop_a_node() -> None:
            """Stop a second node's RabbitMQ application gracefully (not the one killed,
            nor the management API's), then start it."""
            assert cluster is not None
            node = next(n for n in cluster.nodes[:-1] if n not in touched)
            node.ctl("stop_app")
            event(f"rabbitmqctl stop_app on {node.nodename}")
            time.sleep(10)
            node.ctl("start_app")
            node.wait_amqp(60)
            event(f"rabbitmqctl start_app on {node.nodename}")

        def lime_user() -> None:
            threading.Thread(target=_edit_and_create, args=(stack, user, options, user_done), daemon=True).start()
            event(f"a Lime user starts {options.lime_edits} edits and {options.lime_creates} new companies")

        def lime_outage() -> None:
            stack.lime.stop()
            event(f"Lime down for {options.outage:.0f}s")
            time.sleep(options.outage)
            stack.lime.start()
            event("Lime back")

        broker_faults = [(0.35, kill_leading_node), (0.60, stop_a_node)] if cluster else [(0.40, restart_broker)]
        plan = sorted([(0.05, lime_user), (0.10, lambda: restart_killed(children[0])), (0.25, join), *broker_faults,
                       (0.55, lambda: restart_killed(children[1])), (0.70, lime_outage)], key=lambda step: step[0])
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
        wait_for(lambda: user_done.is_set() and _settled(stack), 300, "every message and webhook to be handled")
        stack.lime.faults.configure({"error_rate": 0, "spike_rate": 0})
        report = _converged(stack, timeout=max(60.0, 6 * options.sweep_interval))
        wall = time.monotonic() - started
        poster = stack.bfus.poster
        return SoakResult(report, wall, events, stack.lime.faults.stats()["total"], _outbound_figures(stack, user),
                          dict(poster.answers), poster.longest, watch.stop())
    finally:
        watch.stop()
        user_done.set()
        stack.stop()
        broker.delete_vhost(url)


def _outbound_figures(stack: Stack, user: LimeUser) -> OutboundFigures:
    processed, failed = stack.log_records()
    refused = [r for r in failed if option_key(r.get("direction")) == "to_bfus"]

    def deleted_in_bfus(record: dict[str, Any]) -> bool:
        customer = stack.bfus.store.get("customer", str(record.get("customerno")))
        return option_key(record.get("reason")) == "bfus_not_found" and customer is not None and customer["deleted"]

    return OutboundFigures(
        user.report, dict(stack.bfus.writes), sum(1 for r in processed if option_key(r.get("direction")) == "to_bfus"),
        sum(1 for r in refused if deleted_in_bfus(r)),
        [f"{option_key(r.get('reason'))} {r.get('customerno')}" for r in refused if not deleted_in_bfus(r)],
        dict(stack.lime.webhooks.stats))


def _edit_and_create(stack: Stack, user: LimeUser, options: SoakOptions, done: threading.Event) -> None:
    """The Lime user: edits of random live companies and a few new ones, at its pace,
    while the stream runs (Lime's faults and outage hit it as they hit the workers)."""
    try:
        kinds = ["edit"] * options.lime_edits + ["create"] * options.lime_creates
        random.Random(3).shuffle(kinds)
        for kind in kinds:
            if done.is_set():
                return
            if kind == "create":
                user.create()
            else:
                _edit_one(stack, user)
            done.wait(1 / options.lime_user_rate)
    finally:
        done.set()


def _edit_one(stack: Stack, user: LimeUser, tries: int = 5) -> None:
    """One edit of a random live company, as a person sees it now: BFUS may delete the
    one picked before it is opened, and the person then picks another."""
    for _ in range(tries):
        editable = [c for c in stack.lime_objects(user.mapper.limetype) if user.editable(c)]
        if not editable:
            return
        fresh = stack.lime.store.get(user.mapper.limetype, user.rng.choice(editable)["_id"])
        if fresh and user.editable(fresh):
            user.edit(fresh)
            return


def _settled(stack: Stack) -> bool:
    """BFUS has delivered everything and each message has its record; Lime has sent
    every webhook (the workers are other processes: what they hold shows in what
    follows, and :func:`_converged` waits for that)."""
    from sandbox.check import inbound_records

    if stack.bfus.store.queue_status()["pending"] or stack.lime.webhooks.pending():
        return False
    processed, failed = stack.log_records()
    return len(inbound_records(processed)) + len(inbound_records(failed)) >= len(stack.bfus.store.delivered_ids())


def _converged(stack: Stack, timeout: float) -> CheckReport:
    """The checker's report once it passes with everything settled, or its last one
    after ``timeout`` (a change the sweep must catch takes up to one sweep interval,
    and what it sends comes back from BFUS as one more message)."""
    deadline = time.monotonic() + timeout
    while True:
        report = check_customers(stack)
        if (report.ok and _settled(stack)) or time.monotonic() > deadline:
            return report
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SoakOptions()
    parser.add_argument("--changes", type=int, default=defaults.changes)
    parser.add_argument("--customers", type=int, default=defaults.customers)
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--outage", type=float, default=defaults.outage, help="seconds Lime is down")
    parser.add_argument("--lime-edits", type=int, default=defaults.lime_edits, help="edits by a Lime user")
    parser.add_argument("--lime-creates", type=int, default=defaults.lime_creates, help="companies it creates")
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=int(os.environ.get("NODES") or 1),
                        help="RabbitMQ nodes (3: a private cluster; env NODES)")
    parser.add_argument("--node-down", type=float, default=defaults.node_down,
                        help="on a cluster: seconds the SIGKILLed node stays down")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    configure_logging("error")
    options = SoakOptions(changes=args.changes, customers=args.customers, workers=args.workers, outage=args.outage,
                          lime_edits=args.lime_edits, lime_creates=args.lime_creates, node_down=args.node_down)
    broker = provide_broker(allow_container=False, install=True, nodes=args.nodes)
    if broker.node is None and broker.cluster is None:
        print("soak: needs private RabbitMQ nodes it may restart (unset RABBITMQ_URL)", file=sys.stderr)
        broker.close()
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="bfus-lime-soak-"))
    try:
        result = run_soak(broker, options, workdir)
    finally:
        broker.close()
    print(result.summary())
    if not result.ok:
        print(result.report.details(), file=sys.stderr)
        print(f"worker logs kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
