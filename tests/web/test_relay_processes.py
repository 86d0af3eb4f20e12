"""The relay in `python -m web` processes: one relay per database, and a crash between publish and delete.

A plain NATS subscription on `todos.>` sees every publish, including the copies JetStream drops as
duplicates, so it shows what the stream's duplicate window would hide.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import psutil
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from streams.subjects import MSG_ID_HEADER
from tests.processes import Proc, ready_all, start_web, stop_all
from tests.services import NatsServer
from tests.web.helpers import count_rows, sql, wait_for, wait_until_settled
from web.relay import RELAY_LOCK_KEY

pytestmark = pytest.mark.timeout(180)


class CoreTap:
    """Every message published on todos.>, as a core NATS subscriber receives it."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.messages: list[Msg] = []
        self.sub: Subscription | None = None

    async def on_message(self, msg: Msg) -> None:
        self.messages.append(msg)

    @property
    def msg_ids(self) -> list[str]:
        return [(msg.headers or {}).get(MSG_ID_HEADER, "") for msg in self.messages]

    async def caught_up(self) -> list[str]:
        """The ids seen, once everything the server routed to us before now has been handled."""
        assert self.sub is not None
        # the PONG comes after every message the server queued for us before our PING
        await self.nc.flush()
        await wait_for(self._drained)
        return self.msg_ids

    async def _drained(self) -> bool:
        assert self.sub is not None
        return self.sub.pending_msgs == 0


@pytest.fixture
async def core_tap(jetstream: NatsServer) -> AsyncIterator[CoreTap]:
    nc = await nats.connect(jetstream.url)
    tap = CoreTap(nc)
    tap.sub = await nc.subscribe("todos.>", cb=tap.on_message)
    await nc.flush()
    try:
        yield tap
    finally:
        await nc.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> dict[str, Any]:
    async with http.request(method, url, json=body) as response:
        assert response.status in {200, 201}, (method, url, response.status, await response.text())
        return dict(await response.json())


async def test_two_api_processes_on_one_database_publish_each_event_once(
    jetstream: NatsServer, database_url: str, tmp_path: Path, core_tap: CoreTap, http: aiohttp.ClientSession
) -> None:
    """Two API processes on one PostgreSQL database and one NATS, a burst of changes through both:
    every event is published exactly once on core NATS (one relay at a time, by the advisory lock),
    not merely stored once by the stream's duplicate window."""
    apis = [
        start_web(database_url=database_url, nats_url=jetstream.url, log_dir=tmp_path, name=name)
        for name in ("web-a", "web-b")
    ]
    try:
        await ready_all(apis)
        created = await asyncio.gather(
            *(call(http, "POST", f"{apis[i % 2].url}/api/todos", {"task": f"burst {i}"}) for i in range(60))
        )
        updated = await asyncio.gather(
            *(
                call(http, "PUT", f"{apis[(i + 1) % 2].url}/api/todos/{todo['id']}", {"done": True})
                for i, todo in enumerate(created)
            )
        )
        deleted = await asyncio.gather(
            *(call(http, "DELETE", f"{apis[i % 2].url}/api/todos/{todo['id']}") for i, todo in enumerate(created[:30]))
        )
        answers = [*created, *updated, *deleted]

        events = await wait_until_settled(jetstream.url, database_url)
        published = await core_tap.caught_up()
        # one replica relayed everything, the other's commits included: it was woken by them, not polled
        leading = [await _metric(http, api.url, "outbox_relay_leader") for api in apis]
        relayed = [await _metric(http, api.url, "outbox_published_total") for api in apis]
    finally:
        await stop_all(apis)

    assert sorted(leading) == [0.0, 1.0], leading
    assert relayed[leading.index(0.0)] == 0, "a replica that does not lead publishes nothing"
    assert relayed[leading.index(1.0)] == len(answers)
    copies = Counter(published)
    assert {msg_id: n for msg_id, n in copies.items() if n > 1} == {}, "events published more than once"
    assert len(events) == len(answers)
    assert sorted(copies) == sorted(event.msg_id for event in events)
    assert sorted(json.dumps(e.payload, sort_keys=True) for e in events) == sorted(
        json.dumps(answer, sort_keys=True) for answer in answers
    )


