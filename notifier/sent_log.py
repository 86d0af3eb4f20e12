"""What happened to each event's sends, shared by every replica: the `todos_sent` KV bucket.

One key per event (`streams.subjects.sent_key`), kept as long as the stream keeps the event:

| value     | written                                              | read on a later delivery as              |
|-----------|------------------------------------------------------|------------------------------------------|
| `sent`    | after Telegram answered ok, before the ack           | SENT: ack it, send nothing               |
| `sending` | as the request leaves (not awaited: no extra latency) | MAYBE_SENT: a send whose answer was lost |
| `refused` | after Telegram refused it (an answer was read)       | NOT_SENT                                 |
| (none)    |                                                      | NOT_SENT                                 |

An older record with an empty value means `sent`. A MAYBE_SENT event is sent again (Telegram has no
idempotency key) with a line saying it may repeat an earlier message.
"""

from __future__ import annotations

import asyncio
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


class Record(StrEnum):
    SENT = "sent"
    MAYBE_SENT = "maybe_sent"
    NOT_SENT = "not_sent"


class SentLog:
    def __init__(self, kv: KeyValue, js: JetStreamContext) -> None:
        self._kv, self._js = kv, js
        self._prefix = f"$KV.{subjects.SENT_BUCKET}."
        # marks still on their way: a later write for the event waits for its mark, so it lands last
        self._marks: dict[str, asyncio.Future[Any]] = {}

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

    def sending(self, event_ids: Iterable[str]) -> None:
        """Mark the events as leaving now; fire and forget (a lost mark only loses the 'may repeat' line)."""
        for event_id in event_ids:
            try:
                future = asyncio.ensure_future(
                    self._js.publish(self._prefix + subjects.sent_key(event_id), SENDING, timeout=5.0)
                )
            except Exception as error:
                log.debug("sent_log.mark_failed", error=str(error) or type(error).__name__)
                continue
            future.add_done_callback(_quiet)
            self._marks[event_id] = future

    async def _settled_marks(self, event_ids: list[str]) -> None:
        marks = [mark for event_id in event_ids if (mark := self._marks.pop(event_id, None)) is not None]
        if marks:
            await asyncio.wait(marks)

    def forget(self, event_ids: Iterable[str]) -> None:
        """Stop tracking the marks of events this replica let go."""
        for event_id in event_ids:
            self._marks.pop(event_id, None)

    async def sent(self, event_ids: Iterable[str]) -> None:
        """Record that Telegram accepted the events (raises on NATS trouble: the caller retries)."""
        ids = list(event_ids)
        await self._settled_marks(ids)
        await asyncio.gather(*(self._kv.put(subjects.sent_key(event_id), SENT) for event_id in ids))

    async def refused(self, event_ids: Iterable[str]) -> None:
        """Telegram answered and did not take them: a later delivery is a plain first try again."""
        ids = list(event_ids)
        await self._settled_marks(ids)
        await asyncio.gather(*(self._kv.put(subjects.sent_key(event_id), REFUSED) for event_id in ids))


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("sent_log.mark_failed", error=str(future.exception()) or "error")
