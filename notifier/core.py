"""NOTIFIER_MODE=core: the course's at-most-once notifier for a NATS without JetStream.

A plain queue subscription `todos_broadcasters` on `todos.*`: each event reaches one replica, which
sends it once. Nothing is acked or recorded; an event whose send fails for good is logged and lost.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from notifier.chats import ChatGate, ChatRoute
from notifier.formatting import Event, MalformedEventError, render_events
from notifier.metrics import Metrics
from notifier.policy import Decision, decide
from notifier.telegram import Sink
from streams import subjects

log = structlog.get_logger(__name__)


class CoreSubscriber:
    def __init__(self, nc: Client, sink: Sink, route: ChatRoute, gate: ChatGate, metrics: Metrics) -> None:
        self._nc, self._sink, self._route, self._gate, self._metrics = nc, sink, route, gate, metrics
        self._sub: Subscription | None = None

    @property
    def ready(self) -> bool:
        return self._nc.is_connected and self._sub is not None

    async def run(self, stop: asyncio.Event) -> None:
        self._sub = await self._nc.subscribe(subjects.SUBJECTS, queue=subjects.QUEUE_GROUP, cb=self._on_message)
        log.info("core.subscribed", subject=subjects.SUBJECTS, queue=subjects.QUEUE_GROUP)
        try:
            await stop.wait()
        finally:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        event_id = (msg.headers or {}).get(subjects.MSG_ID_HEADER)
        with structlog.contextvars.bound_contextvars(event_id=event_id, subject=msg.subject):
            self._metrics.received.inc()
            try:
                text = render_events([Event.from_message(msg.subject, msg.data)])
            except MalformedEventError as error:
                log.error("event.dropped", reason=str(error))  # noqa: TRY400 (expected; the reason says it all)
                return
            await self._send(text)

    async def _send(self, text: str) -> None:
        while True:
            chat_id = self._route.current
            await self._gate.wait(chat_id)
            try:
                await self._sink.send(chat_id, text)
            except Exception as error:
                outcome = decide(error, 1, max_deliver=0)
            else:
                self._metrics.sent.inc()
                return
            if outcome.decision is Decision.WAIT:
                self._metrics.rate_limited.inc()
                self._gate.hold(chat_id, outcome.delay)
            elif outcome.decision is Decision.MIGRATE and outcome.new_chat_id is not None:
                await self._route.migrate(outcome.new_chat_id)
            else:
                log.error("event.dropped", reason=outcome.reason, detail="core mode is at-most-once")
                return
