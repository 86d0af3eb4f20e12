"""Real services for the suite: a nats-server per test, one PostgreSQL per session (a database per test)."""

from __future__ import annotations

import gc
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.services import NatsServer, Postgres, leaked_secrets, throwaway_postgres


@pytest_asyncio.fixture(autouse=True)
async def _collect_garbage_in_the_loop() -> AsyncIterator[None]:
    """After each test, while its event loop still runs: collect what it left behind.

    An unclosed asyncio stream collected later, once its loop is closed, raises a ResourceWarning in
    whatever test happens to run then; collected here, the warning (if any) names the test that left it.
    """
    yield
    gc.collect()


@pytest.fixture(scope="session", autouse=True)
def _no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole session: no log any process wrote (the API's, the notifiers', nats-server's, under
    pytest's temporary directory) holds the Telegram token, the database password or a NATS password."""
    yield
    found = leaked_secrets(tmp_path_factory.getbasetemp())
    assert not found, "secrets in logs: " + "; ".join(found)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream (file storage in tmp_path); start costs ~50 ms."""
    with NatsServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
def core_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server without JetStream, as in the course setup."""
    with NatsServer(tmp_path / "nats-core", jetstream=False) as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server for the whole session."""
    with throwaway_postgres() as server:
        yield server


@pytest.fixture
def database_url(postgres: Postgres) -> str:
    """A new, empty PostgreSQL database for one test."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
