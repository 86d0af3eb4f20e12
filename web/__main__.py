"""`python -m web`: the todo API with its outbox relay (SIGTERM stops it gracefully); `python -m web migrate`:
bring the database schema up to date and exit."""

from __future__ import annotations

import argparse
import asyncio
import errno
from collections.abc import Sequence

import asyncpg  # type: ignore[import-untyped]
import structlog
from aiohttp import web

from streams.logs import configure_logging, redact
from streams.runtime import loop_factory
from web import db
from web.app import init_app
from web.settings import Settings, shown_url

# requests in flight get this long to finish after SIGTERM (aiohttp may wait up to twice that)
SHUTDOWN_TIMEOUT = 5.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m web", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="the HTTP API (the default)")
    commands.add_parser(
        "migrate",
        help="apply the pending schema migrations as DATABASE_MIGRATION_URL's role (else DATABASE_URL's) and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    command = _parser().parse_args(argv).command
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    if command == "migrate":
        migrate(settings)
    else:
        serve(settings)


def serve(settings: Settings) -> None:
    if settings.needs_database_url:
        raise SystemExit(
            "DATABASE_URL: not set, so the API would use SQLite while DATABASE_MIGRATION_URL migrates PostgreSQL:"
            " set it to the PostgreSQL database (as the API's role)"
        )
    log = structlog.get_logger("web")
    log.info("web.starting", host=settings.host, port=settings.port, nats=settings.nats_url is not None)
    # run_app turns SIGTERM and SIGINT into a graceful stop: no new connections, in-flight requests
    # finish, then the cleanup contexts close the relay (after a last flush), NATS and the database
    try:
        web.run_app(
            init_app(settings),
            host=settings.host,
            port=settings.port,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            access_log=None,
            print=None,
            loop=loop_factory()(),
        )
    except Exception as exc:
        # the ways a start fails on a healthy install: one line for the operator, not a traceback
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            raise SystemExit(f"web: cannot listen on {settings.host}:{settings.port}: address already in use") from None
        _stop_on_database_error(exc, settings.database_url)
        raise
    log.info("web.stopped")


def migrate(settings: Settings) -> None:
    """Apply the pending migrations and print one line saying which; exit 1 with one line when that fails."""
    if settings.database_migration_url is not None:
        url, variable, sqlite_path = settings.database_migration_url, "DATABASE_MIGRATION_URL", None
    else:
        url, variable, sqlite_path = settings.database_url, "DATABASE_URL", settings.sqlite_path
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            applied = runner.run(db.migrate_schema(url, sqlite_path, variable=variable))
    except Exception as exc:
        _stop_on_database_error(exc, url)
        raise
    if applied:
        print(f"web: applied {len(applied)} migration(s) to {shown_url(url)}: {', '.join(applied)}")
    else:
        print(f"web: {shown_url(url)} is up to date: no migration to apply")


def _stop_on_database_error(exc: BaseException, url: str) -> None:
    """SystemExit with one line (passwords hidden) when `exc` says the database cannot be used as configured."""
    if isinstance(exc, db.SchemaBehindError):
        raise SystemExit(redact(f"web: {exc}")) from None
    refused = db.caused_by(exc, asyncpg.PostgresError)
    if refused is not None and not isinstance(refused, db.OUTAGE_ERRORS):
        # a database that does not exist, a password it does not take, a role it does not know
        raise SystemExit(redact(f"web: the database at {shown_url(url)} refused: {refused}")) from None
    if db.is_outage(exc):
        raise SystemExit(
            redact(f"web: the database at {shown_url(url)} is not reachable: {exc or type(exc).__name__}")
        ) from None


if __name__ == "__main__":
    main()
