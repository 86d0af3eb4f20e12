"""Publishing outbox rows: pipelined JetStream publishes, or core publishes on a server without JetStream.

JetStream stores messages in the order one connection sends them, so a batch is sent without
waiting and the acks are collected afterwards; what counts is the acked prefix. Only a server
whose INFO says it has no JetStream at all (a plain NATS, as in the course setup) gets core
publishes, said once in the log; JetStream is looked for again every `RECHECK_INTERVAL`. A
server that has JetStream but does not answer its API (restarting, a cluster electing a leader)
is waited for: core publishes there would be acked by nobody and lost to the stream.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from streams.connection import server_info
from streams.subjects import MSG_ID_HEADER
from web.models import OutboxEvent

log = structlog.get_logger(__name__)

ACK_TIMEOUT = 3
RECHECK_INTERVAL = 30.0


class NoStreamError(RuntimeError):
    """JetStream runs but no stream takes todos.* subjects: `just bootstrap-streams` is missing."""


class JetStreamUnavailableError(RuntimeError):
    """The server has JetStream but its API does not answer (yet): retried with backoff."""


class Publisher:
    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.core_mode = False
        self._checked_at = 0.0
        # the connection's reconnect count when JetStream last answered
        self._verified_at: int | None = None
        # streams in the account, as JetStream last said (the web user may not list their names)
        self._streams: int | None = None

    @property
    def mode(self) -> str:
        return "core" if self.core_mode else "jetstream"

    async def publish(self, events: list[OutboxEvent]) -> tuple[int, Exception | None]:
        """How many events, from the first, NATS took; and the error that stopped the rest."""
        if self.core_mode and time.monotonic() - self._checked_at > RECHECK_INTERVAL:
            await self._check()
        reconnects = self.nc.stats["reconnects"]
        if not self.core_mode and self._verified_at != reconnects:
            # look before the first publish on each connection: a plain subscriber would see attempts otherwise
            if not await self._check():
                return 0, JetStreamUnavailableError("no JetStream answers")
            self._verified_at = reconnects
        if self.core_mode:
            return await self._publish_core(events)
        return await self._publish_jetstream(events)

    async def _publish_jetstream(self, events: list[OutboxEvent]) -> tuple[int, Exception | None]:
        futures: list[asyncio.Future[PubAck]] = []
        acked = 0
        try:
            for event in events:
                headers = {MSG_ID_HEADER: str(event.event_id)}
                futures.append(await self.js.publish_async(event.subject, bytes(event.payload), headers=headers))
            async with asyncio.timeout(ACK_TIMEOUT):
                for future in futures:
                    await future
                    acked += 1
        except (NoStreamResponseError, TimeoutError) as exc:
            # no responder, or no ack at all: a plain subscriber on the subject answers nothing, and the page's
            # live feed (web.feed) is one in every API process, so a missing stream mostly shows as a timeout;
            # an account without any stream is then still named for what it is
            if await self._check():
                missing = isinstance(exc, NoStreamResponseError) or self._streams == 0
                return acked, NoStreamError("no stream takes todos.*") if missing else exc
            if not self.core_mode:
                return acked, JetStreamUnavailableError("no JetStream answers")
            done, error = await self._publish_core(events[acked:])
            return acked + done, error
        except Exception as exc:
            return acked, exc
        finally:
            # an unresolved future would hold one of nats-py's pending-publish slots for good
            for future in futures:
                future.cancel()
        return acked, None

    async def _publish_core(self, events: list[OutboxEvent]) -> tuple[int, Exception | None]:
        try:
            for event in events:
                await self.nc.publish(event.subject, bytes(event.payload), headers={MSG_ID_HEADER: str(event.event_id)})
            await self.nc.flush(timeout=ACK_TIMEOUT)
        except Exception as exc:
            return 0, exc
        return len(events), None

    def _server_offers_jetstream(self) -> bool:
        return bool(server_info(self.nc).get("jetstream", False))

    async def _check(self) -> bool:
        """Whether JetStream answers; switches to core publishes only on a server without JetStream."""
        self._checked_at = time.monotonic()
        try:
            self._streams = (await self.js.account_info()).streams
        except (ServiceUnavailableError, NoRespondersError, NoStreamResponseError):
            if not self.core_mode and not self._server_offers_jetstream():
                log.warning(
                    "relay.core_fallback", reason="the NATS server has no JetStream: events go out as core publishes"
                )
                self.core_mode = True
            return False
        if self.core_mode:
            log.info("relay.jetstream_found", reason="JetStream answers again: events go to the stream")
            self.core_mode = False
        return True
