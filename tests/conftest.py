"""Real services for the suite: a nats-server per test, one PostgreSQL per session (a database per test)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import NatsServer, Postgres


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
    """One PostgreSQL server for the whole session.

    Its data lives outside pytest's temp root: pytest resets that root to mode 0700 whenever
    another pytest run starts, and the server runs as another user (embedded_postgres) when root.
    """
    root = Path(tempfile.mkdtemp(prefix="todo-events-pg-"))
    try:
        with Postgres(root / "data") as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(postgres: Postgres) -> str:
    """A new, empty PostgreSQL database for one test."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")
