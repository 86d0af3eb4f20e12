"""Per-chat state of one replica: where the chat lives now (after a migration) and when it may be sent to.

A migrated chat id is stored in the `todos_notifier` KV bucket so every replica follows it; each
replica reads it at start, when its own send meets ChatMigrated, and every REFRESH_INTERVAL.
The "not before" gate holds every send to a chat until a RetryAfter has elapsed; notifier.pacing
feeds it the pauses other replicas met too, and paces sends through shared slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from notifier.settings import ChatId
from streams.subjects import migration_key

log = structlog.get_logger(__name__)
REFRESH_INTERVAL = 10.0


class ChatRoute:
    """The configured chat, following migrations (shared through KV when there is one)."""

    def __init__(self, configured: ChatId, state: KeyValue | None) -> None:
        self.configured = configured
        self.current: ChatId = configured
        self._state = state

    async def load(self) -> None:
        if self._state is None:
            return
        try:
            entry = await self._state.get(migration_key(self.configured))
        except KeyNotFoundError:
            return
        if entry.value:
            self._follow(int(entry.value.decode()), source="kv")

    def _follow(self, new_chat_id: ChatId, source: str) -> None:
        if new_chat_id == self.current:
            return
        log.error(
            "telegram.chat_migrated",
            configured_chat_id=self.configured,
            old_chat_id=self.current,
            new_chat_id=new_chat_id,
            source=source,
            action=f"set TELEGRAM_CHAT_ID={new_chat_id}",
        )
        self.current = new_chat_id

    async def migrate(self, new_chat_id: int) -> None:
        """The chat became a supergroup: use its new id from now on, and tell the other replicas."""
        self._follow(new_chat_id, source="telegram")
        if self._state is not None:
            await self._state.put(migration_key(self.configured), str(new_chat_id).encode())

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            with contextlib.suppress(Exception):
                await self.load()


class ChatGate:
    """Per-chat "not before" times: after a RetryAfter nobody on this replica sends to the chat early."""

    def __init__(self) -> None:
        self._not_before: dict[ChatId, float] = {}

    def hold(self, chat_id: ChatId, seconds: float) -> None:
        until = time.monotonic() + seconds
        self._not_before[chat_id] = max(until, self._not_before.get(chat_id, 0.0))

    def remaining(self, chat_id: ChatId) -> float:
        return max(0.0, self._not_before.get(chat_id, 0.0) - time.monotonic())

    async def wait(self, chat_id: ChatId) -> None:
        # a deadline that another RetryAfter may push later, not a one-off event
        while (left := self.remaining(chat_id)) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left)
