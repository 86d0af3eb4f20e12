"""Small helpers for the web tests: waiting for a condition, reading the stream and the database."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import nats
from nats.js.errors import NotFoundError

from streams.subjects import MSG_ID_HEADER, STREAM
from web.relay import RELAY_LOCK_KEY

T = TypeVar("T")

TIMESTAMP = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


async def wait_for(probe: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)


@dataclass(frozen=True)
class Event:
    seq: int
    subject: str
    payload: dict[str, Any]
    msg_id: str


async def stream_events(nats_url: str) -> list[Event]:
    """Every message of the TODOS stream, in stream order."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(STREAM)).state
        events = []
        for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            try:
                msg = await js.get_msg(STREAM, seq)
            except NotFoundError:
                continue
            events.append(
                Event(seq, msg.subject, json.loads(msg.data or b""), (msg.headers or {}).get(MSG_ID_HEADER, ""))
            )
        return events
    finally:
        await nc.close()


async def wait_for_events(nats_url: str, count: int, timeout: float = 10.0) -> list[Event]:
    """The stream's events once there are at least `count` of them."""

    async def enough() -> list[Event] | None:
        events = await stream_events(nats_url)
        return events if len(events) >= count else None

    return await wait_for(enough, timeout=timeout)


async def sql(database_url: str, query: str) -> list[asyncpg.Record]:
    """Run one query on the test database, outside the app."""
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


async def count_rows(database_url: str, table: str) -> int:
    return int((await sql(database_url, f"SELECT count(*) AS n FROM {table}"))[0]["n"])


async def relay_lock_holders(database_url: str) -> int:
    """How many sessions hold the relay's advisory lock: 1 while a relay is in a batch, else 0."""
    rows = await sql(
        database_url,
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
        f" AND classid = {RELAY_LOCK_KEY >> 32} AND objid = {RELAY_LOCK_KEY & 0xFFFFFFFF} AND objsubid = 1",
    )
    return int(rows[0]["n"])


async def last_seq(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(STREAM)).state.last_seq)
    finally:
        await nc.close()


async def wait_until_settled(nats_url: str, database_url: str, timeout: float = 20.0) -> list[Event]:
    """The stream's events once the relay has nothing left to do; then no copy can turn up late.

    Settled: the outbox is empty and no relay is in a batch (its advisory lock is free), twice in a
    row with the stream's last sequence unchanged in between. A row is deleted only after NATS acked
    it, in the batch's transaction, so once the outbox is empty and no batch runs, nothing is in flight.
    """
    previous: list[int | None] = [None]

    async def settled() -> bool:
        idle = await count_rows(database_url, "outbox") == 0 and await relay_lock_holders(database_url) == 0
        seq = await last_seq(nats_url) if idle else None
        stable = seq is not None and seq == previous[0]
        previous[0] = seq
        return stable

    await wait_for(settled, timeout=timeout)
    return await stream_events(nats_url)