async def _metric(http: aiohttp.ClientSession, url: str, name: str) -> float:
    """The sum of a metric's samples (all label values) on one API process's /metrics."""
    async with http.get(f"{url}/metrics") as response:
        text = await response.text()
    samples = [line.split()[-1] for line in text.splitlines() if line.startswith((f"{name} ", f"{name}{{"))]
    assert samples, f"{name} is not in {url}/metrics"
    return sum(float(value) for value in samples)


async def _delete_waiting_on_a_row_lock(database_url: str) -> list[int]:
    """Backends whose DELETE of outbox rows waits for a row lock."""
    rows = await sql(
        database_url,
        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query ILIKE 'DELETE FROM%outbox%'",
    )
    return [row["pid"] for row in rows]


async def _backend_gone(database_url: str, pid: int) -> bool:
    return not await sql(database_url, f"SELECT 1 FROM pg_stat_activity WHERE pid = {pid}")


async def test_relay_killed_between_publish_and_delete_republishes_and_the_stream_keeps_one_copy(
    jetstream: NatsServer, database_url: str, tmp_path: Path, core_tap: CoreTap, http: aiohttp.ClientSession
) -> None:
    """The relay publishes a batch and is SIGKILLed before its DELETE of the rows commits. The next API
    process publishes the same events again, with the same Nats-Msg-Id; the stream holds each event
    once, in commit order, and the outbox ends empty.

    The relay is stopped exactly there without a hook in the code: the test holds the relay's advisory
    lock while the changes are made (nothing is relayed), then locks the outbox rows FOR UPDATE and
    lets the lock go. The relay publishes, and its DELETE waits on the row locks: then it is killed.
    """
    first = start_web(database_url=database_url, nats_url=jetstream.url, log_dir=tmp_path, name="web-killed")
    await first.ready()
    guard = await asyncpg.connect(database_url)
    holder = await asyncpg.connect(database_url)
    second: Proc | None = None
    try:
        await guard.execute("SELECT pg_advisory_lock($1)", RELAY_LOCK_KEY)
        created = [await call(http, "POST", f"{first.url}/api/todos", {"task": f"t{i}"}) for i in range(3)]
        updated = await call(http, "PUT", f"{first.url}/api/todos/{created[0]['id']}", {"done": True})
        deleted = await call(http, "DELETE", f"{first.url}/api/todos/{created[1]['id']}")
        answers = [*created, updated, deleted]
        assert await count_rows(database_url, "outbox") == len(answers)

        locked = holder.transaction()
        await locked.start()
        assert len(await holder.fetch("SELECT id FROM outbox FOR UPDATE")) == len(answers)
        await guard.execute("SELECT pg_advisory_unlock($1)", RELAY_LOCK_KEY)

        async def published_and_stuck_deleting() -> list[int]:
            if len(core_tap.msg_ids) < len(answers):
                return []
            return await _delete_waiting_on_a_row_lock(database_url)

        [relay_backend] = await wait_for(published_and_stuck_deleting, timeout=15)
        first.kill()
        first_ids = list(core_tap.msg_ids)
        assert len(first_ids) == len(answers)

        # the row locks go; the dead relay's transaction (never committed) is rolled back with its backend
        await locked.rollback()
        await wait_for(lambda: _backend_gone(database_url, relay_backend), timeout=15)
        assert await count_rows(database_url, "outbox") == len(answers), "the DELETE must not have committed"

        second = start_web(database_url=database_url, nats_url=jetstream.url, log_dir=tmp_path, name="web-next")
        await second.ready()
        events = await wait_until_settled(jetstream.url, database_url)
        published = await core_tap.caught_up()
    finally:
        await guard.close()
        await holder.close()
        first.kill()
        if second is not None:
            await second.stop()

    assert published == first_ids + first_ids, "each event published again, same Nats-Msg-Id, same order"
    assert [event.msg_id for event in events] == first_ids
    assert [event.payload for event in events] == answers
    assert [event.subject for event in events] == ["todos.created"] * 3 + ["todos.updated", "todos.deleted"]
    assert await count_rows(database_url, "outbox") == 0


async def _relay_lock_client_port(database_url: str) -> int | None:
    """The client port of the session in a relay batch (holding the relay's advisory lock), if any."""
    rows = await sql(
        database_url,
        "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted"
        f" AND l.classid = {RELAY_LOCK_KEY >> 32} AND l.objid = {RELAY_LOCK_KEY & 0xFFFFFFFF} AND l.objsubid = 1",
    )
    return int(rows[0]["client_port"]) if rows else None


