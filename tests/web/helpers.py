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
