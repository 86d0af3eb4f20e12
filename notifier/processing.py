"""What happens to one event taken from JetStream: de-duplicate, send, then ack, nak or dead-letter.

The event is acked only after Telegram answered ok and its id is recorded in the `todos_sent` KV
bucket; a redelivered event already recorded there is acked without a second message. What happens
on a failed send is decided by notifier.policy; this module only carries the decision out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from notifier.chats import ChatGate, ChatRoute
from notifier.formatting import Event, MalformedEventError, render_events
from notifier.metrics import Metrics
from notifier.pacing import Pacer
from notifier.policy import Decision, Outcome, decide
from notifier.settings import ChatId
from notifier.telegram import Sink
from streams import subjects
from streams.topology import MAX_DELIVER

log = structlog.get_logger(__name__)
# a RetryAfter up to this long is waited out holding the event (in_progress); longer ones nak it
HOLD_RETRY_AFTER_UP_TO = 30.0
_KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")


def event_id_of(msg: Msg) -> str:
    """The event's identity: the original id on a replayed dead letter, else its Nats-Msg-Id."""
    headers = msg.headers or {}
    found = headers.get(subjects.EVENT_ID_HEADER) or headers.get(subjects.MSG_ID_HEADER)
    if found:
        return found
    meta = msg.metadata
    return f"{meta.stream}.{meta.sequence.stream}"


