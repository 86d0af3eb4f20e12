"""The outbox relay: ships committed events to JetStream in id order and forgets them once acked.

A handler sets `wakeup` right after it commits, so an event normally reaches the stream within
milliseconds; a sweep every `SWEEP_INTERVAL` picks up rows left by a crash or by another replica.
Rows are read in batches, published by web.publisher (pipelined, `Nats-Msg-Id` = the event id)
and deleted in one statement once acked. Anything
that fails stays in the table and is retried with backoff; the stream's duplicate window makes a
retry of an already stored event harmless. On PostgreSQL one replica relays (web.leader elects it and
wakes it on every replica's commits; the others do nothing per commit), and each batch runs under a
transaction-level advisory lock, so two relays never overlap even while leadership changes hands.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from aiohttp import web
from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from web import db
from web.broker import Broker
from web.keys import BROKER, METRICS, OUTBOX_WAKEUP, SETTINGS
from web.leader import Leadership
from web.metrics import Metrics
from web.models import OutboxEvent
from web.publisher import NoStreamError, Publisher

log = structlog.get_logger(__name__)
T = TypeVar("T")

BATCH_SIZE = 1000
SWEEP_INTERVAL = 1.0
SAMPLE_INTERVAL = 1.0
# the backlog as the span of ids still in the outbox: two index reads (see Relay._sample_backlog)
BACKLOG_QUERY = "SELECT min(id) AS low, max(id) AS high FROM outbox"
LINGER = 0.002
BACKOFF_START, BACKOFF_MAX = 0.1, 5.0
SHUTDOWN_FLUSH = 5.0
# a leader cut off from NATS this long hands the relay to a replica that can reach it
RELEASE_AFTER = 5.0
# transaction-level advisory lock: one replica relays at a time ("outbox" in ASCII)
RELAY_LOCK_KEY = 0x6F7574626F78


class Relay:
    def __init__(
        self, broker: Broker, metrics: Metrics, wakeup: asyncio.Event, leadership: Leadership | None = None
    ) -> None:
        self.broker = broker
        # None: this process is the only relay (SQLite)
        self.leadership = leadership
        self._publisher: Publisher | None = None
        self.metrics = metrics
        self.wakeup = wakeup
        self.stopped = asyncio.Event()
        self._busy = False
        self._sampled_at = -SAMPLE_INTERVAL
        self._nats_lost_at: float | None = None  # since when NATS is unreachable

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            if self.broker.nc is None:
                raise ConnectionError("not connected to NATS yet")
            self._publisher = Publisher(self.broker.nc)
        return self._publisher

    async def run(self) -> None:
        """Relay on every wakeup and every sweep, retrying failures with backoff, until stop() (then one last flush)."""
        backoff = BACKOFF_START
        while True:
            woken = await self._pause(SWEEP_INTERVAL, self.wakeup)
            if woken and self._busy and not self.stopped.is_set():
                # under load, let commits arriving together share one batch (one query and one delete for
                # many events); a lone commit goes out at once, so a quiet API adds no delay
                await asyncio.sleep(LINGER)
            self.wakeup.clear()
            if not self.broker.is_connected:
                # NATS is away (logged by streams.connection, shown by /readyz and /metrics); the reconnect wakes us
                if self.stopped.is_set():
                    return
                with contextlib.suppress(Exception):  # outside the try below: nothing here may end the relay
                    await self._let_go_if_cut_off()
                await self._sample_backlog()
                continue
            self._nats_lost_at = None
            try:
                if not await self._leads():
                    # another replica relays, this one's commits included (they notify it)
                    await self._sample_backlog()
                    if self.stopped.is_set():
                        return
                    continue
                await _isolated(self.flush())
                await self._sample_backlog()
                backoff = BACKOFF_START
            except Exception as exc:
                self._failed(exc, backoff)
                await self._sample_backlog()
                if self.stopped.is_set():
                    return
                await self._pause(backoff, self.stopped)
                backoff = min(backoff * 2, BACKOFF_MAX)
            if self.stopped.is_set() and not self.wakeup.is_set():
                return  # stopped, and nothing was committed since the last flush began

    async def _let_go_if_cut_off(self) -> None:
        """A leader that has not reached NATS for RELEASE_AFTER seconds gives the lock up, so a replica that
        can reach NATS relays (this one stays ready: it serves, and its commits wake whoever leads)."""
        now = time.monotonic()
        if self._nats_lost_at is None:
            self._nats_lost_at = now
        if self.leadership is not None and self.leadership.leading and now - self._nats_lost_at >= RELEASE_AFTER:
            log.warning("relay.leadership_released", reason="NATS unreachable from this replica", after=RELEASE_AFTER)
            await self.leadership.close()
            self.metrics.relay_leader.set(0)

    async def _leads(self) -> bool:
        """Whether this replica relays now (a candidate asks at most once per claim interval, and once at stop)."""
        try:
            leads = True if self.leadership is None else await self.leadership.claim(now=self.stopped.is_set())
        except BaseException:
            self.metrics.relay_leader.set(0)
            raise
        self.metrics.relay_leader.set(int(leads))
        return leads

    async def _sample_backlog(self) -> None:
        """Set the backlog gauge, at most once per SAMPLE_INTERVAL, whatever the rate of commits (a gauge
        that is read only when nothing happens freezes exactly when the backlog grows).

        The span of ids still in the outbox (max - min + 1) reads two ends of the primary key's index, as
        cheap on a million rows as on ten; rows are deleted in id order, so it is the count, or a little
        more while ids are skipped (a rolled-back insert) or a replica's commits land out of id order."""
        now = time.monotonic()
        if now - self._sampled_at < SAMPLE_INTERVAL:
            return
        self._sampled_at = now
        with contextlib.suppress(Exception):  # the database may be away too; the gauge waits
            self.metrics.outbox_backlog.set(await _isolated(_backlog()))

    def stop(self) -> None:
        """Finish: one last flush, then run() returns."""
        self.stopped.set()
        self.wakeup.set()

    @staticmethod
    async def _pause(seconds: float, event: asyncio.Event) -> bool:
        """Wait until `event` is set (True) or `seconds` passed (False)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                return await event.wait()
        return False

    def _failed(self, exc: Exception, backoff: float) -> None:
        reason = type(exc).__name__
        self.metrics.publish_failures.labels(reason).inc()
        if isinstance(exc, NoStreamError):
            log.error("relay.no_stream", hint="run `just bootstrap-streams` (python -m streams bootstrap)")
        else:
            log.warning("relay.failed", error=str(exc) or reason, retry_in=backoff)

    async def flush(self) -> None:
        """Publish every pending row, batch after batch."""
        shipped = await self._relay_batch()
        # more than one event in a batch: commits are arriving faster than they are relayed
        self._busy = shipped > 1
        while shipped == BATCH_SIZE:
            shipped = await self._relay_batch()

    async def _relay_batch(self) -> int:
        if not self.broker.is_connected:
            raise ConnectionError("not connected to NATS")
        if not db.is_postgres():
            # SQLite: this process is the only relay; no transaction, so writers are not held up while NATS acks
            acked, error = await self._ship(connections.get("default"))
        else:
            async with in_transaction() as connection:
                rows = await connection.execute_query_dict(
                    "SELECT pg_try_advisory_xact_lock($1) AS locked", [RELAY_LOCK_KEY]
                )
                if not rows[0]["locked"]:
                    return 0  # another replica is relaying
                acked, error = await self._ship(connection)
        # raised after the commit, so the rows NATS did ack are gone for good
        if error is not None:
            raise error
        return acked

    async def _ship(self, connection: BaseDBAsyncClient) -> tuple[int, Exception | None]:
        """Publish the oldest pending rows and delete those NATS acked: how many, and what stopped the rest."""
        events = await OutboxEvent.all().using_db(connection).order_by("id").limit(BATCH_SIZE)
        if not events:
            return 0, None
        acked, error = await self.publisher.publish(events)
        if acked:
            await OutboxEvent.filter(id__in=[event.id for event in events[:acked]]).using_db(connection).delete()
            self._count(events[:acked])
        return acked, error

    def _count(self, events: list[OutboxEvent]) -> None:
        at = datetime.now(UTC)
        self.metrics.published.labels(self.publisher.mode).inc(len(events))
        for event in events:
            self.metrics.publish_latency.observe(max(0.0, (at - event.created_at).total_seconds()))


async def _backlog() -> int:
    rows = await connections.get("default").execute_query_dict(BACKLOG_QUERY)
    low, high = rows[0]["low"], rows[0]["high"]
    return 0 if low is None or high is None else int(high) - int(low) + 1


async def _isolated(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` in a task of its own, so its context variables die with it.

    tortoise-orm sets the task's "current transaction" before BEGIN and never resets it when BEGIN
    fails (a connection the server just dropped): every later query of that task would then go to
    the dead transaction, and a long-lived relay would fail forever after one database outage.
    """
    return await asyncio.create_task(work)


async def relay_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the relay while the app runs; on shutdown give it SHUTDOWN_FLUSH seconds to publish what it can."""
    if app[SETTINGS].nats_url is None:
        yield
        return
    settings = app[SETTINGS]
    wakeup = app[OUTBOX_WAKEUP]
    leadership = None if settings.is_sqlite else Leadership(settings.database_url, wakeup)
    relay = Relay(app[BROKER], app[METRICS], wakeup, leadership)
    task = asyncio.create_task(relay.run(), name="outbox-relay")
    yield
    relay.stop()
    try:
        async with asyncio.timeout(SHUTDOWN_FLUSH):
            await task
    except TimeoutError:
        log.warning("relay.shutdown_flush_incomplete", pending="left in the outbox for the next start or replica")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if leadership is not None:
            await leadership.close()
