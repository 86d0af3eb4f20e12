"""Events: one per change, on the right subject, carrying the API's answer, in commit order per todo."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from aiohttp.test_utils import TestClient

from tests.services import NatsServer
from tests.web.conftest import ClientFactory
from tests.web.helpers import count_rows, wait_for, wait_for_events, wait_until_settled

Client = TestClient[Any, Any]


async def test_each_change_publishes_one_event_equal_to_the_answer(
    api: Client, jetstream: NatsServer, database_url: str
) -> None:
    """POST, PUT, DELETE: exactly one event each, right subject, payload == API answer, a UUID Nats-Msg-Id."""
    created = await (await api.post("/api/todos", json={"task": "a"})).json()
    updated = await (await api.put(f"/api/todos/{created['id']}", json={"done": True})).json()
    deleted = await (await api.delete(f"/api/todos/{created['id']}")).json()
    await wait_for_events(jetstream.url, 3)
    events = await wait_until_settled(jetstream.url, database_url)  # nothing more can arrive
    assert [(e.subject, e.payload) for e in events] == [
        ("todos.created", created),
        ("todos.updated", updated),
        ("todos.deleted", deleted),
    ]
    ids = [uuid.UUID(event.msg_id) for event in events]
    assert len(set(ids)) == 3


async def test_outbox_is_emptied_once_acked(api: Client, database_url: str, jetstream: NatsServer) -> None:
    """The relay deletes the rows it published; the backlog gauge follows."""
    for i in range(20):
        assert (await api.post("/api/todos", json={"task": f"t{i}"})).status == 201
    await wait_for_events(jetstream.url, 20)

    async def empty() -> bool:
        return await count_rows(database_url, "outbox") == 0

    await wait_for(empty)

    async def gauge_zero() -> bool:
        return "outbox_backlog 0.0" in await (await api.get("/metrics")).text()

    await wait_for(gauge_zero, timeout=5)
    assert 'outbox_published_total{mode="jetstream"} 20.0' in await (await api.get("/metrics")).text()


async def test_concurrent_updates_of_one_todo_reach_the_stream_in_commit_order(
    api: Client, jetstream: NatsServer
) -> None:
    """50 concurrent PUTs of one todo: the stream holds them in commit order, the last equal to the final state."""
    todo = await (await api.post("/api/todos", json={"task": "start"})).json()
    responses = await asyncio.gather(
        *(api.put(f"/api/todos/{todo['id']}", json={"task": f"update {i}", "done": i % 2 == 0}) for i in range(50))
    )
    answers = [await response.json() for response in responses]
    assert all(response.status == 200 for response in responses)
    events = [e for e in await wait_for_events(jetstream.url, 51) if e.subject == "todos.updated"]
    assert len(events) == 50
    # updatedAt moves strictly on every commit, so sorting the answers by it gives the commit order
    in_commit_order = sorted(answers, key=lambda answer: answer["updatedAt"])
    assert len({answer["updatedAt"] for answer in answers}) == 50
    assert [event.payload for event in events] == in_commit_order
    final = await (await api.get(f"/api/todos/{todo['id']}")).json()
    assert events[-1].payload == final


@pytest.fixture
async def core_subscriber(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Factory: subscribe with plain NATS on todos.> and collect what arrives."""
    connections = []

    async def subscribe(url: str) -> list[Any]:
        nc = await nats.connect(url)
        connections.append(nc)
        seen: list[Any] = []

        async def on_message(msg: Any) -> None:
            seen.append(msg)

        await nc.subscribe("todos.>", cb=on_message)
        await nc.flush()
        return seen

    yield subscribe
    for nc in connections:
        await nc.close()


async def test_core_subscriber_sees_every_event(api: Client, jetstream: NatsServer, core_subscriber: Any) -> None:
    """A plain NATS subscriber on todos.> sees each event too, with its payload and Nats-Msg-Id."""
    seen = await core_subscriber(jetstream.url)
    created = await (await api.post("/api/todos", json={"task": "a"})).json()
    updated = await (await api.put(f"/api/todos/{created['id']}", json={"task": "b"})).json()

    async def both() -> bool:
        return len(seen) >= 2

    await wait_for(both)
    assert [(msg.subject, json.loads(msg.data)) for msg in seen] == [
        ("todos.created", created),
        ("todos.updated", updated),
    ]
    assert all(uuid.UUID(msg.headers["Nats-Msg-Id"]) for msg in seen)


async def test_server_without_jetstream_gets_core_publishes(
    core_nats_server: NatsServer, database_url: str, core_subscriber: Any, make_client: ClientFactory
) -> None:
    """NATS without JetStream (the course setup): the relay falls back to core publishes, nothing is left over."""
    seen = await core_subscriber(core_nats_server.url)
    api = await make_client(database_url, core_nats_server.url)
    created = [await (await api.post("/api/todos", json={"task": f"t{i}"})).json() for i in range(3)]

    async def all_three() -> bool:
        return len(seen) >= 3

    await wait_for(all_three)
    assert [json.loads(msg.data) for msg in seen] == created
    assert all(msg.subject == "todos.created" for msg in seen)

    async def empty() -> bool:
        return await count_rows(database_url, "outbox") == 0

    await wait_for(empty)
    assert 'outbox_published_total{mode="core"} 3.0' in await (await api.get("/metrics")).text()


async def test_missing_stream_keeps_events_until_bootstrap(
    nats_server: NatsServer, database_url: str, make_client: ClientFactory
) -> None:
    """JetStream without the TODOS stream: events wait in the outbox (no core fallback) until the stream exists."""
    from tests.web.conftest import bootstrap_streams  # noqa: PLC0415

    api = await make_client(database_url, nats_server.url)
    created = await (await api.post("/api/todos", json={"task": "waits"})).json()

    async def relay_found_no_stream() -> bool:
        text = await (await api.get("/metrics")).text()
        failures = re.search(r'^outbox_publish_failures_total\{reason="NoStreamError"\} (\S+)$', text, re.MULTILINE)
        return failures is not None and float(failures[1]) >= 1

    await wait_for(relay_found_no_stream)  # the relay tried, and kept the row
    assert await count_rows(database_url, "outbox") == 1
    await bootstrap_streams(nats_server.url)
    events = await wait_for_events(nats_server.url, 1)
    assert events[0].payload == created


async def test_without_nats_url_no_outbox_rows(make_client: ClientFactory, database_url: str) -> None:
    """NATS_URL unset: the API works, /readyz is 200 on the database alone, and no outbox row is written."""
    api = await make_client(database_url, None)
    todo = await (await api.post("/api/todos", json={"task": "quiet"})).json()
    assert (await api.put(f"/api/todos/{todo['id']}", json={"done": True})).status == 200
    assert (await api.delete(f"/api/todos/{todo['id']}")).status == 200
    assert (await api.get("/readyz")).status == 200
    assert await count_rows(database_url, "outbox") == 0
