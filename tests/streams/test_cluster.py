"""A three-node JetStream cluster: R3 topology, a comma-separated NATS_URL, a stream leader's crash.

One cluster (tools/nats_cluster.py) serves the module; the test that kills a node runs last and brings it
back. Select these tests with `-k cluster` or by path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js.api import PubAck

from streams import subjects, topology
from streams.connection import NatsSettings, connect, server_info
from tests.services import NATS_AUTH, NatsCluster, NatsServer, refusing_port
from tests.web.helpers import wait_for

pytestmark = pytest.mark.timeout(90)

STREAMS = (
    subjects.STREAM,
    subjects.DLQ_STREAM,
    topology.kv_stream_name(subjects.SENT_BUCKET),
    topology.kv_stream_name(subjects.STATE_BUCKET),
    topology.kv_stream_name(subjects.REPLIES_BUCKET),
)
NODES = {"n1", "n2", "n3"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three nats-servers routed into one JetStream cluster; ready (meta leader elected) when yielded."""
    with NatsCluster(tmp_path_factory.mktemp("nats-cluster"), auth=NATS_AUTH) as running:
        yield running


@pytest_asyncio.fixture
async def client(cluster: NatsCluster) -> AsyncIterator[Client]:
    """A client as every process connects: streams.connection.connect with the comma-separated NATS_URL."""
    nc = await connect(NatsSettings.model_validate({"NATS_URL": cluster.url}), name="test-cluster", identity="streams")
    try:
        yield nc
    finally:
        await nc.close()


