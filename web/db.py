"""The database: tortoise's config for DATABASE_URL, opened and closed with the app (migrated first), and
outage detection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]
import structlog
from aiohttp import web
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.connection import get_connection
from tortoise.context import TortoiseContext
from tortoise.exceptions import DBConnectionError

from web.keys import SETTINGS
from web.migrate import apply_migrations

log = structlog.get_logger(__name__)
E = TypeVar("E", bound=BaseException)

APP_LABEL = "web"
MIGRATIONS_MODULE = "web.migrations"
# PostgreSQL: give up connecting or running one statement after this long, so an outage is a quick 503
CONNECT_TIMEOUT = 2
COMMAND_TIMEOUT = 3.0
POOL_SIZE = 10


async def _keep_session(_: asyncpg.Connection) -> None:
    """What a pooled connection needs on release: nothing beyond the rollback asyncpg does itself.

    asyncpg's default reset (`SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) is
    one more round trip per request; this app leaves nothing for it to undo (advisory locks are taken
    per transaction, or unlocked explicitly by the migration lock; no LISTEN, no cursors, no SET).
    """


def tortoise_config(database_url: str) -> dict[str, Any]:
    """tortoise's config: one connection (with timeouts on PostgreSQL) and the web app's models and migrations."""
    connection: str | dict[str, Any] = database_url
    if not database_url.startswith("sqlite://"):
        expanded = expand_db_url(database_url)
        credentials = {
            "timeout": CONNECT_TIMEOUT,
            "command_timeout": COMMAND_TIMEOUT,
            "maxsize": POOL_SIZE,
            "reset": _keep_session,
            **expanded["credentials"],
        }
        connection = {**expanded, "credentials": credentials}
    return {
        "connections": {"default": connection},
        "apps": {
            APP_LABEL: {"models": ["web.models"], "default_connection": "default", "migrations": MIGRATIONS_MODULE}
        },
        "use_tz": True,
        "timezone": "UTC",
    }


# for `tortoise -c web.db.TORTOISE_ORM makemigrations`
TORTOISE_ORM = tortoise_config("sqlite://:memory:")


async def orm_ctx(app: web.Application) -> AsyncIterator[None]:
    """Open tortoise for this app (first, so every later task sees it) and bring the schema up to date.

    With DATABASE_MIGRATION_URL, the owner role migrates over connections of its own, closed before
    the pool of DATABASE_URL's role opens; without it, DATABASE_URL's role migrates (a no-op when the
    schema is current, which is all a least-privilege role can do).
    """
    settings = app[SETTINGS]
    if settings.database_migration_url is not None:
        applied = await migrate_schema(settings.database_migration_url, None, variable="DATABASE_MIGRATION_URL")
        log.info("db.migrated", applied=applied, by="DATABASE_MIGRATION_URL")
    if settings.sqlite_path is not None:
        settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    context = TortoiseContext()
    # the context is a contextvar: tasks and request handlers started after this point inherit it
    context.__enter__()
    try:
        await context.init(config=tortoise_config(settings.database_url))
        if settings.database_migration_url is None:
            applied = await _apply(settings.database_url, settings.sqlite_path, variable="DATABASE_URL")
            log.info("db.migrated", applied=applied, by="DATABASE_URL")
        yield
    finally:
        await context.close_connections()
        # the app may be cleaned up from another context than the one it started in
        with contextlib.suppress(ValueError):
            context.__exit__(None, None, None)


class SchemaBehindError(Exception):
    """A migration is pending and the role connected may not apply it; the message says what to run."""


async def migrate_schema(database_url: str, sqlite_path: Path | None, *, variable: str) -> list[str]:
    """Apply the pending migrations over connections of their own, closed when done; the names applied.

    `variable` names where `database_url` came from, for the message of a SchemaBehindError.
    """
    if sqlite_path is not None:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    async with TortoiseContext() as context:
        await context.init(config=tortoise_config(database_url))
        return await _apply(database_url, sqlite_path, variable=variable)


async def _apply(database_url: str, sqlite_path: Path | None, *, variable: str) -> list[str]:
    """apply_migrations in the current tortoise context; a refused DDL statement becomes a SchemaBehindError."""
    try:
        return await apply_migrations(tortoise_config(database_url)["apps"], sqlite_path)
    except Exception as exc:
        # "permission denied" / "must be owner" (SQLSTATE 42501)
        denied = caused_by(exc, asyncpg.InsufficientPrivilegeError)
        if denied is None:
            raise
        role = urlsplit(database_url).username or "the default user"
        if variable == "DATABASE_MIGRATION_URL":
            message = (
                f"DATABASE_MIGRATION_URL's role {role} may not migrate the schema ({denied}): it must be"
                " the role that owns the database (todos_owner in k8s/postgres-roles.sql)"
            )
        else:
            message = (
                f"the database schema is behind this version and {variable}'s role {role} may not migrate it"
                f" ({denied}): run `python -m web migrate` with DATABASE_MIGRATION_URL set to the owner"
                " role's URL (todos_owner in k8s/postgres-roles.sql)"
            )
        raise SchemaBehindError(message) from exc


def caused_by(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of `kind` in `exc`'s chain of causes (`exc` itself included), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_postgres() -> bool:
    return str(get_connection("default").capabilities.dialect) == "postgres"


async def ping() -> None:
    """One round trip to the database; raises when it does not answer."""
    await get_connection("default").execute_query("SELECT 1")


OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    DBConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.InsufficientResourcesError,
    # a pooled connection torn down by the server mid-use ("cannot switch to state ...")
    asyncpg.InternalClientError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database cannot be reached, rather than a bug."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OUTAGE_ERRORS):
            return True
        if "database is locked" in str(seen):  # SQLite busy beyond its timeout
            return True
        seen = seen.__cause__ or seen.__context__
    return False
