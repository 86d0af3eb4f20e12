"""Outages: NATS down keeps the API answering and loses no event; PostgreSQL down is a quick 503, then recovery."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.services import NatsServer, Postgres, throwaway_postgres
from tests.web.conftest import ClientFactory, bootstrap_streams
from tests.web.helpers import wait_for, wait_for_events, wait_until_settled

Client = TestClient[Any, Any]


async def test_nats_outage_loses_nothing_and_keeps_order(api: Client, jetstream: NatsServer, database_url: str) -> None:
    """NATS stopped while todos change: every request succeeds and the API stays ready (a NATS rolling restart
    must not take it out of its Service; /readyz and /metrics say NATS is away); after restart the stream
    holds every event once, in order per todo."""
    before = await (await api.post("/api/todos", json={"task": "before"})).json()
    await wait_for_events(jetstream.url, 1)
    jetstream.stop()

    await wait_for(lambda: nats_state(api, "disconnected"), timeout=10)
    assert "nats_connected 0.0" in await (await api.get("/metrics")).text()
    answers: list[dict[str, Any]] = []
    subjects: list[str] = []
    for i in range(5):
        response = await api.post("/api/todos", json={"task": f"during {i}"})
        assert response.status == 201
        todo = await response.json()
        answers.append(todo)
        subjects.append("todos.created")
        for step in range(3):
            response = await api.put(f"/api/todos/{todo['id']}", json={"task": f"during {i} step {step}"})
            assert response.status == 200
            answers.append(await response.json())
            subjects.append("todos.updated")
    response = await api.delete(f"/api/todos/{before['id']}")
    assert response.status == 200
    answers.append(await response.json())
    subjects.append("todos.deleted")

    async def backlog_seen() -> bool:
        return f"outbox_backlog {float(len(answers))}" in await (await api.get("/metrics")).text()

    await wait_for(backlog_seen, timeout=5)
    jetstream.start()
    await wait_for_events(jetstream.url, 1 + len(answers), timeout=20)
    events = await wait_until_settled(jetstream.url, database_url)  # no duplicate can turn up late
    assert len(events) == 1 + len(answers)
    assert len({event.msg_id for event in events}) == len(events)
    by_todo: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for event in events[1:]:
        by_todo[event.payload["id"]].append((event.subject, event.payload))
    expected: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for subject, answer in zip(subjects, answers, strict=True):
        expected[answer["id"]].append((subject, answer))
    assert by_todo == expected

    await wait_for(lambda: nats_state(api, "connected"))
    assert "nats_connected 1.0" in await (await api.get("/metrics")).text()


async def nats_state(api: Client, state: str) -> bool:
    """/readyz answers 200 and says NATS is in `state` (connected, disconnected)."""
    response = await api.get("/readyz")
    assert response.status == 200, await response.text()
    return str((await response.json())["nats"]).split(":")[0] == state


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """A PostgreSQL server of this test alone, to stop and start."""
    with throwaway_postgres("todo-web-pg-") as server:
        yield server


async def test_postgres_outage_is_a_quick_503_then_recovers(
    own_postgres: Postgres, jetstream: NatsServer, make_client: ClientFactory
) -> None:
    """PostgreSQL stopped: requests get a 503 problem document while it is down (not a hang until it is
    back) and /readyz is 503, saying why in words; after restart the API works again with no manual step,
    and events flow.

    How quickly the 503 comes is the API's deadline (web.middlewares.DEADLINE, the pool's timeouts),
    measured by the fault suite's PostgreSQL scenario; here the client's timeout only turns a hang
    into a failure instead of a stuck test.
    """
    api = await make_client(own_postgres.create_database("outage"), jetstream.url)
    todo = await (await api.post("/api/todos", json={"task": "before"})).json()
    await asyncio.to_thread(own_postgres.stop)

    hang = aiohttp.ClientTimeout(total=30)
    for method, path, body in [
        ("GET", "/api/todos", None),
        ("POST", "/api/todos", {"task": "during"}),
        ("PUT", f"/api/todos/{todo['id']}", {"done": True}),
        ("GET", f"/api/todos/{todo['id']}", None),
        ("DELETE", f"/api/todos/{todo['id']}", None),
    ]:
        response = await api.request(method, path, json=body, timeout=hang)
        assert response.status == 503, (method, path, await response.text())
        assert response.content_type == "application/problem+json"
        assert (await response.json())["status"] == 503
    readyz = await api.get("/readyz", timeout=hang)
    assert readyz.status == 503
    assert (await readyz.json())["detail"] == "the database does not answer"  # no address, no driver text

    await asyncio.to_thread(own_postgres.start)

    async def works() -> bool:
        return (await api.post("/api/todos", json={"task": "after"})).status == 201

    await wait_for(works, timeout=20, interval=0.2)
    assert (await api.get("/readyz")).status == 200
    tasks = [todo["task"] for todo in await (await api.get("/api/todos")).json()]
    assert tasks[0] == "before"
    assert "after" in tasks
    assert "during" not in tasks
    events = await wait_for_events(jetstream.url, 2)
    assert [event.payload["task"] for event in events][:1] == ["before"]
    assert "after" in [event.payload["task"] for event in events]


async def test_api_starts_and_serves_before_nats_is_up(
    tmp_path: Path, database_url: str, make_client: ClientFactory
) -> None:
    """NATS not running when the API starts: it serves at once (and is ready: /readyz 200, NATS disconnected),
    and events flow once NATS is up."""
    late = NatsServer(tmp_path / "late-nats").start()
    late.stop()  # down, on a port of its own that it gets back when started again
    try:
        api = await make_client(database_url, late.url)
        todo = await (await api.post("/api/todos", json={"task": "early"})).json()
        assert await nats_state(api, "disconnected")
        late.start()
        await bootstrap_streams(late.url)
        events = await wait_for_events(late.url, 1, timeout=15)
        assert events[0].payload == todo

        await wait_for(lambda: nats_state(api, "connected"))
    finally:
        late.stop()


async def test_the_backlog_gauge_moves_while_writes_go_on(api: Client, jetstream: NatsServer) -> None:
    """NATS away and a steady stream of commits (each one wakes the relay): the gauge must follow the backlog
    as it grows, not freeze until the writes stop (a backlog is watched exactly when it grows)."""
    jetstream.stop()
    await wait_for(lambda: nats_state(api, "disconnected"), timeout=10)
    seen: list[float] = []
    writing = True

    async def write() -> None:
        while writing:
            assert (await api.post("/api/todos", json={"task": "backlog"})).status == 201
            await asyncio.sleep(0.01)

    writer = asyncio.create_task(write())
    try:

        async def gauge_grew_twice() -> bool:
            metrics = await (await api.get("/metrics")).text()
            value = next(float(line.split()[1]) for line in metrics.splitlines() if line.startswith("outbox_backlog "))
            if not seen or value > seen[-1]:
                seen.append(value)
            return len([value for value in seen if value > 0]) >= 2

        await wait_for(gauge_grew_twice, timeout=10, interval=0.1)
        assert not writer.done(), "the writes must still be going on"
    finally:
        writing = False
        await writer
        jetstream.start()