class SentLog:
    """Event ids Telegram confirmed (KV `todos_sent`, TTL 2 days)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @staticmethod
    def key(event_id: str) -> str:
        return event_id if _KV_KEY.fullmatch(event_id) else hashlib.sha256(event_id.encode()).hexdigest()

    async def contains(self, event_id: str) -> bool:
        try:
            await self._kv.get(self.key(event_id))
        except KeyNotFoundError:
            return False
        return True

    async def add(self, event_id: str) -> None:
        await self._kv.put(self.key(event_id), b"")


class BotPause:
    """Set while the bot cannot reach its chat at all: the replica stops consuming and is not ready."""

    def __init__(self, metrics: Metrics) -> None:
        self.reason: str | None = None
        self._metrics = metrics

    @property
    def active(self) -> bool:
        return self.reason is not None

    def trip(self, reason: str) -> None:
        if self.reason is None:
            log.error(
                "telegram.paused",
                reason=reason,
                detail="the bot cannot post to its chat: consuming stopped, "
                "events wait in the stream; fix the token, chat id or the bot's membership",
            )
        self.reason = reason
        self._metrics.paused.set(1)

    def clear(self) -> None:
        if self.reason is not None:
            log.warning("telegram.resumed", was=self.reason)
        self.reason = None
        self._metrics.paused.set(0)


class Processor:
    """Turns one JetStream message into at most one Telegram message and settles it."""

    def __init__(  # noqa: PLR0913 (the replica's parts, wired once in __main__)
        self,
        *,
        nc: Client,
        sink: Sink,
        route: ChatRoute,
        gate: ChatGate,
        sent: SentLog,
        metrics: Metrics,
        pause: BotPause,
        probe_interval: float,
        pacer: Pacer | None = None,
    ) -> None:
        self._nc, self._sink, self._route, self._gate, self._pacer = nc, sink, route, gate, pacer
        self._sent, self._metrics, self._pause = sent, metrics, pause
        self._probe_interval = probe_interval
        # the consumer's max_deliver, read when binding (an operator may have changed it)
        self.max_deliver = MAX_DELIVER
        self._debug = logging.getLogger(__name__).isEnabledFor(logging.DEBUG)

    @property
    def connected(self) -> bool:
        """Whether NATS is reachable now: a send is only started when its outcome can be recorded."""
        return bool(self._nc.is_connected)

    @property
    def epoch(self) -> int:
        """Which NATS connection this is (reconnects so far): deliveries taken before a reconnect may be stale."""
        return int(self._nc.stats["reconnects"])

    async def handle(self, msg: Msg) -> None:
        meta = msg.metadata
        deliveries = meta.num_delivered or 1
        with structlog.contextvars.bound_contextvars(
            event_id=event_id_of(msg), stream_seq=meta.sequence.stream, deliveries=deliveries
        ):
            self._metrics.received.inc()
            try:
                outcome = await self._deliver(msg, event_id_of(msg), deliveries)
            except asyncio.CancelledError:
                # shutdown ran out of time: give the event back at once, another replica sends it
                await msg.nak()
                log.info("event.released")
                raise
            except Exception as error:  # NATS trouble while recording or checking: try again later
                outcome = decide(error, deliveries, self.max_deliver)
                log.warning("event.failed", error=outcome.reason)
            await self.settle(msg, outcome, deliveries)

    async def _deliver(self, msg: Msg, event_id: str, deliveries: int) -> Outcome | None:
        """None when the event is done (sent now or before); else what to do with it."""
        try:
            event = Event.from_message(msg.subject, msg.data)
        except MalformedEventError as error:
            return decide(error, deliveries, self.max_deliver)
        if await self._sent.contains(event_id):
            self._metrics.duplicates.inc()
            log.info("event.duplicate_suppressed")
            return None
        text = render_events([event])
        while not self._pause.active:
            chat_id = self._route.current
            await self._gate.wait(chat_id)
            started = time.monotonic()
            try:
                await self._sink.send(chat_id, text)
            except Exception as error:
                outcome = decide(error, deliveries, self.max_deliver)
            else:
                self._metrics.send_latency.observe(time.monotonic() - started)
                self._metrics.sent.inc()
                await self._sent.add(event_id)
                if self._debug:  # one line per event is costly at 1,000 events/s: only at LOG_LEVEL=debug
                    log.debug("event.sent", chat_id=chat_id, change=event.change.value)
                return None
            log.warning("telegram.send_failed", decision=outcome.decision.value, error=outcome.reason)
            if not await self._resend_now(outcome, chat_id):
                return outcome
        return Outcome(Decision.PAUSE, self._pause.reason or "paused")

    async def _resend_now(self, outcome: Outcome, chat_id: ChatId) -> bool:
        """Carry out what can be done while holding the event; True when it should be sent again now."""
        match outcome.decision:
            case Decision.WAIT:
                self._metrics.rate_limited.inc()
                self._gate.hold(chat_id, outcome.delay)
                if self._pacer is not None:  # every replica holds too (they watch the pace keys)
                    try:
                        await self._pacer.pause(chat_id, outcome.delay)
                    except Exception as error:
                        log.warning("pacing.pause_not_shared", error=str(error) or type(error).__name__)
                if outcome.delay > HOLD_RETRY_AFTER_UP_TO:
                    return False
                self._metrics.retried.inc()
                return True
            case Decision.MIGRATE:
                assert outcome.new_chat_id is not None
                await self._route.migrate(outcome.new_chat_id)
                return True
            case Decision.PAUSE:
                self._pause.trip(outcome.reason)
        return False

    async def settle(self, msg: Msg, outcome: Outcome | None, deliveries: int) -> None:
        """Ack (None), or carry out the decision: dead-letter with the reason, or nak with a delay."""
        if outcome is None:
            await msg.ack()
            return
        if outcome.decision is not Decision.DEAD_LETTER and deliveries >= self.max_deliver > 0:
            # a nak now would dead-letter it without a reason: record the reason instead
            outcome = Outcome(Decision.DEAD_LETTER, f"gave up after {deliveries} deliveries: {outcome.reason}")
        match outcome.decision:
            case Decision.DEAD_LETTER:
                await self.terminate(msg, outcome.reason)
                self._metrics.dead_lettered.inc()
                log.error("event.dead_lettered", reason=outcome.reason)
            case Decision.PAUSE:
                await msg.nak(delay=self._probe_interval)
            case _:
                self._metrics.retried.inc()
                await msg.nak(delay=outcome.delay)
                log.info("event.retry_later", delay=outcome.delay)

    async def terminate(self, msg: Msg, reason: str) -> None:
        """+TERM with a reason (nats-py's term() sends none); the MSG_TERMINATED advisory carries it."""
        one_line = " ".join(reason.split())[:500]
        await self._nc.publish(msg.reply, b"+TERM " + one_line.encode())
