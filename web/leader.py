"""Which API replica relays the outbox, on PostgreSQL: the one whose own session holds an advisory lock.

Every replica keeps one connection of its own (outside the pool) and tries `pg_try_advisory_lock` on it
at most once per `CLAIM_INTERVAL`. The one that gets it is the leader until that session ends: it relays,
and it LISTENs on the channel the outbox's trigger notifies (web/migrations/0002), so a commit made by any
replica wakes it within milliseconds. The others pay nothing per commit: no transaction, no lock attempt,
one cheap query per `CLAIM_INTERVAL`.

When the leader dies its session ends, PostgreSQL frees the lock, and a candidate takes it at its next
try: a hand-over takes at most `CLAIM_INTERVAL` plus one connection. A leader whose host vanishes without
closing its socket is found by the server's TCP keepalives (`KEEPALIVE`, about 11 s). Each relay batch
still takes a transaction-level lock (web.relay), so two relays never overlap, even in the moment a
leader's session is lost while it is in a batch.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog
from tortoise.backends.base.config_generator import expand_db_url

from web.db import CONNECT_TIMEOUT

log = structlog.get_logger(__name__)

# session-level advisory lock of the relaying replica ("relay" in ASCII); batches lock RELAY_LOCK_KEY
LEADER_LOCK_KEY = 0x72656C6179
CHANNEL = "outbox"
CLAIM_INTERVAL = 1.0
# the server drops a silent leader's session after idle + interval x count seconds
KEEPALIVE = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}
APPLICATION_NAME = "todo-events relay"


def connect_kwargs(database_url: str) -> dict[str, Any]:
    """asyncpg.connect's arguments for DATABASE_URL, as tortoise reads it."""
    credentials = expand_db_url(database_url)["credentials"]
    return {
        "host": credentials.get("host"),
        "port": credentials.get("port"),
        "user": credentials.get("user"),
        "password": credentials.get("password"),
        "database": credentials.get("database"),
        "timeout": CONNECT_TIMEOUT,
        "server_settings": {**KEEPALIVE, "application_name": APPLICATION_NAME},
    }


class Leadership:
    """Whether this replica is the one that relays; `wakeup` is set by commits of every replica while it is."""

    def __init__(self, database_url: str, wakeup: asyncio.Event, claim_interval: float = CLAIM_INTERVAL) -> None:
        self._connect = connect_kwargs(database_url)
        self.wakeup = wakeup
        self.claim_interval = claim_interval
        self._conn: asyncpg.Connection | None = None
        self._leading = False
        self._tried_at = -float("inf")

    @property
    def leading(self) -> bool:
        """Whether this replica holds the lock now (its session is open)."""
        return self._leading and self._conn is not None and not self._conn.is_closed()

    async def claim(self, *, now: bool = False) -> bool:
        """Whether this replica leads; a candidate tries again once `claim_interval` passed (or `now`)."""
        if self.leading:
            return True
        if self._leading:
            self._leading = False
            log.warning("relay.leadership_lost", reason="the session holding the relay lock ended")
        if not now and time.monotonic() - self._tried_at < self.claim_interval:
            return False
        self._tried_at = time.monotonic()
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(**self._connect)
        conn = self._conn
        try:
            locked = await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY, timeout=CONNECT_TIMEOUT)
        except BaseException:
            await self.close()  # a session that does not answer (half-open after a failover): a new one next time
            raise
        if not locked:
            return False
        try:
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            # a leader that cannot hear the others must not hold the lock
            await self.close()
            raise
        conn.add_termination_listener(self._terminated)
        self._leading = True
        log.info("relay.leading", reason="this replica relays the outbox")
        return True

    def _notified(self, *_: object) -> None:
        self.wakeup.set()

    def _terminated(self, *_: object) -> None:
        self.wakeup.set()  # the relay loop looks again, finds leadership gone, and becomes a candidate

    async def close(self) -> None:
        """End the session: the lock goes with it, to the next candidate that tries."""
        conn, self._conn, self._leading = self._conn, None, False
        if conn is not None and not conn.is_closed():
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    await conn.close()
            except Exception:
                conn.terminate()
