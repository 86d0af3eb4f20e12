"""Schema migrations run at start: a fresh database gets the schema, concurrent replicas do not collide."""

from __future__ import annotations

import asyncio

from tests.web.conftest import ClientFactory
from tests.web.helpers import sql

TABLES = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name"


async def test_fresh_database_gets_the_schema(make_client: ClientFactory, database_url: str) -> None:
    """Starting on an empty PostgreSQL database applies the checked-in migrations; a restart applies nothing."""
    assert await sql(database_url, TABLES) == []
    api = await make_client(database_url)
    assert (await api.post("/api/todos", json={"task": "x"})).status == 201
    assert [row["table_name"] for row in await sql(database_url, TABLES)] == ["outbox", "todos", "tortoise_migrations"]
    again = await make_client(database_url)
    assert len(await (await again.get("/api/todos")).json()) == 1
    applied = await sql(database_url, "SELECT app, name FROM tortoise_migrations")
    assert [(row["app"], row["name"]) for row in applied] == [("web", "0001_initial"), ("web", "0002_outbox_notify")]


async def test_replicas_starting_together_both_succeed(make_client: ClientFactory, database_url: str) -> None:
    """Three instances starting at once on one fresh database all come up; the migration is applied once."""
    clients = await asyncio.gather(*(make_client(database_url) for _ in range(3)))
    for client in clients:
        assert (await client.post("/api/todos", json={"task": "x"})).status == 201
    assert len(await (await clients[0].get("/api/todos")).json()) == 3
    applied = await sql(database_url, "SELECT name FROM tortoise_migrations")
    assert [row["name"] for row in applied] == ["0001_initial", "0002_outbox_notify"]
