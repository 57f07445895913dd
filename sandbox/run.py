"""``bfus-lime run``: the whole integration on this machine, as separate processes.

A RabbitMQ (RABBITMQ_URL, else a private node), the Lime and BFUS stand-ins, the
receiver under gunicorn and N workers. BFUS starts with some customers (with their
facilities, contracts and meters) it had before the integration, which only a
migration brings to Lime; then it posts a stream of changes of all four object types
while a progress line shows what became of them. Then the other direction: a
simulated Lime user (sandbox/limeuser.py) edits companies and registers new ones
marked for BFUS, Lime's webhooks reach the receiver, and a second progress line
shows what went to BFUS. Ctrl-C stops every process it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from sandbox.broker import BrokerHandle, BrokerSetupError, free_port, provide_broker
from sandbox.stack import BFUS_LIME, JUMP_LINKS, JUMP_SECRET

LIME_KEY = "dev-lime-key"
LIME_ADMIN = "dev-lime-admin"
RECEIVER_KEY = "dev-receiver-key"
BFUS_TOKEN = "dev-bfus-token"
BFUS_ADMIN = "dev-bfus-admin"
ADMIN_PASSWORD = "dev-admin"
WEBHOOK_SECRET = "dev-webhook-secret"
MARK = "sendtobfus"  # the Lime yes/no property that sends a new company to BFUS
PREFERRED_PORTS = {"receiver": 8080, "lime": 8081, "bfus": 8082}


@dataclass
class RunOptions:
    workdir: Path
    changes: int
    customers: int
    rate: float
    workers: int
    until_done: bool
    seed_customers: int = 10
    lime_edits: int = 20  # companies the simulated Lime user edits once the BFUS stream is in
    lime_creates: int = 3  # companies it registers, marked for BFUS
    nodes: int = 1  # RabbitMQ nodes (more than one: a private cluster)


def _port(preferred: int) -> int:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def write_config(path: Path, broker: BrokerHandle, ports: dict[str, int], workdir: Path) -> None:
    path.write_text(
        f"""# Written by `bfus-lime run` for the local stand-ins. Not for production.
[broker]
url = "{broker.url}"
partitions = 16
management_url = "{broker.management_url or ''}"
quorum_size = {3 if broker.cluster is not None else 0}

[receiver]
host = "127.0.0.1"
port = {ports['receiver']}
api_key = "{RECEIVER_KEY}"
processes = 2
threads = 4
lime_secret = "{WEBHOOK_SECRET}"
public_url = "http://127.0.0.1:{ports['receiver']}/"
deliveries_db = "{workdir / 'deliveries.sqlite'}"

[lime]
url = "http://127.0.0.1:{ports['lime']}/lime/api/v1/"
api_key = "{LIME_KEY}"
rate_limit = 200.0

[bfus]
url = "http://127.0.0.1:{ports['bfus']}/"
token = "{BFUS_TOKEN}"
ui_url = "http://127.0.0.1:{ports['bfus']}/mfu/"

[jump]
secret = "{JUMP_SECRET}"

[jump.links]
{"".join(f'{limetype} = "{prop}"{chr(10)}' for limetype, prop in JUMP_LINKS.items())}
[admin]
user = "admin"
password = "{ADMIN_PASSWORD}"

