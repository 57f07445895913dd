"""A RabbitMQ broker for development and tests, found in this order:

1. ``RABBITMQ_URL`` when it is set (management API at ``RABBITMQ_MANAGEMENT_URL`` or
   port 15672 of the same host);
2. a testcontainers RabbitMQ when a Docker engine answers;
3. a private node from the Debian ``rabbitmq-server`` package, with its own node name,
   free ports and a data folder owned by the ``rabbitmq`` user, removed afterwards.

The machine's default node is never used."""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import pika
import requests

from shared.logs import get_logger

log = get_logger(component="broker")

SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/lib/rabbitmq/sbin/rabbitmq-server")


class BrokerSetupError(RuntimeError):
    pass


def _ephemeral_ports() -> range:
    """The ports Linux gives outgoing connections (/proc/sys/net/ipv4/ip_local_port_range)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_port() -> int:
    """A port nothing listens on now, below the ephemeral range: a port the kernel
    handed out free (bound to 0) may, before our server binds it, become the local port
    of one of the many outgoing connections a test makes (EADDRINUSE)."""
    ephemeral = _ephemeral_ports()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(10001, ephemeral.start))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_server_binary() -> Path | None:
    for candidate in SERVER_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    return Path(found) if found else None


def install_rabbitmq() -> Path:
    """Install the Debian package (root only). Returns the server binary."""
    binary = find_server_binary()
    if binary:
        return binary
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BrokerSetupError(
            "No RabbitMQ found. Set RABBITMQ_URL, or install it: apt-get install -y rabbitmq-server"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log.info("installing_rabbitmq_server")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "rabbitmq-server"]
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run(cmd, env=env, check=True)
    binary = find_server_binary()
    if not binary:
        raise BrokerSetupError("rabbitmq-server was installed but its binary was not found")
    return binary


def amqp_reachable(url: str, timeout: float = 2.0) -> bool:
    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.connection_attempts = 1
    try:
        pika.BlockingConnection(params).close()
        return True
    except Exception:
        return False


def _with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), parts.query, ""))


def _vhost_path(url: str) -> str:
    """The virtual host of an AMQP URL (the first, of a cluster's comma-separated ones),
    quoted as the management API's paths take it."""
    return urlsplit(url.split(",")[0]).path.lstrip("/") or "%2F"


@dataclass
class BrokerHandle:
    """A broker the project may use: its AMQP URL, its management API, and (for a
    private node) the power to stop and start it."""

    url: str  # for a cluster, every node's address, comma-separated
    management_url: str | None
    kind: str
    node: PrivateNode | None = None
    container: object | None = None
    cluster: PrivateCluster | None = None
    _vhosts: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- vhosts

    def _management(self, method: str, path: str, **kwargs) -> requests.Response:
        if not self.management_url:
            raise BrokerSetupError("this broker has no management API")
        parts = urlsplit(self.management_url)
        auth = (parts.username or "guest", parts.password or "guest")
        base = urlunsplit((parts.scheme, (parts.hostname or "") + (f":{parts.port}" if parts.port else ""), "", "", ""))
        # A cluster whose node just came back can take its time over a new virtual host.
        response = requests.request(method, f"{base}/api/{path}", auth=auth, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def create_vhost(self, name: str | None = None) -> str:
        """A fresh virtual host; returns its AMQP URL."""
        name = name or f"test-{uuid.uuid4().hex[:10]}"
        user = urlsplit(self.url).username or "guest"
        self._management("PUT", f"vhosts/{quote(name, safe='')}")
        self._management(
            "PUT",
            f"permissions/{quote(name, safe='')}/{quote(user, safe='')}",
            json={"configure": ".*", "write": ".*", "read": ".*"},
        )
        self._vhosts.append(name)
        return ",".join(_with_vhost(url, name) for url in self.url.split(","))

    def delete_vhost(self, url: str) -> None:
        name = unquote(urlsplit(url.split(",")[0]).path.lstrip("/"))
        with contextlib.suppress(Exception):
            self._management("DELETE", f"vhosts/{quote(name, safe='')}")
        if name in self._vhosts:
            self._vhosts.remove(name)

    def queue_names(self, vhost_url: str) -> set[str]:
        """The names of the queues of a virtual host (management API)."""
        vhost = _vhost_path(vhost_url)
        return {q["name"] for q in self._management("GET", f"queues/{vhost}", params={"columns": "name"}).json()}

    def queue_info(self, vhost_url: str, queue: str) -> dict:
        """The management API's view of a queue: messages, consumers, ..."""
        vhost = _vhost_path(vhost_url)
        return self._management("GET", f"queues/{vhost}/{quote(queue, safe='')}").json()

    # ---------------------------------------------------------------- outages

    @property
    def can_stop(self) -> bool:
        return self.node is not None

    def stop_app(self) -> None:
        """Stop the broker application (connections drop, data stays)."""
        if self.node is None:
            raise BrokerSetupError("only a private node can be stopped by the tests")
        self.node.ctl("stop_app")

    def start_app(self) -> None:
        if self.node is None:
            raise BrokerSetupError("only a private node can be started by the tests")
        self.node.ctl("start_app")
        self.node.wait_amqp(60)

    def restart(self) -> None:
        """Restart the broker process (a private node only); its data survives."""
        if self.node is None:
            raise BrokerSetupError("only a private node can be restarted by the tests")
        self.node.restart()

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.node is not None:
            self.node.stop()
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.stop()  # type: ignore[attr-defined]


class PrivateNode:
    """A RabbitMQ node of our own: own node name, ports and data folder."""

    def __init__(
        self,
        amqp_port: int | None = None,
        management_port: int | None = None,
        base_dir: str | Path | None = None,
        management: bool = True,
        extra_conf: dict[str, str] | None = None,
        rabbit_env: dict[str, str] | None = None,
        cookie: str | None = None,
    ) -> None:
        """``extra_conf``: rabbitmq.conf settings; ``rabbit_env``: settings of the
        rabbit application that only advanced.config takes (Erlang terms as text),
        e.g. ``{"channel_tick_interval": "500"}``; ``cookie``: the Erlang cookie, the
        same for the nodes of one cluster (else the node makes its own)."""
        self.binary = find_server_binary()
        if self.binary is None:
            raise BrokerSetupError(
                "rabbitmq-server is not installed. As root: apt-get install -y rabbitmq-server "
                "(make run and make test do this), or set RABBITMQ_URL."
            )
        self.ctl_binary = self.binary.with_name("rabbitmqctl")
        self._own_ports = amqp_port is None and management_port is None
        self._started = False
        self.amqp_port = amqp_port or free_port()
        self.management_port = management_port or free_port()
        self.dist_port = free_port()
        self.management = management
        self.extra_conf = extra_conf or {}
        self.rabbit_env = rabbit_env or {}
        self.nodename = f"bfuslime-{os.getpid()}-{uuid.uuid4().hex[:6]}@localhost"
        self._own_dir = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="bfus-lime-rabbitmq-"))
        self.process: subprocess.Popen | None = None
        self.user = self._node_user()
        self.cookie = cookie

    @staticmethod
    def _node_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("rabbitmq")
        except KeyError:
            return None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def management_url(self) -> str | None:
        return f"http://guest:guest@127.0.0.1:{self.management_port}/" if self.management else None

    def _env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_") and not k.startswith("ERL_")
        }
        env.update(
            HOME=str(self.base),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(self.base / "plugins-expand"),
            RABBITMQ_PID_FILE=str(self.base / "rabbitmq.pid"),
            RABBITMQ_LOGS="-",
        )
        return env

    def _as_node_user(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--init-groups", *argv]

    def _prepare(self) -> None:
        for sub in ("mnesia", "log", "plugins-expand"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        conf = {
            "listeners.tcp.default": f"127.0.0.1:{self.amqp_port}",
            "loopback_users": "none",
            "log.console": "true",
            "log.console.level": "warning",
            "log.file": "false",
            "collect_statistics_interval": "1000",  # management counts within a second
        }
        if self.management:
            conf["management.tcp.port"] = str(self.management_port)
            conf["management.tcp.ip"] = "127.0.0.1"
        conf.update(self.extra_conf)
        (self.base / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
        rabbit = ", ".join(f"{{{k}, {v}}}" for k, v in self.rabbit_env.items())
        (self.base / "advanced.config").write_text(f"[{{rabbit, [{rabbit}]}}].\n" if rabbit else "[].\n")
        plugins = "[rabbitmq_management]." if self.management else "[]."
        (self.base / "enabled_plugins").write_text(plugins + "\n")
        if self.cookie:  # $HOME/.erlang.cookie, read by the node and by rabbitmqctl
            cookie = self.base / ".erlang.cookie"
            cookie.write_text(self.cookie)
            os.chmod(cookie, 0o400)
        os.chmod(self.base, 0o755)
        if self.user is not None:
            for path in [self.base, *self.base.rglob("*")]:
                os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def start(self, timeout: float = 90.0) -> PrivateNode:
        for attempt in range(3):
            try:
                return self._start(timeout)
            except BrokerSetupError as err:
                # A port picked free may since be another socket's (an outgoing connection's
                # ephemeral port): a node never started takes new ones; a started one keeps its own.
                if "eaddrinuse" not in str(err) or attempt == 2 or self._started or not self._own_ports:
                    raise
                self._log.close()
                self.amqp_port, self.management_port, self.dist_port = free_port(), free_port(), free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> PrivateNode:
        self._prepare()
        self._log = open(self.base / "server.out", "wb")
        self.process = subprocess.Popen(
            self._as_node_user([str(self.binary)]),
            env=self._env(),
            cwd=self.base,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_amqp(timeout)
        self._started = True
        log.info("private_node_started", node=self.nodename, port=self.amqp_port)
        return self

    def wait_amqp(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerSetupError(f"RabbitMQ node exited during start-up:\n{self.tail()}")
            if amqp_reachable(self.url, timeout=1.0):
                return
            time.sleep(0.25)
        raise BrokerSetupError(f"RabbitMQ node did not accept connections within {timeout:.0f}s:\n{self.tail()}")

    def restart(self, timeout: float = 90.0) -> None:
        """Stop the node politely (its data stays) and start it again on the same ports."""
        process = self.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(60)
        self._log.close()
        self.start(timeout)

    def tail(self, lines: int = 30) -> str:
        try:
            text = (self.base / "server.out").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        result = subprocess.run(
            self._as_node_user([str(self.ctl_binary), "-n", self.nodename, *args]),
            env=self._env(),
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise BrokerSetupError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout}")
        return result.stdout

    def kill(self) -> None:
        """SIGKILL the node (its data stays; :meth:`start` brings it back)."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self, timeout: float = 30.0) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            # A node whose data folder is about to be removed need not shut down politely.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL if self._own_dir else signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        self.process = None
        if getattr(self, "_log", None):
            self._log.close()
        if self._own_dir:
            shutil.rmtree(self.base, ignore_errors=True)


class PrivateCluster:
    """``size`` private nodes joined into one cluster (a shared Erlang cookie, each
    node its own name, ports and data folder; the others join the first with
    ``rabbitmqctl join_cluster``), removed by :meth:`stop`."""

    def __init__(self, size: int = 3, management: bool = True,
                 extra_conf: dict[str, str] | None = None) -> None:
        cookie = uuid.uuid4().hex.upper()
        self.nodes = [PrivateNode(management=management, extra_conf=extra_conf, cookie=cookie) for _ in range(size)]

    def start(self, timeout: float = 120.0) -> PrivateCluster:
        errors: list[BaseException] = []

        def start(node: PrivateNode) -> None:
            try:
                node.start(timeout)
            except BaseException as err:  # reported below, after every start has ended
                errors.append(err)

        threads = [threading.Thread(target=start, args=(node,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            self.stop()
            raise errors[0]
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("reset")
            node.ctl("join_cluster", first.nodename)
            node.ctl("start_app")
            node.wait_amqp(timeout)
        log.info("private_cluster_started", nodes=[node.nodename for node in self.nodes])
        return self

    def heal(self, timeout: float = 120.0) -> None:
        """Start every node that is not running, then wait until each sees all of them."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                node.start(timeout)
        for node in self.nodes:
            node.ctl("await_online_nodes", str(len(self.nodes)), timeout=timeout)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """Every node's address, comma-separated, as broker.url takes them."""
        return ",".join(self.urls)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _docker_answers() -> bool:
    try:
        import docker  # installed with testcontainers

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


def _start_container() -> BrokerHandle:
    from testcontainers.rabbitmq import RabbitMqContainer

    container = RabbitMqContainer("rabbitmq:4.1-management").with_exposed_ports(15672)
    container.start()
    host = container.get_container_host_ip()
    amqp = container.get_exposed_port(5672)
    mgmt = container.get_exposed_port(15672)
    return BrokerHandle(
        url=f"amqp://guest:guest@{host}:{amqp}/%2F",
        management_url=f"http://guest:guest@{host}:{mgmt}/",
        kind="container",
        container=container,
    )


def provide_broker(
    allow_container: bool = True,
    install: bool = False,
    extra_conf: dict[str, str] | None = None,
    amqp_port: int | None = None,
    management_port: int | None = None,
    nodes: int = 1,
) -> BrokerHandle:
    """The broker to use, per the module docstring; ``nodes`` > 1 starts a private
    cluster of that many nodes (where no RABBITMQ_URL names one). Call ``close()``
    when done."""
    url = os.environ.get("RABBITMQ_URL")
    if url:
        management = os.environ.get("RABBITMQ_MANAGEMENT_URL")
        if not management:
            parts = urlsplit(url)
            management = f"http://{parts.username or 'guest'}:{parts.password or 'guest'}@{parts.hostname}:15672/"
        return BrokerHandle(url=url, management_url=management, kind="url")
    if nodes == 1 and allow_container and _docker_answers():
        return _start_container()
    if install:
        install_rabbitmq()
    if nodes > 1:
        cluster = PrivateCluster(nodes, extra_conf=extra_conf).start()
        # The last node's management API: tests and the soak stop the first ones.
        return BrokerHandle(url=cluster.url, management_url=cluster.nodes[-1].management_url, kind="private cluster",
                            cluster=cluster)
    node = PrivateNode(amqp_port=amqp_port, management_port=management_port, extra_conf=extra_conf).start()
    return BrokerHandle(url=node.url, management_url=node.management_url, kind="private", node=node)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks run and a private node
    started by this process is stopped and removed rather than left behind."""
    import sys

    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
