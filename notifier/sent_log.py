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

A first delivery is not looked up: its `sending` mark is written only if the key has no record yet
(a JetStream publish expecting the subject's last sequence to be 0), which answers the lookup in the
same round trip. If a record exists (a consumer made anew replays what was sent; the relay published
an event again after the stream's duplicate window), the mark is not written and the event is looked up
like a redelivery.

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
from nats.js.api import Header
from nats.js.errors import APIError, KeyNotFoundError
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
# JetStream's answer to a publish whose expected last subject sequence does not match
_WRONG_LAST_SEQUENCE = frozenset((10071, 10164))
_ABSENT: dict[str, Any] = {Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: "0"}


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

    def _write(self, event_id: str, value: bytes, *, if_absent: bool = False) -> asyncio.Future[Any]:
        before = self._last.get(event_id)
        subject = self._prefix + subjects.sent_key(event_id)
        headers = _ABSENT if if_absent else None

        async def write() -> None:
            if before is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(before)
            await self._js.publish(subject, value, timeout=WRITE_TIMEOUT, headers=headers)

        future = asyncio.ensure_future(write())
        self._last[event_id] = future

        def done(_: asyncio.Future[Any]) -> None:
            if self._last.get(event_id) is future:
                del self._last[event_id]

        future.add_done_callback(done)
        return future

    async def sending(self, event_ids: Iterable[str], patience: float, *, first: Iterable[str] = ()) -> set[str] | None:
        """Mark the events as leaving. The events of `first` (not looked up: first deliveries) are marked
        only where their key holds no record yet.

        None if a mark was not stored within `patience` seconds (the caller must not send: a later delivery
        finding no record would send a copy without a word); else the events of `first` that already had a
        record and were not marked (the caller looks them up before sending them).
        """
        absent = set(first)
        ids = list(event_ids)
        writes = [self._write(event_id, SENDING, if_absent=event_id in absent) for event_id in ids]
        for write in writes:
            write.add_done_callback(_quiet)
        try:
            results = await asyncio.wait_for(asyncio.shield(asyncio.gather(*writes, return_exceptions=True)), patience)
        except TimeoutError:
            return None
        recorded = set()
        for event_id, result in zip(ids, results, strict=True):
            if isinstance(result, APIError) and result.err_code in _WRONG_LAST_SEQUENCE and event_id in absent:
                recorded.add(event_id)
            elif isinstance(result, BaseException):
                return None
        return recorded

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
