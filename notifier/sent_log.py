"""What happened to each event's sends, shared by every replica: the `todos_sent` KV bucket.

One key per event (`streams.subjects.sent_key`), kept as long as the stream keeps the event:

| value     | written                                              | read on a later delivery as              |
|-----------|------------------------------------------------------|------------------------------------------|
| `sent`    | after Telegram answered ok, before the ack           | SENT: ack it, send nothing               |
| `sending` | before the request leaves (awaited: no send without  | SENDING: a send began and nobody knows   |
|           | it, so "no record" means "never sent")               | its answer; its sender may still record  |
| `lost`    | after a send whose answer was lost (timeout, 5xx)    | MAYBE_SENT: a send whose answer was lost |
| `refused` | after Telegram refused it (an answer was read)       | NOT_SENT                                 |
| (none)    |                                                      | NOT_SENT                                 |

Writes for one event are chained (each waits for the one before), so they land in the order made.
An older record with an empty value means `sent`. A MAYBE_SENT event is sent again (Telegram has no
idempotency key) with a line saying it may repeat an earlier message. A SENDING one is looked up again
after `SENDING_GRACE` first: its sender may be alive, holding Telegram's ok, and waiting for NATS to
take its `sent` record (after a NATS outage longer than the ack wait, the event is delivered again at
once, to whichever replica reconnected first); only if the mark is still there is it MAYBE_SENT.
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
LOST = b"lost"
REFUSED = b"refused"
WRITE_TIMEOUT = 5.0
# how long a later delivery that finds `sending` waits for the sender's own record (replicas reconnect
# every 0.5 s; the sender retries its record at once when NATS is back)
SENDING_GRACE = 2.0


class Record(StrEnum):
    SENT = "sent"
    SENDING = "sending"
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
            return Record.SENDING
        if value == LOST:
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

    async def sending(self, event_ids: Iterable[str], patience: float) -> bool:
        """Mark the events as leaving; whether every mark was stored within `patience` seconds (if not, the
        caller must not send: a later delivery finding no record would send a copy without a word)."""
        writes = [self._write(event_id, SENDING) for event_id in event_ids]
        for write in writes:
            write.add_done_callback(_quiet)
        try:
            results = await asyncio.wait_for(asyncio.shield(asyncio.gather(*writes, return_exceptions=True)), patience)
        except TimeoutError:
            return False
        return not any(isinstance(result, BaseException) for result in results)

    def lost(self, event_ids: Iterable[str]) -> None:
        """The send's answer was lost (timeout, 5xx): a later delivery sends it with the 'may repeat' line,
        at once (nobody will record it); not awaited."""
        for event_id in event_ids:
            self._write(event_id, LOST).add_done_callback(_quiet)

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
