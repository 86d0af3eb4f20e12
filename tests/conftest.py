"""Real services for the suite: a nats-server per test, one PostgreSQL per session (a database per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import NatsServer, Postgres, throwaway_postgres


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
