"""The relay: woken at once after a commit, sweeping rows nobody woke it for, one relay among replicas."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import nats
import pytest
from aiohttp.test_utils import TestClient
from nats.js.api import DiscardPolicy
from tortoise.backends.asyncpg.client import TransactionWrapper

from streams.subjects import STREAM
from tests.services import NatsServer
from tests.web.conftest import ClientFactory
from tests.web.helpers import count_rows, wait_for, wait_for_events
from web.relay import BACKLOG_QUERY, RELAY_LOCK_KEY

Client = TestClient[Any, Any]


async def test_a_commit_wakes_the_relay(
    jetstream: NatsServer, database_url: str, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay is woken by the commit, not found by the sweep: with the sweep an hour apart (set before
    the app starts), every change still reaches a subscriber, one after the other."""
    monkeypatch.setattr("web.relay.SWEEP_INTERVAL", 3600.0)
    api = await make_client(database_url, jetstream.url)
    nc = await nats.connect(jetstream.url)
    arrived: set[str] = set()

    async def on_message(msg: Any) -> None:
        arrived.add(json.loads(msg.data)["id"])

    await nc.subscribe("todos.created", cb=on_message)
    await nc.flush()
    try:
        for i in range(15):
            todo = await (await api.post("/api/todos", json={"task": f"fast {i}"})).json()

            async def delivered(todo_id: str = todo["id"]) -> bool:
                return todo_id in arrived

            await wait_for(delivered, interval=0.001)
    finally:
        await nc.close()
    assert len(arrived) == 15


async def test_sweep_publishes_rows_left_behind(api: Client, database_url: str, jetstream: NatsServer) -> None:
    """A row committed without waking the relay (a crash, another replica) is published by the periodic sweep."""
    event_id = uuid.uuid4()
    payload = json.dumps({"left": "behind"}).encode()
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO outbox (event_id, subject, payload, created_at) VALUES ($1, 'todos.deleted', $2, now())",
            event_id,
            payload,
        )
    finally:
        await connection.close()
    events = await wait_for_events(jetstream.url, 1, timeout=10)
    assert (events[0].subject, events[0].payload, events[0].msg_id) == (
        "todos.deleted",
        {"left": "behind"},
        str(event_id),
    )

    async def gone() -> bool:
        return await count_rows(database_url, "outbox") == 0

    await wait_for(gone)


async def test_replicas_sharing_a_database_keep_per_todo_order(
    jetstream: NatsServer, database_url: str, make_client: ClientFactory
) -> None:
    """Two API replicas on one database and NATS, one todo updated through both at once: the stream holds every
    event once, in commit order (updatedAt strictly increasing)."""
    first, second = await asyncio.gather(
        make_client(database_url, jetstream.url), make_client(database_url, jetstream.url)
    )
    todo = await (await first.post("/api/todos", json={"task": "shared"})).json()
    replicas = [first, second]
    responses = await asyncio.gather(
        *(replicas[i % 2].put(f"/api/todos/{todo['id']}", json={"task": f"via {i % 2} #{i}"}) for i in range(40))
    )
    assert all(response.status == 200 for response in responses)
    events = await wait_for_events(jetstream.url, 41)
    assert len({event.msg_id for event in events}) == 41
    updates = [event.payload["updatedAt"] for event in events if event.subject == "todos.updated"]
    assert len(updates) == 40
    assert updates == sorted(updates)
    assert len(set(updates)) == 40
    assert events[-1].payload == await (await second.get(f"/api/todos/{todo['id']}")).json()


async def test_relay_recovers_when_begin_fails_on_a_dropped_connection(
    api: Client, jetstream: NatsServer, database_url: str, monkeypatch: Any
) -> None:
    """A database connection dropped under the relay's BEGIN (an outage) does not stop the relay for good.

    tortoise leaves its "current transaction" set in the task when BEGIN fails; the relay runs each
    batch in a task of its own so that stale state dies with the batch.
    """
    original = TransactionWrapper.begin
    dropped: list[bool] = []

    async def begin_on_a_dropped_connection(self: Any) -> None:
        if not dropped:
            dropped.append(True)
            self._connection.terminate()
            raise ConnectionResetError("connection dropped by the server")
        await original(self)

    monkeypatch.setattr(TransactionWrapper, "begin", begin_on_a_dropped_connection)
    # on PostgreSQL a POST is one statement, so the relay's batch is the first BEGIN
    assert (await api.post("/api/todos", json={"task": "first"})).status == 201
    await wait_for(lambda: _dropped(dropped), timeout=10)
    for _ in range(3):
        assert (await api.post("/api/todos", json={"task": "still relayed"})).status == 201

    events = await wait_for_events(jetstream.url, 4, timeout=15)
    assert sorted(event.payload["task"] for event in events) == ["first"] + ["still relayed"] * 3
    await wait_for(lambda: _outbox_empty(database_url), timeout=10)


async def _dropped(dropped: list[bool]) -> bool:
    return bool(dropped)


async def _outbox_empty(database_url: str) -> bool:
    return await count_rows(database_url, "outbox") == 0


async def test_a_batch_nats_takes_only_in_part_keeps_the_rest(
    api: Client, jetstream: NatsServer, database_url: str
) -> None:
    """The stream refuses messages past a limit (an operator's max_msgs with discard new): of one batch of
    five, three are acked and two refused. The relay deletes exactly the acked prefix; the other two stay
    in the outbox and are published, in order, once the stream takes them."""
    nc = await nats.connect(jetstream.url)
    guard = await asyncpg.connect(database_url)
    try:
        js = nc.jetstream()
        config = (await js.stream_info(STREAM)).config
        config.max_msgs, config.discard = 3, DiscardPolicy.NEW
        await js.update_stream(config)
        await guard.execute("SELECT pg_advisory_lock($1)", RELAY_LOCK_KEY)  # no relaying: one batch later
        answers = [await (await api.post("/api/todos", json={"task": f"part {n}"})).json() for n in range(5)]
        assert await count_rows(database_url, "outbox") == 5
        await guard.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)

        async def refused_twice() -> bool:  # the relay met the limit and retried at least once since
            metrics = await (await api.get("/metrics")).text()
            failures = [line for line in metrics.splitlines() if line.startswith("outbox_publish_failures_total")]
            return sum(float(line.split()[-1]) for line in failures) >= 2

        await wait_for(refused_twice)
        assert await count_rows(database_url, "outbox") == 2
        assert [event.payload for event in await wait_for_events(jetstream.url, 3)] == answers[:3]

        config.max_msgs = -1
        await js.update_stream(config)
        await wait_for(lambda: _outbox_empty(database_url))
        assert [event.payload for event in await wait_for_events(jetstream.url, 5)] == answers
    finally:
        await guard.close()
        await nc.close()


async def _outbox_empty(database_url: str) -> bool:
    return await count_rows(database_url, "outbox") == 0


async def test_counting_the_backlog_reads_the_index_ends_not_the_table(api: Client, database_url: str) -> None:
    """The gauge's query stays cheap on a backlog of a million rows: PostgreSQL answers min and max from the
    two ends of the primary key's index (no scan of the rows, whatever their number)."""
    connection = await asyncpg.connect(database_url)
    try:
        plan = "\n".join(row[0] for row in await connection.fetch(f"EXPLAIN {BACKLOG_QUERY}"))
    finally:
        await connection.close()
    assert "Seq Scan" not in plan, plan
    assert plan.count("Index Only Scan") == 2, plan
