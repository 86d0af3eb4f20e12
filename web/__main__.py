"""`python -m web`: the todo API with its outbox relay; SIGTERM stops it gracefully."""

from __future__ import annotations

import errno

import structlog
from aiohttp import web

from streams.connection import redact_url
from streams.logs import configure_logging
from streams.runtime import loop_factory
from web import db
from web.app import init_app
from web.settings import Settings

# requests in flight get this long to finish after SIGTERM (aiohttp may wait up to twice that)
SHUTDOWN_TIMEOUT = 5.0


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
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
        # the two ways a start fails on a healthy install: one line for the operator, not a traceback
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            raise SystemExit(f"web: cannot listen on {settings.host}:{settings.port}: address already in use") from None
        if db.is_outage(exc):
            where = redact_url(settings.database_url)
            raise SystemExit(f"web: the database at {where} is not reachable: {exc or type(exc).__name__}") from None
        raise
    log.info("web.stopped")


if __name__ == "__main__":
    main()
