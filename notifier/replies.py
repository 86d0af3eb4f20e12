"""One thread per todo: where each todo's announcement is, shared by every replica (the `todos_replies` bucket).

When Telegram accepts a message that announces a todo's creation, its message id is recorded under the
todo (per chat and forum topic: `streams.subjects.reply_key`); a later message carrying that todo's
update or deletion alone replies to it. With TELEGRAM_REPLIES=false (or in core mode, which has no KV)
there is no `Replies` and nothing is read or written.

| message                                   | replies to                  | records its id for          |
|-------------------------------------------|-----------------------------|-----------------------------|
| one creation                              | nothing                     | that todo                   |
| one update or deletion                    | the todo's announcement     | nothing                     |
| several events (grouped while paced)      | nothing: it holds several   | every creation it carries   |
|                                           | todos, so it is no todo's   |                             |
|                                           | thread                      |                             |

A reply is a nicety, never a reason to hold an event: the lookup waits at most LOOKUP_TIMEOUT and any
failure sends the message without a reply; an announcement that was deleted since is no failure either
(`allow_sending_without_reply`). The record is written after Telegram's ok without being awaited by the
ack (a tracked task, awaited on shutdown for up to CLOSE_TIMEOUT), so it never delays an ack, and a
record lost (NATS away at that moment) only means a later change goes without a reply. Neither path can
lose, hold or repeat an event: they decide only the `reply_parameters` of a message.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import structlog
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from notifier.formatting import Event
from notifier.settings import ChatId
from streams.subjects import Change, reply_key

log = structlog.get_logger(__name__)
LOOKUP_TIMEOUT = 1.0
WRITE_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0


class Replies:
    """Reads and writes of `todos_replies` for the messages of one topic (or none) of the chat."""

    def __init__(self, kv: KeyValue, thread_id: int | None) -> None:
        self._kv, self._thread_id = kv, thread_id
        self._writes: set[asyncio.Task[None]] = set()

    async def target(self, chat_id: ChatId, events: Sequence[Event]) -> int | None:
        """The message this one replies to: the announcement of its todo, for an update or a deletion sent
        alone; None otherwise, and whenever the bucket does not answer in time."""
        if len(events) != 1 or events[0].change is Change.CREATED or events[0].todo_id is None:
            return None
        key = reply_key(chat_id, self._thread_id, events[0].todo_id)
        try:
            entry = await asyncio.wait_for(self._kv.get(key), LOOKUP_TIMEOUT)
        except KeyNotFoundError:
            return None
        except Exception as error:  # a reply is not worth holding the event for
            log.warning("replies.lookup_failed", error=str(error) or type(error).__name__, action="sent without reply")
            return None
        value = (entry.value or b"").decode(errors="replace")
        return int(value) if value.isdigit() else None

    def announced(self, chat_id: ChatId, events: Sequence[Event], message_id: int | None) -> None:
        """Telegram took message `message_id`: record it for each creation it carries (not awaited)."""
        if message_id is None:
            return
        keys = [
            reply_key(chat_id, self._thread_id, event.todo_id)
            for event in events
            if event.change is Change.CREATED and event.todo_id is not None
        ]
        if keys:
            task = asyncio.create_task(self._record(keys, message_id), name="replies.record")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _record(self, keys: list[str], message_id: int) -> None:
        value = str(message_id).encode()
        try:
            await asyncio.wait_for(asyncio.gather(*(self._kv.put(key, value) for key in keys)), WRITE_TIMEOUT)
        except Exception as error:
            log.warning("replies.record_failed", error=str(error) or type(error).__name__, todos=len(keys))

    async def close(self, patience: float = CLOSE_TIMEOUT) -> None:
        """Let the records under way land (up to `patience` s), then give up the rest."""
        if not self._writes:
            return
        _, late = await asyncio.wait(set(self._writes), timeout=patience)
        for task in late:
            task.cancel()
        for task in late:
            with contextlib.suppress(asyncio.CancelledError):
                await task