[outbound]
enabled = true
create_when = "{MARK}"
sweep_interval = 60
"""
    )


class Processes:
    """Children started by `run`, each logging to its own file, stopped together."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        """``env``: variables added to this process's environment."""
        log = open(self.logdir / f"{name}.log", "ab")
        child = subprocess.Popen(
            [*BFUS_LIME, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
        self.children.append((name, child))
        return child

    def check(self) -> str | None:
        for name, child in self.children:
            if child.poll() is not None:
                return f"{name} exited with code {child.returncode}; see {self.logdir / (name + '.log')}"
        return None

    def stop(self, timeout: float = 20.0) -> None:
        for _name, child in reversed(self.children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, child in reversed(self.children):
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop in time; killing it", file=sys.stderr)
                child.kill()
                child.wait(5)


def _get(url: str, **kwargs: Any) -> requests.Response | None:
    try:
        return requests.get(url, timeout=2, **kwargs)
    except requests.RequestException:
        return None


def _wait_until(check: Any, timeout: float, what: str, processes: Processes) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        problem = processes.check()
        if problem:
            raise RuntimeError(problem)
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f}s (logs in {processes.logdir})")


def run_all(options: RunOptions) -> int:
    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    workdir = options.workdir.resolve()
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    for stale in ("lime.db", "bfus.db"):
        for suffix in ("", "-wal", "-shm"):
            (workdir / f"{stale}{suffix}").unlink(missing_ok=True)

    print("Starting RabbitMQ ..." if not os.environ.get("RABBITMQ_URL") else "Using RABBITMQ_URL ...", flush=True)
    try:
        single = options.nodes == 1  # a cluster's nodes take free ports
        broker: BrokerHandle = provide_broker(
            allow_container=False, install=True, nodes=options.nodes,
            amqp_port=_port(5673) if single else None, management_port=_port(15673) if single else None)
    except BrokerSetupError as err:
        print(f"bfus-lime run: {err}", file=sys.stderr)
        return 1
    processes = Processes(logdir)
    try:
        return _run(options, workdir, broker, processes, stop)
    except RuntimeError as err:
        print(f"\nbfus-lime run: {err}", file=sys.stderr)
        return 1
    finally:
        print("\nStopping ...", flush=True)
        processes.stop()
        broker.close()
        print("Stopped every process `run` started.", flush=True)


def _run(options: RunOptions, workdir: Path, broker: BrokerHandle, processes: Processes, stop: threading.Event) -> int:
    ports = {name: _port(p) for name, p in PREFERRED_PORTS.items()}
    config_path = workdir / "bfus-lime.toml"
    write_config(config_path, broker, ports, workdir)
    cfg = ["--config", str(config_path)]
    processes.start("lime", [*cfg, "sandbox-lime", "--db", str(workdir / "lime.db"), "--admin-key", LIME_ADMIN])
    lime_api = f"http://127.0.0.1:{ports['lime']}/lime/api/v1/"
    _wait_until(lambda: _get(f"{lime_api}limetype/", headers={"X-API-Key": LIME_KEY}), 30, "Lime stand-in", processes)
    processes.start("receiver", [*cfg, "receiver"])
    receiver = f"http://127.0.0.1:{ports['receiver']}/"
    _wait_until(lambda: (r := _get(f"{receiver}readyz")) is not None and r.ok, 60, "receiver", processes)
    _subscribe(cfg, processes)
    metrics = [free_port() for _ in range(options.workers)]  # each worker process its own /metrics
    for i, port in enumerate(metrics):
        processes.start(f"worker-{i + 1}", [*cfg, "worker", "--name", f"worker-{i + 1}"],
                        {"BFUSLIME_WORKER__METRICS_PORT": str(port)})
    processes.start("bfus", [*cfg, "sandbox-bfus", "--db", str(workdir / "bfus.db"), "--admin-key", BFUS_ADMIN,
                             "--retry-pause", "0.5", "--seed", "2026", "--seed-customers", str(options.seed_customers)])
    bfus = f"http://127.0.0.1:{ports['bfus']}/"
    _wait_until(lambda: _get(f"{bfus}_admin/queue", headers={"X-Admin-Key": BFUS_ADMIN}), 30, "BFUS stand-in",
                processes)
    _wait_until(lambda: _consumers(broker) >= options.workers, 60, "workers", processes)

    print(f"""
Everything is up. Where to look:
  Configuration   {config_path}
                  every bfus-lime command in another terminal finds it after:
                  export BFUSLIME_CONFIG={config_path}
  Lime stand-in   {lime_api}   X-API-Key: {LIME_KEY}
                  e.g. curl -H 'X-API-Key: {LIME_KEY}' '{lime_api}limeobject/company/?_limit=5'
  RabbitMQ        {broker.url}
                  management UI: {_public(broker.management_url)} (guest / guest)
  Receiver        POST {receiver}bfus/messages   X-API-Key: {RECEIVER_KEY}   ({receiver}readyz)
  Failed messages {receiver}admin/   (admin / {ADMIN_PASSWORD}), or: bfus-lime dlq list
  Metrics         {receiver}metrics   workers: {', '.join(f'http://127.0.0.1:{p}/metrics' for p in metrics)}
                  (Prometheus text; what each means: docs/operations.md, Metrics)
  BFUS stand-in   {bfus}api/v1/customers   Authorization: Bearer {BFUS_TOKEN}
                  {options.seed_customers} customers it had before the integration reach Lime only by
                  bfus-lime migrate
  Lime -> BFUS    Lime's company events go to POST {receiver}lime/events, signed
                  (subscribed by bfus-lime webhooks register; see bfus-lime webhooks list);
                  a company with {MARK} = yes and no customer number is created in BFUS
  Logs            {processes.logdir}/
Sending {options.changes} changes (customers, facilities, contracts, meters) over {options.customers} customers \
at {options.rate:g}/s. Ctrl-C stops everything.
""", flush=True)
    response = requests.post(
        f"{bfus}_admin/changes",
        json={"count": options.changes, "customers": options.customers, "rate": options.rate,
              "objecttypes": ["customer", "facility", "contract", "meter"]},
        headers={"X-Admin-Key": BFUS_ADMIN},
        timeout=10,
    )
    response.raise_for_status()
    return _progress(options, config_path, lime_api, bfus, processes, stop)


def _subscribe(cfg: list[str], processes: Processes) -> None:
    """Lime's company events to the receiver, as an operator subscribes them."""
    done = subprocess.run([*BFUS_LIME, *cfg, "webhooks", "register"], capture_output=True, text=True, timeout=60)
    with open(processes.logdir / "webhooks.log", "a") as log:
        log.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"bfus-lime webhooks register failed: {done.stderr.strip() or done.stdout.strip()}")


def _public(url: str | None) -> str:
    if not url:
        return "(none)"
    return url.replace("guest:guest@", "")


def _consumers(broker: BrokerHandle) -> int:
    """Live workers: each consumes the presence queue."""
    try:
        return broker.queue_info(broker.url, "bfus.workers").get("consumers", 0)
    except Exception:
        return 0


class Progress:
    """What became of the messages `run` itself sent (BFUS queue ids 1..changes), a rate
    over the last seconds, and when to print: always on a terminal, else on a change
    (at most every 5 s) and once a minute."""

    WINDOW = 10.0  # seconds the rate is measured over

    def __init__(self, changes: int, tty: bool):
        self.changes = changes
        self.tty = tty
        self.samples: list[tuple[float, int]] = []
        self.last_print = float("-inf")
        self.last_counts: tuple[int, ...] = ()

    def rate(self, now: float, done: int) -> float:
        self.samples.append((now, done))
        self.samples = [s for s in self.samples if s[0] >= now - self.WINDOW]
        first_time, first_done = self.samples[0]
        return (done - first_done) / (now - first_time) if now > first_time else 0.0

    def line(self, now: float, delivered: int, pending: int, applied: int, failed: int, calls: int) -> str:
        rate = self.rate(now, applied + failed)
        return (f"queued {delivered:>5}/{self.changes}  applied {applied:>5}  failed {failed:>3}  "
                f"waiting in BFUS {pending:>4}  {rate:6.1f} msg/s  Lime calls {calls}")

    def due(self, now: float, counts: tuple[int, ...]) -> bool:
        """Whether to print the line of these counts (queued, pending, applied, failed)."""
        changed = counts != self.last_counts
        due = self.tty or (changed and now - self.last_print >= 5) or now - self.last_print >= 60
        if due:
            self.last_print, self.last_counts = now, counts
        return due


def _progress(options: RunOptions, config_path: Path, lime_api: str, bfus: str, processes: Processes,
              stop: threading.Event) -> int:
    admin = lime_api.split("/lime/api/v1/")[0] + "/_admin/"
    progress = Progress(options.changes, sys.stdout.isatty())
    started = time.monotonic()
    done_reported = False
    while not stop.is_set():
        problem = processes.check()
        if problem:
            raise RuntimeError(problem)
        queue = _get(f"{bfus}_admin/queue", headers={"X-Admin-Key": BFUS_ADMIN})
        # Only this run's messages: BFUS's queue ids 1..changes (others may post too).
        counts = _get(f"{admin}counts?max-messageid={options.changes}", headers={"X-Admin-Key": LIME_ADMIN})
        stats = _get(f"{admin}stats", headers={"X-Admin-Key": LIME_ADMIN})
        if queue is None or counts is None or stats is None:
            stop.wait(0.5)
            continue
        q, c = queue.json(), counts.json()
        applied, failed = c.get("bfusprocessedmessage", 0), c.get("bfusfailedmessage", 0)
        now = time.monotonic()
        shown = (min(q["delivered"], options.changes), q["pending"], applied, failed)
        line = progress.line(now, *shown, stats.json()["total"])
        if progress.due(now, shown):
            print("\r" + line + "\x1b[K" if progress.tty else line, end="" if progress.tty else "\n", flush=True)
        if applied + failed >= options.changes and not done_reported:
            done_reported = True
            print(f"\nAll {options.changes} changes are in Lime ({applied} processed, {failed} failed) "
                  f"after {now - started:.1f}s.", flush=True)
            if failed:
                print(f"  {failed} failed: changes to objects of the customers BFUS had before the integration, "
                      "which Lime gets from the migration.\n  See them with `bfus-lime dlq list`; then "
                      "`bfus-lime migrate` and `bfus-lime dlq requeue --reason missing_related`.", flush=True)
            jump_ok = _jump_example(config_path, lime_api)
            to_bfus_ok = _lime_user(options, config_path, lime_api, processes, stop)
            if options.until_done:
                return 0 if failed == 0 and to_bfus_ok and jump_ok else 1
            print("Still running so you can look around. Ctrl-C stops everything.", flush=True)
        stop.wait(0.5)
    return 0


def _jump_example(config_path: Path, lime_api: str) -> bool:
    """A synced customer's card in the Lime stand-in and the jump link the worker wrote
    on it, to click (docs/jump.md). False when no synced company has its link."""
    from shared.config import load_config
    from shared.lime import LimeClient

    config = load_config(config_path, environ={})
    prop = config.jump.links["company"]
    found = next((c for c in LimeClient(config.lime).iterate("company", {"_sort": "_id"}, 50)
                  if c.get("customerno") and c.get(prop)), None)
    if found is None:
        print("\nNo synced company has its jump link (company.bfuslink): see the worker logs.", flush=True)
        return False
    print(f"""
From Lime to BFUS (docs/jump.md): customer {found['customerno']}'s card in Lime, "Open in MFU" in its actionpad:
  {lime_api.replace("/api/v1/", "/web/")}company/{found['_id']}
  its jump link (signed; the receiver asks BFUS for a bookmark and opens it in MFU):
  {found[prop]}""", flush=True)
    return True


def _lime_user(options: RunOptions, config_path: Path, lime_api: str, processes: Processes,
               stop: threading.Event) -> bool:
    """The other direction: a simulated Lime user edits and creates companies, and a
    progress line shows what went to BFUS until all of it is there. True when every
    change reached BFUS."""
    if options.lime_edits + options.lime_creates == 0:
        return True
    from sandbox.limeuser import LimeUser
    from shared.config import load_config
    from shared.lime import LimeClient
    from shared.limemeta import check_against_lime

    config = load_config(config_path, environ={})
    lime = LimeClient(config.lime)
    mapper = check_against_lime(config, lime.limetypes())["customer"]
    user = LimeUser(lime, mapper, MARK, seed=2026)
    editable = [c for c in lime.iterate(mapper.limetype, {}) if user.editable(c)]
    edited = user.rng.sample(editable, min(options.lime_edits, len(editable)))
    print(f"\nNow a Lime user edits {len(edited)} companies and registers {options.lime_creates} new ones "
          f"({MARK} = yes); Lime's webhooks take them to BFUS:", flush=True)
    started = time.monotonic()
    for company in edited:
        user.edit(company)
    for _ in range(options.lime_creates):
        user.create()
    expected = sum(user.report.edits.values()) + len(user.report.created)
    admin = lime_api.split("/lime/api/v1/")[0] + "/_admin/"
    progress = Progress(expected, sys.stdout.isatty())
    while not stop.is_set():
        problem = processes.check()
        if problem:
            raise RuntimeError(problem)
        sent = _get(f"{admin}counts?direction=to_bfus", headers={"X-Admin-Key": LIME_ADMIN})
        linked = sum(1 for i in user.report.created if lime.get(mapper.limetype, i).get("customerno"))
        if sent is None:
            stop.wait(0.5)
            continue
        c = sent.json()
        done, refused = c.get("bfusprocessedmessage", 0), c.get("bfusfailedmessage", 0)
        now = time.monotonic()
        shown = (done, refused, linked)
        line = (f"to BFUS {done + refused:>3}/{expected}  sent {done:>3}  refused by BFUS {refused:>2}  "
                f"new customers linked {linked}/{len(user.report.created)}")
        if progress.due(now, shown):
            print("\r" + line + "\x1b[K" if progress.tty else line, end="" if progress.tty else "\n", flush=True)
        if done + refused >= expected and linked == len(user.report.created):
            refusals = f", {refused} refused (see `bfus-lime dlq list`)" if refused else ""
            print(f"\nThe Lime user's {user.report.summary()} reached BFUS after {now - started:.1f}s: "
                  f"{done} sent{refusals}; the new customers' numbers are written back to their companies. "
                  "BFUS's change messages for them came back and stopped there (no echo).", flush=True)
            return refused == 0 and not user.report.refused
        stop.wait(0.5)
    return False