def _owner_of_port(apis: list[Proc], port: int) -> Proc | None:
    for api in apis:
        if api.pid is not None and any(
            conn.laddr and conn.laddr.port == port for conn in psutil.Process(api.pid).net_connections(kind="tcp")
        ):
            return api
    return None


async def test_the_replica_caught_holding_the_relay_lock_is_sigkilled_under_load_and_the_other_relays_the_rest(
    jetstream: NatsServer, database_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Two API processes on one database, changes going through both (each todo updated through both in
    turn). The one caught in a relay batch (holding the advisory lock, so mid-publish or mid-delete) is
    SIGKILLed. The other relays everything left: each answered change is in the stream once, per todo in
    commit order (created first, updatedAt rising, nothing after the delete), and the outbox ends empty."""
    apis = [
        start_web(database_url=database_url, nats_url=jetstream.url, log_dir=tmp_path, name=name)
        for name in ("web-a", "web-b")
    ]
    answered: list[tuple[str, dict[str, Any]]] = []
    alive = list(apis)
    stop = asyncio.Event()

    async def writer(number: int) -> None:
        step = 0
        while not stop.is_set():
            todo_id = None
            for change in range(6):  # a todo's life, through both replicas in turn while both live
                api = alive[(number + step) % len(alive)]
                step += 1
                method, url, body, subject = (
                    ("POST", f"{api.url}/api/todos", {"task": f"w{number}"}, "todos.created")
                    if todo_id is None
                    else ("DELETE", f"{api.url}/api/todos/{todo_id}", None, "todos.deleted")
                    if change == 5
                    else ("PUT", f"{api.url}/api/todos/{todo_id}", {"task": f"w{number} {change}"}, "todos.updated")
                )
                try:
                    async with http.request(method, url, json=body) as response:
                        if response.status not in {200, 201}:
                            break  # the todo's earlier change went to the killed replica and was lost
                        answer = await response.json()
                except aiohttp.ClientError:
                    break  # the killed replica: this change may or may not have committed
                answered.append((subject, answer))
                todo_id = answer["id"]

    try:
        await ready_all(apis)
        writers = [asyncio.create_task(writer(n)) for n in range(6)]
        await wait_for(lambda: _lock_seen_after(answered, 60, database_url), timeout=30, interval=0)
        killed = await _kill_the_relay_lock_holder(apis, database_url)
        alive.remove(killed)
        await asyncio.sleep(1.0)  # the survivor keeps taking changes for a while
        stop.set()
        await asyncio.gather(*writers)
        events = await wait_until_settled(jetstream.url, database_url)
    finally:
        stop.set()
        await stop_all(apis)

    assert await count_rows(database_url, "outbox") == 0
    assert len({event.msg_id for event in events}) == len(events), "one copy of each event in the stream"
    in_stream = Counter((event.subject, json.dumps(event.payload, sort_keys=True)) for event in events)
    for subject, answer in answered:
        assert in_stream[(subject, json.dumps(answer, sort_keys=True))] == 1, (subject, answer)
    _assert_per_todo_commit_order(events)


async def _kill_the_relay_lock_holder(apis: list[Proc], database_url: str) -> Proc:
    """SIGKILL the API process whose session holds the relay lock right now (waiting for the next batch if
    the one seen ended before its owner was found)."""
    while True:
        port = await _relay_lock_client_port(database_url)
        holder = _owner_of_port(apis, port) if port is not None else None
        if holder is not None:
            holder.kill()
            return holder


def _assert_per_todo_commit_order(events: list[Any]) -> None:
    """Created first, updates with a rising updatedAt (strictly: each update moves it), nothing after the delete."""
    by_todo: dict[str, list[Any]] = {}
    for event in events:
        by_todo.setdefault(event.payload["id"], []).append(event)
    for todo_events in by_todo.values():
        assert todo_events[0].subject == "todos.created"
        assert "todos.created" not in [event.subject for event in todo_events[1:]]
        assert "todos.deleted" not in [event.subject for event in todo_events[:-1]]
        updates = [event.payload["updatedAt"] for event in todo_events if event.subject == "todos.updated"]
        assert updates == sorted(updates), "per-todo commit order"
        assert len(set(updates)) == len(updates)


async def _lock_seen_after(answered: list[Any], changes: int, database_url: str) -> bool:
    """True once `changes` changes were answered and a relay batch is under way right now."""
    return len(answered) >= changes and await _relay_lock_client_port(database_url) is not None
