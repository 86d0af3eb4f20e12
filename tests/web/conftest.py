"""Fixtures of the web tests: the API in-process on PostgreSQL, with a real nats-server and its streams."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from aiohttp.test_utils import TestClient, TestServer

from streams.topology import bootstrap
from tests.services import NatsServer
from web.app import init_app
from web.settings import Settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


async def bootstrap_streams(url: str) -> None:
    nc = await nats.connect(url)
    try:
        await bootstrap(nc.jetstream())
    finally:
        await nc.close()


@pytest.fixture
async def jetstream(nats_server: NatsServer) -> NatsServer:
    """A nats-server with the TODOS stream and its consumer, as `just bootstrap-streams` leaves it."""
    await bootstrap_streams(nats_server.url)
    return nats_server


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Start the API in-process (aiohttp's test server) with the given settings; closed after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            database_url: str, nats_url: str | None = None, *, migration_url: str | None = None
        ) -> TestClient[Any, Any]:
            settings = Settings(DATABASE_URL=database_url, NATS_URL=nats_url, DATABASE_MIGRATION_URL=migration_url)
            client = TestClient(TestServer(init_app(settings)))
            stack.push_async_callback(client.close)
            await client.start_server()
            return client

        yield start


@pytest.fixture
async def api(jetstream: NatsServer, database_url: str, make_client: ClientFactory) -> TestClient[Any, Any]:
    """The API on a fresh PostgreSQL database, publishing to a bootstrapped JetStream.

    make_client comes last so the app stops before the servers do.
    """
    return await make_client(database_url, jetstream.url)
