"""The API's NATS connection (when NATS_URL is set), opened in the background so the API serves at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.client import Client as NatsClient

from streams.connection import NatsSettings, connect
from streams.permissions import WEB

log = structlog.get_logger(__name__)

DRAIN_TIMEOUT = 5.0

OnOpen = Callable[[NatsClient], Awaitable[None]]
OnChange = Callable[[bool], None]


class Broker:
    """Holds the connection once it exists: NATS may come up after the API (events wait in the outbox).

    `on_open` runs once the connection first opens (the page's feed subscribes on it); `on_change` is told
    `is_connected` whenever the connection opens, drops or comes back.
    """

    def __init__(self, on_open: OnOpen | None = None, on_change: OnChange | None = None) -> None:
        self.nc: NatsClient | None = None
        self._opening: asyncio.Task[None] | None = None
        self._on_open = on_open
        self._on_change = on_change

    @property
    def is_connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def start(self, settings: NatsSettings, wakeup: asyncio.Event) -> None:
        """Connect in the background; `wakeup` is set on connect and on every reconnect."""
        if settings.nats_url is None:
            log.info("nats.disabled", reason="NATS_URL is not set: no events are published and no outbox rows written")
            return

        async def ship_waiting_events() -> None:
            wakeup.set()
            self._changed()

        async def disconnected() -> None:
            self._changed()

        async def open_connection() -> None:
            # streams.connection.connect retries until a server answers
            self.nc = await connect(
                settings,
                name="todo-web",
                identity=WEB,
                on_disconnected=disconnected,
                on_reconnected=ship_waiting_events,
            )
            wakeup.set()
            if self._on_open is not None:
                try:
                    await self._on_open(self.nc)
                except Exception as exc:
                    # the live feed is a convenience: the API and its outbox go on without it
                    log.warning("nats.on_open_failed", error=str(exc) or type(exc).__name__)
            self._changed()

        self._opening = asyncio.create_task(open_connection(), name="nats-connect")

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.is_connected)

    async def stop(self) -> None:
        """Stop connecting; drain an open connection (bounded), else close it."""
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opening
        if self.nc is None:
            return
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self.nc.drain()
        except Exception as exc:
            log.warning("nats.drain_failed", error=str(exc) or type(exc).__name__)
            with contextlib.suppress(Exception):
                await self.nc.close()
