"""Which replica relays (web.leader), against a real PostgreSQL: one leader at a time, woken by every
replica's commits through the outbox trigger; candidates ask once per interval and take over when the
leader's session ends."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from tests.web.conftest import ClientFactory
from tests.web.helpers import wait_for
from web import relay
from web.leader import CHANNEL, Leadership
from web.metrics import Metrics


async def _insert_outbox_rows(database_url: str, count: int) -> None:
    """Commit `count` outbox rows in one transaction, as a handler of any replica does."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            for _ in range(count):
                await conn.execute(
                    "INSERT INTO outbox (event_id, subject, payload, created_at)"
                    " VALUES ($1, 'todos.created', $2, now())",
                    uuid.uuid4(),
                    b"{}",
                )
    finally:
        await conn.close()


async def _last_query_start(database_url: str, pid: int) -> object:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT query_start FROM pg_stat_activity WHERE pid = $1", pid)
    finally:
        await conn.close()


async def test_one_replica_leads_hears_every_commit_and_hands_over_when_its_session_ends(
    database_url: str, make_client: ClientFactory
) -> None:
    await make_client(database_url)  # migrated (outbox and its trigger); no NATS, so no relay of its own
    woken_a, woken_b = asyncio.Event(), asyncio.Event()
    a = Leadership(database_url, woken_a, claim_interval=0)
    b = Leadership(database_url, woken_b, claim_interval=3600)
    try:
        assert await a.claim()
        assert not await b.claim(now=True), "the lock is a's"
        assert b._conn is not None
        b_pid = b._conn.get_server_pid()

        # a candidate asks the database at most once per claim interval, whatever its commits wake it for
        asked_at = await _last_query_start(database_url, b_pid)
        assert [await b.claim() for _ in range(50)] == [False] * 50
        assert await _last_query_start(database_url, b_pid) == asked_at

        # a commit made anywhere wakes the leader (the trigger's NOTIFY); the candidate listens to nothing
        woken_a.clear()
        await _insert_outbox_rows(database_url, 3)
        await asyncio.wait_for(woken_a.wait(), timeout=10)
        assert not woken_b.is_set()

        # the leader's session ends (its process died): the lock is free, the candidate takes it
        assert a._conn is not None
        a_pid = a._conn.get_server_pid()
        woken_a.clear()
        terminator = await asyncpg.connect(database_url)
        try:
            assert await terminator.fetchval("SELECT pg_terminate_backend($1)", a_pid)
        finally:
            await terminator.close()
        await asyncio.wait_for(woken_a.wait(), timeout=10)  # the lost session wakes the relay loop
        assert not a.leading
        assert await wait_for(lambda: b.claim(now=True))
        assert not await a.claim(), "a reconnects as a candidate"

        woken_b.clear()
        await _insert_outbox_rows(database_url, 1)
        await asyncio.wait_for(woken_b.wait(), timeout=10)
    finally:
        await a.close()
        await b.close()


async def test_the_trigger_notifies_on_postgres_only_once_per_insert_statement(
    database_url: str, make_client: ClientFactory
) -> None:
    """One notification for a transaction of many rows: PostgreSQL folds equal notifications of one
    transaction, so a burst of commits costs the leader a few wakeups, not one per row."""
    await make_client(database_url)
    heard: list[str] = []
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener(CHANNEL, lambda *args: heard.append(args[2]))
        await _insert_outbox_rows(database_url, 5)
        await wait_for(lambda: asyncio.sleep(0, result=heard))
        await listener.execute("SELECT 1")  # anything queued behind the first is read by now
        assert heard == [CHANNEL]
    finally:
        await listener.close()


class _CutOff:
    """A broker whose NATS connection is down."""

    nc = None
    is_connected = False


async def test_a_leader_cut_off_from_nats_lets_another_replica_relay(
    database_url: str, make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader's NATS link is gone (a partition, rejected credentials) while its database session lives:
    after RELEASE_AFTER it gives the lock up, and a replica that reaches NATS takes it. It stays ready
    (it still serves), so Kubernetes would never have replaced it."""
    await make_client(database_url)
    monkeypatch.setattr(relay, "RELEASE_AFTER", 0.2)
    monkeypatch.setattr(relay, "SWEEP_INTERVAL", 0.05)
    wakeup = asyncio.Event()
    cut_off = Leadership(database_url, wakeup, claim_interval=0)
    other = Leadership(database_url, asyncio.Event(), claim_interval=0)
    assert await cut_off.claim()
    assert not await other.claim()
    metrics = Metrics()
    stuck = relay.Relay(_CutOff(), metrics, wakeup, cut_off)  # type: ignore[arg-type]
    task = asyncio.create_task(stuck.run())
    try:
        await wait_for(lambda: asyncio.sleep(0, result=not cut_off.leading), timeout=10)
        assert await wait_for(other.claim, timeout=10)
    finally:
        stuck.stop()
        await asyncio.wait_for(task, timeout=10)
        await cut_off.close()
        await other.close()
