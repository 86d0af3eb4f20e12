"""A change and its event commit together or not at all (README, "Delivery guarantees", first row).

The outbox INSERT is made to fail with a database trigger (the way a full disk, a constraint or a
lost connection would fail it mid-transaction); the change it belongs to must then be absent from
the database, the API must say it failed, and nothing may reach the stream. Both storage paths are
covered: PostgreSQL (a POST is one statement, a PUT or DELETE a transaction) and SQLite. The API runs
as a process (tortoise-orm's models keep the dialect of the first database a process opened).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.processes import Proc, start_web
from tests.services import NatsServer
from tests.web.helpers import wait_for_events

POISON = "poison-outbox"  # an event whose payload holds this text cannot be written to the outbox

_PG_TRIGGER = f"""
CREATE FUNCTION refuse_poison() RETURNS trigger AS $$
BEGIN
    IF position(convert_to('{POISON}', 'UTF8') IN NEW.payload) > 0 THEN
        RAISE EXCEPTION 'outbox refused the event';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_poison BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""
_SQLITE_TRIGGER = f"""
CREATE TRIGGER refuse_poison BEFORE INSERT ON outbox
WHEN instr(CAST(NEW.payload AS TEXT), '{POISON}') > 0
BEGIN SELECT RAISE(ABORT, 'outbox refused the event'); END;
"""


async def _install_trigger(database_url: str) -> None:
    if database_url.startswith("sqlite://"):
        with sqlite3.connect(database_url.removeprefix("sqlite://")) as connection:
            connection.executescript(_SQLITE_TRIGGER)
        return
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(_PG_TRIGGER)
    finally:
        await connection.close()


class Api:
    """The API process, asked over HTTP."""

    def __init__(self, proc: Proc, session: aiohttp.ClientSession) -> None:
        self.proc, self.session = proc, session

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.session.post(self.proc.url + path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.session.put(self.proc.url + path, **kwargs)

    def delete(self, path: str) -> Any:
        return self.session.delete(self.proc.url + path)

    def get(self, path: str) -> Any:
        return self.session.get(self.proc.url + path)


async def _todos(client: Api) -> list[dict[str, Any]]:
    response = await client.get("/api/todos")
    assert response.status == 200
    body: list[dict[str, Any]] = await response.json()
    return body


@pytest.fixture
async def api_process(storage: str, jetstream: NatsServer, tmp_path: Path) -> AsyncIterator[Api]:
    proc = start_web(database_url=storage, nats_url=jetstream.url, log_dir=tmp_path)
    try:
        await proc.ready()
        async with aiohttp.ClientSession() as session:
            yield Api(proc, session)
    finally:
        await proc.stop()


@pytest.fixture(params=["postgres", "sqlite"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'todos.sqlite3'}"
    url: str = request.getfixturevalue("database_url")
    return url


async def test_a_change_whose_event_cannot_be_written_is_not_committed(
    storage: str, jetstream: NatsServer, api_process: Api
) -> None:
    client = api_process
    kept = await client.post("/api/todos", json={"task": "kept"})
    assert kept.status == 201
    todo = await kept.json()
    await _install_trigger(storage)

    # POST: the todo must not exist without its event
    refused = await client.post("/api/todos", json={"task": POISON})
    assert refused.status == 500, await refused.text()
    assert (await refused.json())["status"] == 500
    assert [row["task"] for row in await _todos(client)] == ["kept"]

    # PUT: the row keeps its old value
    refused = await client.put(f"/api/todos/{todo['id']}", json={"task": POISON, "done": True})
    assert refused.status == 500
    assert await _todos(client) == [todo]

    # a change the outbox accepts still commits and publishes, and only the committed changes are on the stream
    done = await client.put(f"/api/todos/{todo['id']}", json={"done": True})
    assert done.status == 200
    updated = await done.json()
    # the stream is in id order: a refused change that had slipped through would sit before the update
    events = await wait_for_events(jetstream.url, 2)
    assert [(event.subject, event.payload) for event in events] == [
        ("todos.created", todo),
        ("todos.updated", updated),
    ]
    assert not any(POISON in str(event.payload) for event in events)


async def test_a_delete_whose_event_cannot_be_written_keeps_the_todo(
    storage: str, jetstream: NatsServer, api_process: Api
) -> None:
    client = api_process
    created = await client.post("/api/todos", json={"task": f"{POISON} written before the trigger"})
    assert created.status == 201
    todo = await created.json()
    await _install_trigger(storage)

    refused = await client.delete(f"/api/todos/{todo['id']}")
    assert refused.status == 500
    assert await _todos(client) == [todo]
    # a change after the refused DELETE: the stream holds it right after the create, nothing between
    again = await client.put(f"/api/todos/{todo['id']}", json={"task": "cured"})
    assert again.status == 200
    events = await wait_for_events(jetstream.url, 2)
    assert [event.subject for event in events] == ["todos.created", "todos.updated"]
