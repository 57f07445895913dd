"""Wiring a worker process together from the configuration."""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from typing import Any

from shared.bfus import BfusClient
from shared.config import Config, ConfigError, LimeConfig, RetentionConfig
from shared.jumplinks import JumpLinks
from shared.lime import CircuitBreaker, LimeClient, LimeUnavailable
from shared.limeevents import customer_keys
from shared.limemeta import check_against_lime, fetch_limetypes
from shared.logs import get_logger
from shared.metrics import serve
from shared.publisher import ConfirmedPublisher
from shared.topology import Topology
from worker.apply import Applier
from worker.consumer import Worker
from worker.handle import LimeErrors, MessageHandler
from worker.metrics import metrics
from worker.outbound import Outbound
from worker.records import LogWriter
from worker.retention import purge_on_schedule
from worker.sweep import Sweep, sweep_on_schedule

log = get_logger(component="worker")


@dataclass
class WorkerProcess:
    worker: Worker
    publisher: ConfirmedPublisher
    lime: LimeClient
    lime_config: LimeConfig
    retention: RetentionConfig
    sweep: Sweep | None = None
    sweep_interval: float = 0.0
    thread: threading.Thread | None = None

    def run(self) -> None:
        if self.retention.days > 0:
            threading.Thread(target=purge_on_schedule, name="retention", daemon=True, args=(
                self.lime, self.lime_config, self.retention, lambda: 0 in self.worker.owned_partitions(),
                self.worker.stopping)).start()
        if self.sweep is not None and self.sweep_interval > 0:
            threading.Thread(target=sweep_on_schedule, name="sweep", daemon=True, args=(
                self.sweep, self.sweep_interval, lambda: 0 in self.worker.owned_partitions(),
                self.worker.stopping)).start()
        try:
            self.worker.run()
        finally:
            self.publisher.stop()

    def start_thread(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name=f"worker:{self.worker.name}", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        self.worker.stop()

    def join(self, timeout: float) -> bool:
        """Wait for a worker started with start_thread; True when it has ended."""
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True


def build_worker(
    config: Config, name: str = "worker", lime_wait: float | None = 60.0, stop: threading.Event | None = None
) -> WorkerProcess:
    if not config.lime.api_key:
        raise ConfigError(["lime.api_key: Must be set (config file or BFUSLIME_LIME__API_KEY)."])
    breaker = CircuitBreaker(config.worker.breaker_threshold, config.worker.retry_initial, config.worker.retry_max)
    lime = LimeClient(config.lime, pool_size=config.broker.partitions + 4, breaker=breaker)
    mappers = check_against_lime(config, fetch_limetypes(lime, lime_wait, stop))
    topology = Topology.from_config(config.broker)
    publisher = ConfirmedPublisher(config.broker, f"{name} dead letters").start()
    personal = config.mapping.exclude_personal_data
    links = JumpLinks(config.jump, config.receiver.public_url)
    outbound = None
    if config.outbound.enabled:
        bfus = BfusClient(config.bfus, timeout=(config.lime.connect_timeout, config.lime.read_timeout), stop=stop)
        outbound = Outbound(lime, bfus, mappers["customer"], config.outbound.create_when, links)
    handler = MessageHandler(
        Applier(lime, mappers, exclude_personal=personal, link_by_identity=bool(config.outbound.create_when),
                links=links, skip_unchanged=config.worker.skip_unchanged),
        LogWriter(lime, config.lime, exclude_personal=personal, directions=config.outbound.enabled),
        publisher,
        topology,
        config.worker,
        LimeErrors(lime, config.worker.lime_error_attempts),
        outbound,
    )
    worker = Worker(config.broker, config.worker, config.lime, handler, name, lime)
    metrics().watch(config.broker.partitions, lambda: len(worker.owned_partitions()), lambda: breaker.is_open)
    sweep = Sweep(lime, publisher, topology, outbound, customer_keys(config.mapping)) if outbound is not None else None
    return WorkerProcess(worker, publisher, lime, config.lime, config.retention, sweep, config.outbound.sweep_interval)


def run_worker(config: Config, name: str = "worker") -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully. Waits for Lime at start-up
    for as long as it takes (a signal ends the wait)."""
    stopping = threading.Event()
    built: list[WorkerProcess] = []

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("worker_signal", signal=signal.Signals(signum).name)
        stopping.set()
        for process in built:
            process.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        process = build_worker(config, name, lime_wait=None, stop=stopping)
    except LimeUnavailable:
        if stopping.is_set():
            return
        raise
    built.append(process)
    if config.worker.metrics_port:
        serve(config.worker.metrics_port)
        log.info("metrics_served", port=config.worker.metrics_port)
    if stopping.is_set():
        process.stop()
    process.run()
