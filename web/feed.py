"""The page's live feed: one core subscription to `todos.>` per process, fanned out to every browser.

Each browser's Server-Sent Events stream (web.page) is a `Listener` with a bounded buffer. The
subscription's callback formats an event once and offers the same bytes to every listener; a listener
whose buffer is full (a browser that stopped reading) is dropped: its stream ends, its EventSource
reconnects by itself and the page fetches the list again, so it skips what it missed instead of
holding memory for it. Dropping the oldest messages instead would leave silent gaps in the feed.

The subscription (on the Broker's connection) is held only while at least one browser listens, so an
API nobody watches does not receive its own events back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections import deque
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from streams.subjects import EVENT_ID_HEADER, MSG_ID_HEADER, SUBJECT_PREFIX, Change

log = structlog.get_logger(__name__)

# events a browser may fall behind by before it is dropped (a payload is well under 1 KiB)
BUFFER = 256
# a comment line this often keeps proxies and browsers from closing an idle stream
HEARTBEAT = 15.0
HEARTBEAT_LINE = b": keep-alive\n\n"
# how long an EventSource waits before it reconnects after its stream ended (milliseconds)
RETRY_MS = 1000
SUBJECT = f"{SUBJECT_PREFIX}.>"
EVENT_SUBJECTS = frozenset(change.subject for change in Change)
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")

# what /api/events says about itself in its `status` events
ON, OFF, DISCONNECTED = "on", "off", "disconnected"


def sse(event: str, data: bytes, event_id: str | None = None) -> bytes:
    """One Server-Sent Events message; a line break inside `data` becomes another `data:` line."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id else "")
    lines = b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK.split(data))
    return head.encode() + lines + b"\n"


def status_message(state: str) -> bytes:
    return sse("status", json.dumps({"events": state}).encode())


class Listener:
    """One browser's stream: messages waiting to be written, at most `limit` of them."""

    def __init__(self, limit: int) -> None:
        self._messages: deque[bytes] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self.open = True

    def offer(self, message: bytes) -> bool:
        """Queue a message; False (and nothing queued) when the buffer is full."""
        if len(self._messages) >= self._limit:
            return False
        self._messages.append(message)
        self._ready.set()
        return True

    def end(self) -> None:
        self.open = False
        self._ready.set()

    async def take(self, within: float) -> bytes:
        """Everything waiting, as one write; b"" when nothing came `within` seconds or the stream ended."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._ready.wait()
        self._ready.clear()
        if not self.open:
            return b""
        batch = b"".join(self._messages)
        self._messages.clear()
        return batch


class Feed:
    """The fan-out. `enabled` is False without NATS_URL: every stream then only says events are off."""

    def __init__(self, *, enabled: bool, buffer: int = BUFFER, on_drop: Callable[[], None] | None = None) -> None:
        self.enabled = enabled
        self.connected = False
        self.buffer = buffer
        self._listeners: set[Listener] = set()
        self._on_drop = on_drop
        self._closed = False
        self._nc: NatsClient | None = None
        self._subscription: Subscription | None = None
        self._following = asyncio.Lock()

    @property
    def state(self) -> str:
        if not self.enabled:
            return OFF
        return ON if self.connected else DISCONNECTED

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @property
    def subscribed(self) -> bool:
        return self._subscription is not None

    async def listen(self) -> Listener:
        """A new stream, starting with the feed's state (subscribed by the time this returns, when NATS is
        there); already ended once the feed is closed."""
        listener = Listener(self.buffer)
        listener.offer(status_message(self.state))
        if self._closed:
            listener.end()
            return listener
        self._listeners.add(listener)
        await self._follow()
        return listener

    async def leave(self, listener: Listener) -> None:
        self._listeners.discard(listener)
        await self._follow()

    async def attach(self, nc: NatsClient) -> None:
        """The Broker's connection is open: subscribe there whenever someone listens."""
        self._nc = nc
        await self._follow()

    async def _follow(self) -> None:
        """Hold the one subscription of this process exactly while someone listens (nats-py renews it on reconnect)."""
        async with self._following:
            if self._nc is None:
                return
            try:
                if self._listeners and self._subscription is None:
                    self._subscription = await self._nc.subscribe(SUBJECT, cb=self._on_message)
                    log.info("feed.subscribed", subject=SUBJECT)
                elif not self._listeners and self._subscription is not None:
                    subscription, self._subscription = self._subscription, None
                    await subscription.unsubscribe()
                    log.info("feed.unsubscribed", subject=SUBJECT)
            except Exception as exc:
                # a closed connection: the next listener tries again; the API goes on either way
                log.warning("feed.subscription_failed", error=str(exc) or type(exc).__name__)

    def connection_changed(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.broadcast(status_message(self.state))

    async def _on_message(self, msg: Msg) -> None:
        if msg.subject not in EVENT_SUBJECTS:
            return
        headers = msg.headers or {}
        # a replayed dead letter has a new Nats-Msg-Id and carries the event's own id in its header
        event_id = headers.get(EVENT_ID_HEADER) or headers.get(MSG_ID_HEADER)
        self.broadcast(sse(msg.subject, msg.data, event_id))

    def broadcast(self, message: bytes) -> None:
        for listener in list(self._listeners):
            if not listener.offer(message):
                # its handler leaves the feed (and drops the subscription if it was the last) as it ends
                self._listeners.discard(listener)
                listener.end()
                log.warning("feed.slow_client_dropped", buffer=self.buffer)
                if self._on_drop is not None:
                    self._on_drop()

    def close(self) -> None:
        """End every stream (at shutdown, so no open stream holds the server's graceful stop)."""
        self._closed = True
        for listener in self._listeners:
            listener.end()
        self._listeners.clear()