def streams_cli(*args: str, nats_url: str, replicas: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"NATS_URL", "NATS_STREAM_REPLICAS"}}
    env["NATS_URL"] = nats_url
    if replicas is not None:
        env["NATS_STREAM_REPLICAS"] = str(replicas)
    return subprocess.run(
        [sys.executable, "-m", "streams", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def block_of(text: str, heading: str) -> list[str]:
    """The heading line of `status` that starts with `heading`, then its indented peer lines."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(heading))
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        block.append(line.strip())
    return block


def test_cluster_config_routes_each_node_to_the_other_two(tmp_path) -> None:
    """Each node's config: its server_name, its own store dir, a cluster port, routes to the two others."""
    nodes = NatsCluster(tmp_path, auth=NATS_AUTH)
    configs = {node.name: nodes.config(node) for node in nodes.nodes}

    assert set(configs) == NODES
    ports = {node.name: node.cluster_port for node in nodes.nodes}
    assert len(set(ports.values())) == 3
    for node in nodes.nodes:
        config = configs[node.name]
        assert f'server_name: "{node.name}"' in config
        assert f'store_dir: "{tmp_path / node.name}"' in config
        assert f'listen: "127.0.0.1:{node.cluster_port}"' in config
        routes = {name for name, port in ports.items() if f"nats-route://127.0.0.1:{port}" in config}
        assert routes == NODES - {node.name}


async def test_cluster_bootstrap_makes_everything_r3_and_status_shows_every_replica(
    cluster: NatsCluster,
) -> None:
    """NATS_STREAM_REPLICAS=3 bootstrap over the comma-separated NATS_URL; `status` names each leader and replica."""
    booted = streams_cli("bootstrap", nats_url=cluster.url, replicas=3)
    assert booted.returncode == 0, booted.stderr
    for name in STREAMS:
        info = await cluster.wait_stream_current(name)
        assert info.leader in NODES
        assert {peer.name for peer in info.replicas} == NODES - {info.leader}
    for name in STREAMS:
        assert (await cluster.stream_info(name)).config.num_replicas == 3, name

    text = streams_cli("status", nats_url=cluster.url)
    as_json = streams_cli("status", "--json", nats_url=cluster.url)

    assert text.returncode == 0, text.stderr
    print(text.stdout)
    assert "stream   TODOS: 0 messages" in text.stdout
    assert "3 replica(s)" in text.stdout
    assert f"cluster {cluster.name}:" in text.stdout
    heading, *peers = block_of(text.stdout, "stream TODOS (R3): leader n")
    leader = heading.rsplit(" ", 1)[1]
    assert leader in NODES
    assert peers[0].split() == [leader, "leader"]
    assert {peer.split()[0] for peer in peers} == NODES
    assert [peer.split()[1] for peer in peers[1:]] == ["current", "current"]
    for name in STREAMS[1:]:
        assert len(block_of(text.stdout, f"stream {name} (R3): leader n")) == 4, name
    assert len(block_of(text.stdout, f"consumer {subjects.STREAM}/{subjects.CONSUMER} (R3): leader n")) == 4

    assert as_json.returncode == 0, as_json.stderr
    state = json.loads(as_json.stdout)
    assert state["stream"]["replicas"] == 3
    assert state["cluster"]["name"] == cluster.name
    assert set(state["cluster"]["streams"]) == set(STREAMS)
    for name, group in state["cluster"]["streams"].items():
        assert group["replicas"] == 3, name
        assert group["leader"] in NODES, name
        assert {peer["name"] for peer in group["peers"]} == NODES, name
        assert [peer["leader"] for peer in group["peers"]] == [True, False, False], name
    todos = state["cluster"]["streams"][subjects.STREAM]
    assert all(peer["current"] and not peer["offline"] and peer["lag"] == 0 for peer in todos["peers"])
    consumer = state["cluster"]["consumers"][f"{subjects.STREAM}/{subjects.CONSUMER}"]
    assert {peer["name"] for peer in consumer["peers"]} == NODES


async def test_status_on_a_single_server_says_there_is_no_cluster(nats_server: NatsServer) -> None:
    """The same `status` on one nats-server: its usual lines, then one line saying there is no cluster."""
    streams_cli("bootstrap", nats_url=nats_server.url)
    text = streams_cli("status", nats_url=nats_server.url)
    as_json = streams_cli("status", "--json", nats_url=nats_server.url)

    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[-1].startswith("cluster: none")
    assert json.loads(as_json.stdout)["cluster"] is None


async def test_cluster_comma_separated_nats_url_connects_past_a_dead_node(cluster: NatsCluster) -> None:
    """NATS_URL lists every node; streams.connection.connect uses them all, and a refused one is skipped."""
    settings = NatsSettings.model_validate({"NATS_URL": " , ".join(cluster.urls)})
    assert settings.servers == cluster.urls

    nc = await connect(settings, name="test-cluster-url", identity="streams")
    try:
        assert server_info(nc).get("cluster") == cluster.name
        assert nc.connected_url is not None
        assert nc.connected_url.geturl() in cluster.urls
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()

    with refusing_port() as port:  # a node that is down: its port refuses connections
        down = NatsSettings.model_validate({"NATS_URL": f"nats://127.0.0.1:{port}," + cluster.url})
        for _ in range(5):  # nats-py shuffles the list: the dead URL comes first in some of the tries
            nc = await connect(down, name="test-cluster-url-down", identity="streams")
            try:
                assert nc.connected_url is not None
                assert nc.connected_url.port != port
            finally:
                await nc.close()


async def test_cluster_cli_answers_with_a_hung_node_in_the_list(cluster: NatsCluster) -> None:
    """A node that accepts TCP but never answers (SIGSTOP): the CLI tries the other servers of NATS_URL. With
    nats-py's reconnect off it gave up after the first failed handshake: half the runs failed."""
    settings = NatsSettings.model_validate({"NATS_URL": cluster.url})
    nc = await connect(settings, name="test-cluster-hung", identity="streams")
    try:
        js = nc.jetstream()
        await topology.bootstrap(js, 3)
        hung = next(node for node in cluster.nodes if node.name != cluster.meta_leader().name)
        cluster.pause(hung)
        try:

            async def every_group_answers() -> bool:  # the groups the hung node led have elected another leader
                try:
                    for name in STREAMS:
                        await js.stream_info(name)
                    await js.consumer_info(subjects.STREAM, subjects.CONSUMER)
                except Exception:
                    return False
                return True

            await wait_for(every_group_answers, timeout=45, interval=0.5)
            for _ in range(4):  # nats-py shuffles the list: the hung node comes first in some of the runs
                result = streams_cli("status", nats_url=cluster.url)
                assert result.returncode == 0, result.stderr
        finally:
            cluster.resume(hung)
    finally:
        await nc.close()
    cluster.wait_ready()


async def publish(nc: Client, payload: dict[str, Any], *, within: float = 15.0) -> PubAck:
    """Publish one event with JetStream, retrying (same Nats-Msg-Id) while the client reconnects."""
    msg_id = str(uuid.uuid4())
    js = nc.jetstream(timeout=2)

    async def attempt() -> PubAck | None:
        try:
            return await js.publish(
                subjects.Change.CREATED.subject, json.dumps(payload).encode(), headers={subjects.MSG_ID_HEADER: msg_id}
            )
        except Exception as error:
            print(f"publish failed, retrying: {type(error).__name__}: {error}")
            return None

    return await wait_for(attempt, timeout=within, interval=0.2)


async def test_cluster_survives_sigkill_of_the_todos_leader(cluster: NatsCluster, client: Client) -> None:
    """SIGKILL TODOS' leader: a new one is elected, publishing works, the earlier event is kept; the node rejoins."""
    booted = streams_cli("bootstrap", nats_url=cluster.url, replicas=3)
    assert booted.returncode == 0, booted.stderr
    await cluster.wait_stream_current(subjects.STREAM)
    before = await publish(client, {"task": "before the crash"})
    await cluster.wait_stream_current(subjects.STREAM)  # the event is on every replica
    leader = await cluster.stream_leader(subjects.STREAM)

    killed_at = time.monotonic()
    cluster.kill(leader)
    successor = await cluster.stream_leader(subjects.STREAM, not_on=leader, within=30)
    elected_after = time.monotonic() - killed_at
    after = await publish(client, {"task": "after the crash"})
    published_after = time.monotonic() - killed_at

    assert successor is not leader
    assert after.seq > before.seq
    js = client.jetstream()
    kept = await js.get_msg(subjects.STREAM, before.seq)
    assert json.loads(kept.data or b"") == {"task": "before the crash"}
    latest = await js.get_msg(subjects.STREAM, after.seq)
    assert json.loads(latest.data or b"") == {"task": "after the crash"}
    info = await cluster.stream_info(subjects.STREAM)
    assert info.cluster.leader == successor.name
    stale = next(peer for peer in info.cluster.replicas if peer.name == leader.name)
    assert not stale.current

    restarted_at = time.monotonic()
    cluster.start_node(leader)
    rejoined = await cluster.wait_stream_current(subjects.STREAM, within=30)
    current_after = time.monotonic() - restarted_at
    cluster.wait_ready()

    assert {peer.name for peer in rejoined.replicas} | {rejoined.leader} == NODES
    assert all(peer.current for peer in rejoined.replicas)
    assert (await cluster.stream_info(subjects.STREAM)).state.last_seq == after.seq
    print(
        f"new leader {successor.name} after {elected_after:.1f}s, published after {published_after:.1f}s, "
        f"{leader.name} current {current_after:.1f}s after its restart"
    )
