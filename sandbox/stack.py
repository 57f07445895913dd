"""The whole integration in one process, over real HTTP and a real broker: the Lime
and BFUS stand-ins, the receiver and N workers. Tests and benchmarks build on it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import requests

from receiver.app import close_app, create_app
from receiver.server import waitress_options
from sandbox.bfus.app import BfusSandboxSettings, BfusStandIn
from sandbox.lime.app import LimeSandboxSettings, LimeStandIn
from sandbox.serve import ServerThread
from shared.config import Config, build_config, deep_merge
from shared.jumplinks import JumpLinks
from shared.lime import LimeClient
from shared.subscriptions import Subscriptions, Wanted
from shared.topology import Topology, connection_parameters
from worker.factory import WorkerProcess, build_worker

RECEIVER_KEY = "dev-receiver-key"
WEBHOOK_SECRET = "dev-lime-webhook-secret"
JUMP_SECRET = "dev-jump-link-secret"
# The stand-in Lime's link property on each synced limetype (sandbox/lime/default_schema.toml).
JUMP_LINKS = {"company": "bfuslink", "agreement": "bfuslink", "facility": "bfuslink", "meter": "bfuslink"}
BFUS_LIME = [sys.executable, "-m", "cli"]  # the bfus-lime command, run by this Python


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming
    ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class Stack:
    def __init__(
        self,
        amqp_url: str,
        workdir: str | Path,
        partitions: int = 4,
        config: dict[str, Any] | None = None,
        lime_settings: dict[str, Any] | None = None,
        bfus_retry_pause: float = 0.05,
        seed: int = 7,
        management_url: str = "",
        outbound: bool = False,
        jump: bool = False,
    ):
        """``outbound``: Lime -> BFUS on (docs/lime-to-bfus.md); call
        :meth:`subscribe_webhooks` for Lime to send its events. ``jump``: the jump to
        BFUS on (docs/jump.md), every write setting the stand-in Lime's link properties."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lime = LimeStandIn(LimeSandboxSettings(db_path=self.workdir / "lime.db", **(lime_settings or {})))
        self.lime.start()
        self.receiver_server: ServerThread | None = None
        self.receiver_port = _reserve_port()
        bfus_port = _reserve_port()
        raw: dict[str, Any] = {
            "broker": {"url": amqp_url, "partitions": partitions, "confirm_timeout": 5.0, "heartbeat": 10,
                       "management_url": management_url},
            "receiver": {"api_key": RECEIVER_KEY, "port": self.receiver_port, "retry_after": 1},
            "lime": {"url": self.lime.api_url, "api_key": self.lime.api_key, "rate_limit": 1000.0,
                     "read_timeout": 5.0},
            "worker": {"retry_initial": 0.05, "retry_max": 0.5, "shutdown_timeout": 10.0,
                       "rebalance_interval": 0.25, "concurrency": 8},
            "bfus": {"url": f"http://127.0.0.1:{bfus_port}/", "token": BfusSandboxSettings.token,
                     "ui_url": f"http://127.0.0.1:{bfus_port}/mfu/"},  # the stand-in's default
        }
        if outbound:
            raw["receiver"].update(lime_secret=WEBHOOK_SECRET, deliveries_db=str(self.workdir / "deliveries.sqlite"))
            raw["outbound"] = {"enabled": True, "create_when": "sendtobfus", "sweep_interval": 0}
        if jump:
            raw["receiver"]["public_url"] = f"http://127.0.0.1:{self.receiver_port}/"
            raw["jump"] = {"secret": JUMP_SECRET, "links": JUMP_LINKS}
        self.raw = deep_merge(raw, config or {})
        self.config: Config = build_config(self.raw, environ={})
        self.children: list[ChildProcess] = []
        self.bfus = BfusStandIn(
            BfusSandboxSettings(
                db_path=self.workdir / "bfus.db",
                target_url=f"http://127.0.0.1:{self.receiver_port}/bfus/messages",
                api_key=RECEIVER_KEY,
                retry_pause=bfus_retry_pause,
                seed=seed,
            ),
            port=bfus_port,
        )
        self.receiver_app: Any = None
        self.workers: list[WorkerProcess] = []

    # ------------------------------------------------------------------ parts

    def start_receiver(self) -> None:
        self.receiver_app = create_app(self.config)
        options = waitress_options(self.config, self.config.receiver.threads)
        self.receiver_server = ServerThread(self.receiver_app, "127.0.0.1", self.receiver_port, options=options).start()
        wait_for(lambda: self.receiver_app.extensions["publisher"].ready, 30, "the receiver to reach RabbitMQ")

    def start_worker(self, name: str | None = None) -> WorkerProcess:
        process = build_worker(self.config, name or f"worker-{len(self.workers) + 1}", lime_wait=30)
        process.start_thread()
        wait_for(lambda: process.worker.connected, 30, "the worker to connect")
        self.workers.append(process)
        return process

    def spawn_worker(self, name: str | None = None) -> WorkerChild:
        """A worker in a process of its own (``bfus-lime worker``), configured by
        environment variables, so that it can be SIGKILLed."""
        child = WorkerChild(name or f"proc-{len(self.children) + 1}", config_environment(self.raw), self.workdir)
        self.children.append(child)
        return child

    def spawn_receiver(self, processes: int = 2, threads: int = 2, **receiver: Any) -> ReceiverChild:
        """The receiver as production runs it (``bfus-lime receiver``: gunicorn
        processes), on this stack's receiver port, configured by environment."""
        raw = deep_merge(self.raw, {"receiver": {"processes": processes, "threads": threads, **receiver}})
        child = ReceiverChild(f"receiver-{len(self.children) + 1}", config_environment(raw), self.workdir,
                              self.receiver_url, processes)
        self.children.append(child)
        child.wait_ready()
        return child

    def subscribe_webhooks(self, signature: str = "v2") -> int:
        """Lime's company events to this stack's receiver, signed with its secret (as
        ``bfus-lime webhooks register`` subscribes; ``signature`` picks the stand-in's scheme)."""
        wanted = Wanted(f"{self.receiver_url}lime/events", self.config.receiver.lime_secret,
                        extra={"signature": signature})
        return Subscriptions(LimeClient(self.config.lime)).register(wanted).subscription_id

    def start(self, workers: int = 1, post: bool = True) -> Stack:
        self.start_receiver()
        for _ in range(workers):
            self.start_worker()
        self.bfus.start()
        if not post:
            self.bfus.poster.pause()
        return self

    def stop(self) -> None:
        self.bfus.stop()
        for child in self.children:
            child.kill()
        for process in self.workers:
            process.stop()
        for process in self.workers:
            process.join(self.config.worker.shutdown_timeout + 5)
        if self.receiver_server is not None:
            self.receiver_server.stop()
        if self.receiver_app is not None:
            close_app(self.receiver_app)
        self.lime.close()

    # ------------------------------------------------------------------ reading

    @property
    def receiver_url(self) -> str:
        return f"http://127.0.0.1:{self.receiver_port}/"

    def post(self, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> requests.Response:
        sent = {"Content-Type": "application/json", "X-API-Key": RECEIVER_KEY, **(headers or {})}
        data = raw if raw is not None else requests.models.complexjson.dumps(body).encode()
        return requests.post(f"{self.receiver_url}bfus/messages", data=data, headers=sent, timeout=30)

    def owners(self) -> dict[int, str | None]:
        """Partition -> the worker holding it (None when free), from the broker."""
        from shared.inspect import owners

        return owners(self.config.broker, self.config.broker.management_url)

    def lime_objects(self, limetype: str) -> list[dict[str, Any]]:
        return self.lime.store.all_objects(limetype)

    def outdated_jump_links(self) -> list[tuple[str, int]]:
        """(limetype, id) of each synced Lime object (one with a BFUS key) of a linked
        limetype whose link property is not its jump address under the stack's
        configuration (docs/jump.md)."""
        links = JumpLinks(self.config.jump, self.config.receiver.public_url)
        keys = {o.limetype: o.key for o in self.config.mapping.objects.values() if o.sync}
        return [(limetype, o["_id"]) for limetype, prop in sorted(self.config.jump.links.items())
                for o in self.lime_objects(limetype)
                if o.get(keys[limetype]) and o.get(prop) != links.url(limetype, o["_id"])]

    def log_records(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return (
            self.lime_objects(self.config.lime.processed_limetype),
            self.lime_objects(self.config.lime.failed_limetype),
        )

    def logged_count(self) -> int:
        store = self.lime.store
        return store.count(self.config.lime.processed_limetype) + store.count(self.config.lime.failed_limetype)

    def wait_logged(self, count: int, timeout: float = 60) -> None:
        wait_for(lambda: self.logged_count() >= count, timeout, f"{count} log records in Lime")

    def quiet(self, bfus_queue: bool = True) -> bool:
        """Nothing waiting anywhere: BFUS's queue delivered (unless ``bfus_queue`` is
        False: a test holding BFUS's messages back), Lime's webhooks sent, every
        partition queue empty, the in-process workers done with what they took and
        with at least as many messages as the receiver and they queued (this stack's
        in-process receiver and workers only)."""
        if bfus_queue and self.bfus.store.queue_status()["pending"]:
            return False
        if self.lime.app.extensions["lime_webhooks"].pending():
            return False
        live = [w for w in self.workers if w.thread is None or w.thread.is_alive()]
        if any(w.worker.received != w.worker.settled for w in live):  # an ended one's went back to the broker
            return False
        exchange = Topology.from_config(self.config.broker).exchange
        publishers = [w.publisher for w in self.workers] + [self.receiver_app.extensions["publisher"]]
        if sum(w.worker.settled for w in self.workers) < sum(p.confirmed[exchange] for p in publishers):
            return False  # queued, and already on its way to a worker (neither ready nor taken yet)
        connection = pika.BlockingConnection(connection_parameters(self.config.broker, "stack"))
        try:
            channel = connection.channel()
            topology = Topology.from_config(self.config.broker)
            return all(channel.queue_declare(q, passive=True).method.message_count == 0
                       for q in [*topology.partition_queues, topology.invalid_queue])
        finally:
            connection.close()

    def wait_quiet(self, timeout: float = 60, checks: int = 3) -> None:
        """Until :meth:`quiet` holds ``checks`` times in a row (a message on its way
        between two places is seen by one of them at the next look)."""
        for _ in range(checks):
            wait_for(self.quiet, timeout, "every message to be handled", interval=0.1)

    def wait_delivered(self, timeout: float = 60) -> None:
        wait_for(lambda: self.bfus.store.queue_status()["pending"] == 0, timeout, "BFUS to deliver its queue")


def config_environment(raw: dict[str, Any], prefix: str = "BFUSLIME_") -> dict[str, str]:
    """A configuration tree as BFUSLIME_<SECTION>__<KEY> environment variables."""
    env: dict[str, str] = {}
    for key, value in raw.items():
        name = f"{prefix}{key.upper()}"
        if isinstance(value, dict):
            env.update(config_environment(value, name + "__"))
        elif isinstance(value, bool):
            env[name] = "true" if value else "false"
        elif isinstance(value, list):
            env[name] = json.dumps(value)
        else:
            env[name] = str(value)
    return env


class ChildProcess:
    """A ``bfus-lime`` command in a process of its own, its output in
    ``<workdir>/<name>.log``."""

    def __init__(self, name: str, args: list[str], config_env: dict[str, str], workdir: Path):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BFUSLIME_", "RABBITMQ_URL"))}
        env.update(config_env)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([*BFUS_LIME, *args], env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, event: str, timeout: float = 30) -> None:
        wait_for(lambda: event in self.log_text() or self.process.poll() is not None, timeout, f"{self.name}: {event}")
        if event not in self.log_text():
            raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{self.log_text()[-2000:]}")

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


class WorkerChild(ChildProcess):
    """A ``bfus-lime worker`` process."""

    def __init__(self, name: str, config_env: dict[str, str], workdir: Path):
        super().__init__(name, ["worker", "--name", name], config_env, workdir)


class ReceiverChild(ChildProcess):
    """``bfus-lime receiver``: a gunicorn master and its processes."""

    def __init__(self, name: str, config_env: dict[str, str], workdir: Path, url: str, count: int):
        super().__init__(name, ["receiver"], config_env, workdir)
        self.url = url
        self.count = count  # serving processes

    def wait_ready(self, timeout: float = 60) -> None:
        """Until every serving process is connected to RabbitMQ (each logs it with its
        pid) and ``/readyz`` answers 200."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.process.returncode}):\n{self.log_text()[-2000:]}")
            pids = self.processes()
            connected = set(re.findall(r"event='broker_connected' pid=(\d+)", self.log_text()))
            if len(pids) != self.count or not {str(p) for p in pids} <= connected:
                return False
            try:
                return requests.get(f"{self.url}readyz", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, timeout, f"{self.name} to be ready")

    def processes(self) -> set[int]:
        """The pids of the gunicorn master's serving processes."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in path.read_text().split()} if path.exists() else set()

    def kill(self) -> None:
        """Stop the master and its processes (SIGKILL to the master would orphan them)."""
        children = self.processes()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._log.close()


def _reserve_port() -> int:
    from sandbox.broker import free_port

    return free_port()
