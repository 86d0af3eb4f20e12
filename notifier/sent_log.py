"""What happened to each event's sends, shared by every replica: the `todos_sent` KV bucket.

One key per event (`streams.subjects.sent_key`), kept as long as the stream keeps the event:

| value     | written                                              | read on a later delivery as              |
|-----------|------------------------------------------------------|------------------------------------------|
| `sent`    | after Telegram answered ok, before the ack           | SENT: ack it, send nothing               |
| `sending` | as the request leaves (not awaited: no extra latency) | MAYBE_SENT: a send whose answer was lost |
| `refused` | after Telegram refused it (an answer was read)       | NOT_SENT                                 |
| (none)    |                                                      | NOT_SENT                                 |

Writes for one event are chained (each waits for the one before), so they land in the order made.
An older record with an empty value means `sent`. A MAYBE_SENT event is sent again (Telegram has no
idempotency key) with a line saying it may repeat an earlier message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from enum import StrEnum
from typing import Any

import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from streams import subjects

log = structlog.get_logger(__name__)
SENT = b"sent"
SENDING = b"sending"
REFUSED = b"refused"
WRITE_TIMEOUT = 5.0


class Record(StrEnum):
    SENT = "sent"
    MAYBE_SENT = "maybe_sent"
    NOT_SENT = "not_sent"


class SentLog:
    """Reads and writes of `todos_sent`. Writes for one event are chained, so they land in the order made."""

    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self._kv, self._js = kv, js
        self._prefix = f"$KV.{subjects.SENT_BUCKET}."
        self._last: dict[str, asyncio.Future[Any]] = {}  # event id -> its latest write, maybe under way

    async def lookup(self, event_id: str) -> Record:
        try:
            entry = await self._kv.get(subjects.sent_key(event_id))
        except KeyNotFoundError:
            return Record.NOT_SENT
        value = entry.value or b""
        if value == SENDING:
            return Record.MAYBE_SENT
        if value == REFUSED:
            return Record.NOT_SENT
        return Record.SENT

    async def lookup_all(self, event_ids: Iterable[str]) -> list[Record]:
        return list(await asyncio.gather(*(self.lookup(event_id) for event_id in event_ids)))

    def _write(self, event_id: str, value: bytes) -> asyncio.Future[Any]:
        before = self._last.get(event_id)
        subject = self._prefix + subjects.sent_key(event_id)

        async def write() -> None:
            if before is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(before)
            await self._js.publish(subject, value, timeout=WRITE_TIMEOUT)

        future = asyncio.ensure_future(write())
        self._last[event_id] = future

        def done(_: asyncio.Future[Any]) -> None:
            if self._last.get(event_id) is future:
                del self._last[event_id]

        future.add_done_callback(done)
        return future

    def sending(self, event_ids: Iterable[str]) -> asyncio.Future[Any]:
        """Mark the events as leaving now. The caller may await the marks or not (a lost mark only loses
        the 'may repeat' line of a later copy); the result never raises."""
        writes = [self._write(event_id, SENDING) for event_id in event_ids]
        for write in writes:
            write.add_done_callback(_quiet)
        return asyncio.gather(*writes, return_exceptions=True)

    def refused(self, event_ids: Iterable[str]) -> None:
        """Telegram answered and did not take them (a later delivery is a plain first try); not awaited."""
        for event_id in event_ids:
            self._write(event_id, REFUSED).add_done_callback(_quiet)

    async def sent(self, event_ids: Iterable[str]) -> None:
        """Record that Telegram accepted the events; raises on NATS trouble (the caller retries)."""
        await asyncio.gather(*(self._write(event_id, SENT) for event_id in event_ids))


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("sent_log.write_failed", error=str(future.exception()) or "error")
