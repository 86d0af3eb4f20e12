"""notifier.replies with a stand-in bucket: which messages reply, and that a bucket failing or hanging never
holds a send or the shutdown. (End to end, against NATS: test_chat_options.)"""

from __future__ import annotations

import asyncio
import time

from nats.js.errors import KeyNotFoundError

from notifier import replies as replies_module
from notifier.formatting import Event
from notifier.replies import Replies
from streams.subjects import Change, reply_key

CHAT = -100123


class Entry:
    def __init__(self, value: bytes) -> None:
        self.value = value


class KV:
    """A bucket that answers from a dict, raises `error`, or hangs (`hang`)."""

    def __init__(self, error: Exception | None = None, *, hang: bool = False) -> None:
        self.values: dict[str, bytes] = {}
        self.error, self.hang = error, hang

    async def _trouble(self) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        if self.error is not None:
            raise self.error

    async def get(self, key: str) -> Entry:
        await self._trouble()
        if key not in self.values:
            raise KeyNotFoundError
        return Entry(self.values[key])

    async def put(self, key: str, value: bytes) -> int:
        await self._trouble()
        self.values[key] = value
        return 1


def event(change: Change, todo_id: str = "t1") -> Event:
    return Event(change, {"id": todo_id, "task": "x"})


def replies_with(kv: KV, thread_id: int | None = None) -> Replies:
    return Replies(kv, thread_id)  # type: ignore[arg-type]


async def test_only_an_update_or_deletion_sent_alone_replies():
    kv = KV()
    kv.values[reply_key(CHAT, None, "t1")] = b"42"
    replies = replies_with(kv)
    assert await replies.target(CHAT, [event(Change.UPDATED)]) == 42
    assert await replies.target(CHAT, [event(Change.DELETED)]) == 42
    assert await replies.target(CHAT, [event(Change.CREATED)]) is None
    assert await replies.target(CHAT, [event(Change.UPDATED), event(Change.UPDATED, "t2")]) is None  # grouped
    assert await replies.target(CHAT, [event(Change.UPDATED, "never announced")]) is None
    assert await replies.target(-100999, [event(Change.UPDATED)]) is None  # another chat: its own ids
    assert await replies_with(kv, thread_id=7).target(CHAT, [event(Change.UPDATED)]) is None  # another topic
    assert await replies.target(CHAT, [Event(Change.UPDATED, {"task": "no id"})]) is None


async def test_every_creation_of_a_message_is_recorded_and_nothing_else():
    kv = KV()
    replies = replies_with(kv, thread_id=7)
    grouped = [event(Change.CREATED, "a"), event(Change.UPDATED, "b"), event(Change.CREATED, "c")]
    replies.announced(CHAT, grouped, 99)
    replies.announced(CHAT, [event(Change.CREATED, "d")], None)  # no message id (the log sink): nothing
    await replies.close()
    assert kv.values == {reply_key(CHAT, 7, "a"): b"99", reply_key(CHAT, 7, "c"): b"99"}


async def test_a_failing_bucket_means_no_reply_not_an_error():
    replies = replies_with(KV(OSError("nats: connection closed")))
    assert await replies.target(CHAT, [event(Change.UPDATED)]) is None
    replies.announced(CHAT, [event(Change.CREATED)], 5)  # logged, never raised
    await replies.close()


async def test_a_hanging_bucket_holds_a_send_at_most_the_lookup_timeout(monkeypatch):
    monkeypatch.setattr(replies_module, "LOOKUP_TIMEOUT", 0.2)
    replies = replies_with(KV(hang=True))
    started = time.monotonic()
    assert await replies.target(CHAT, [event(Change.UPDATED)]) is None
    assert time.monotonic() - started < 1.0


async def test_a_record_is_not_awaited_and_a_hanging_one_is_given_up_on_close():
    replies = replies_with(KV(hang=True))
    started = time.monotonic()
    replies.announced(CHAT, [event(Change.CREATED)], 5)  # returns at once: the ack does not wait for it
    assert time.monotonic() - started < 0.05
    await replies.close(patience=0.2)
    assert time.monotonic() - started < 1.0
    await asyncio.sleep(0)
    assert not replies._writes  # the cancelled write is gone, nothing left behind
