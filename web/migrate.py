"""Schema migrations, applied by `python -m web migrate` or at start, by one process at a time.

The migrations are tortoise-orm's built-in ones, checked in under web/migrations (write a new one
with `tortoise -c web.db.TORTOISE_ORM makemigrations`). Replicas that start together queue on a
PostgreSQL advisory lock (on SQLite, on a lock file next to the database), so the second one finds
the work done. With least privilege (k8s/postgres-roles.sql) the owner role migrates and the API's
role, which may not change the schema, finds it current (web.db says what to do when it is not).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tortoise.connection import get_connection
from tortoise.migrations.executor import MigrationExecutor

# PostgreSQL advisory lock key held while one replica migrates: "todos" in ASCII
MIGRATION_LOCK_KEY = 0x746F646F73


@contextlib.asynccontextmanager
async def _postgres_lock() -> AsyncIterator[None]:
    client = get_connection("default")
    async with client.acquire_connection() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        try:
            yield
        finally:
            try:
                await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
            except BaseException:
                # the pool does not reset sessions (web.db): a connection still holding the lock must not
                # go back to it; closed, it releases the lock with its session
                connection.terminate()
                raise


@contextlib.asynccontextmanager
async def _file_lock(database: Path) -> AsyncIterator[None]:
    with database.with_name(database.name + ".migrate-lock").open("w") as handle:
        await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def apply_migrations(apps: dict[str, dict[str, Any]], sqlite_path: Path | None) -> list[str]:
    """Bring the schema of `apps` to their latest migration and name the ones applied.

    Safe when several replicas do it at once. A schema already current costs two reads and no DDL,
    so the API's own role (which may not create anything) starts on a database the owner migrated.
    """
    client = get_connection("default")
    lock = _file_lock(sqlite_path) if sqlite_path is not None else _postgres_lock()
    async with lock:
        executor = MigrationExecutor(client, apps)
        steps = await executor.plan()
        # migrate() would first run the recorder's CREATE TABLE IF NOT EXISTS, which PostgreSQL refuses
        # to a role without CREATE on the schema even when the table is there
        if steps:
            await executor.migrate()
    return [step.migration.name for step in steps]
