"""NOTIFIER_MODE=core: the course's at-most-once notifier for a NATS without JetStream.

A plain queue subscription `todos_broadcasters` on `todos.*`: each event reaches one replica. It
goes through the same pipeline as JetStream events (pacing, 429s, migration, pauses hold it in
memory), but nothing is acked or recorded: settling is a no-op, and an event the policy would
retry or dead-letter is logged and dropped. A replica that dies loses what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from streams import subjects

log = structlog.get_logger(__name__)
FETCH_TIMEOUT = 1.0


class CoreSource:
    """The pipeline's source in core mode."""

    max_deliver = 0
    ack_wait = math.inf  # nothing is redelivered: a held event is this replica's until it is sent
    epoch = 0
    delivered_since = 0.0  # no ack deadline in core mode

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._sub: Subscription | None = None
        self._arrived: asyncio.Queue[Msg] = asyncio.Queue()

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def ready(self) -> bool:
        return self.connected and self._sub is not None

    async def subscribe(self) -> None:
        self._sub = await self._nc.subscribe(subjects.SUBJECTS, queue=subjects.QUEUE_GROUP, cb=self._arrived.put)
        log.info("core.subscribed", subject=subjects.SUBJECTS, queue=subjects.QUEUE_GROUP)

    async def unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def stop_fetching(self) -> list[Msg]:
        """Leave the queue group (the other replicas get what follows); what already arrived is returned."""
        await self.unsubscribe()
        left = []
        while not self._arrived.empty():
            left.append(self._arrived.get_nowait())
        return left

    async def fetch(self, batch: int) -> list[Msg]:
        try:
            first = await asyncio.wait_for(self._arrived.get(), FETCH_TIMEOUT)
        except TimeoutError:
            return []
        msgs = [first]
        while len(msgs) < batch and not self._arrived.empty():
            msgs.append(self._arrived.get_nowait())
        return msgs

    async def ack(self, msg: Msg) -> None:  # noqa: ARG002 (Source's signature)
        return None

    async def nak(self, msg: Msg, delay: float) -> None:
        del delay
        log.error("event.dropped", subject=msg.subject, detail="core mode is at-most-once: not retried")

    async def term(self, msg: Msg, reason: str) -> None:
        log.error("event.dropped", subject=msg.subject, reason=reason, detail="core mode is at-most-once")

    async def in_progress(self, msg: Msg) -> None:  # noqa: ARG002 (Source's signature)
        return None

    async def wait_connected(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
