"""A paced chat: events queue in the replica and leave in as few messages as the chat's limits need.

A replica serves one chat (TELEGRAM_CHAT_ID, following migrations), so it has one queue and one
sender. The sender waits for an event, reserves the chat's next slot from the Pacer (shared by every
replica), waits for it, then takes as many queued events as fit one message (4096 characters after
entity parsing, NOTIFIER_MAX_EVENTS_PER_MESSAGE events) and sends them. Under light load the slot is
free and the queue holds one event: one message, at once. Events are checked against `todos_sent` as
they arrive and again just before they leave (they may wait long enough for a NATS outage to hand
them to another replica), recorded there and acked only after Telegram's ok; no send starts while
NATS is away, since its outcome could not be recorded. A failed message is handled as
notifier.policy decides, for all its events: WAIT keeps them queued behind a pause every replica
respects, MIGRATE resends, SPLIT requeues them one per message (a poison event then dies alone);
RETRY, PAUSE and DEAD_LETTER settle each event as the Processor does.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import structlog
from nats.aio.msg import Msg

from notifier.chats import ChatRoute
from notifier.formatting import Event, render_fitting
from notifier.metrics import Metrics
from notifier.pacing import Pacer
from notifier.policy import Decision, Outcome, decide
from notifier.processing import BotPause, Processor, SentLog, event_id_of
from notifier.settings import ChatId
from notifier.telegram import Sink

log = structlog.get_logger(__name__)
PACING_RETRY = 1.0


@dataclass(eq=False)
class Pending:
    """An event waiting in the queue; `done` resolves once it is settled."""

    msg: Msg
    event_id: str
    event: Event
    deliveries: int
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    alone: bool = False  # split out of a message Telegram refused: goes in a message of its own
    epoch: int = 0  # the NATS connection it was delivered on


class Batcher:
    """The queue and the sender of one replica's paced chat."""

    def __init__(  # noqa: PLR0913 (the replica's parts, wired once in __main__)
        self,
        *,
        processor: Processor,
        sink: Sink,
        route: ChatRoute,
        pacer: Pacer,
        sent: SentLog,
        metrics: Metrics,
        pause: BotPause,
        max_events: int,
    ) -> None:
        self._processor, self._sink, self._route, self._pacer = processor, sink, route, pacer
        self._sent, self._metrics, self._pause, self._max_events = sent, metrics, pause, max_events
        self._queue: deque[Pending] = deque()
        self._arrived = asyncio.Event()
        self._closing = False

    async def handle(self, msg: Msg) -> None:
        """Queue one event for the chat; return once it is settled (sent, given back or dead-lettered)."""
        meta = msg.metadata
        deliveries = meta.num_delivered or 1
        event_id = event_id_of(msg)
        with structlog.contextvars.bound_contextvars(
            event_id=event_id, stream_seq=meta.sequence.stream, deliveries=deliveries
        ):
            self._metrics.received.inc()
            try:
                event = Event.from_message(msg.subject, msg.data)
                if await self._sent.contains(event_id):
                    self._metrics.duplicates.inc()
                    log.info("event.duplicate_suppressed")
                    await msg.ack()
                    return
            except Exception as error:  # poison payload, or NATS trouble while checking
                await self._processor.settle(msg, decide(error, deliveries, self._processor.max_deliver), deliveries)
                return
            if self._pause.active or self._closing:
                await self._processor.settle(msg, Outcome(Decision.PAUSE, self._pause.reason or "stopping"), deliveries)
                return
            item = Pending(msg, event_id, event, deliveries, epoch=self._processor.epoch)
            for stale in [queued for queued in self._queue if queued.event_id == event_id]:
                # a redelivery of an event still queued here (its keep-alives were lost while NATS was
                # away): the new delivery replaces the old one, so the event is not sent twice
                self._queue.remove(stale)
                _finish(stale)
            self._queue.append(item)
            self._arrived.set()
            try:
                await asyncio.shield(item.done)
            except asyncio.CancelledError:
                if item in self._queue:  # not in a message under way: give it back to JetStream at once
                    self._queue.remove(item)
                    await msg.nak()
                raise

    async def run(self) -> None:
        """The sender, until cancelled (a message under way is then given back)."""
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            if self._pause.active:
                await self._settle_all(list(self._queue), Outcome(Decision.PAUSE, self._pause.reason or ""))
                self._queue.clear()
                continue
            chat_id = self._route.current
            try:
                await asyncio.sleep(await self._pacer.reserve(chat_id))
                if await self._pacer.pause_left(chat_id) > 0:
                    continue  # a 429 elsewhere since the reservation: reserve again, after the pause
            except Exception as error:  # the pacing state is out of reach (NATS trouble)
                log.warning("pacing.failed", error=str(error) or type(error).__name__, retry_in=PACING_RETRY)
                await asyncio.sleep(PACING_RETRY)
                continue
            if not self._processor.connected:
                # neither the send could be recorded nor the events acked: wait for NATS, then take a new slot
                await asyncio.sleep(PACING_RETRY)
                continue
            if not await self._drop_already_sent():
                continue
            if self._queue and chat_id == self._route.current:
                await self._send(chat_id, *self._take())

    async def _drop_already_sent(self) -> bool:
        """Check the events about to leave against `todos_sent` once more, just before the send.

        An event can wait here for many seconds; if NATS went away meanwhile, its in_progress()
        keep-alives were lost and JetStream may have handed it to another replica, which has sent it
        since. Acks and drops those. False when the check itself failed (NATS trouble): try later.
        """
        epoch = self._processor.epoch
        for stale in [item for item in self._queue if item.epoch != epoch]:
            # delivered before NATS went away: its keep-alives may have been lost and JetStream may
            # have handed it to another replica already. Let it go (no ack): JetStream redelivers it
            # after the ack wait if nobody else has it, so it is late rather than sent twice.
            self._queue.remove(stale)
            log.info("event.released_after_reconnect", event_id=stale.event_id)
            _finish(stale)
        front = list(itertools.islice(self._queue, self._max_events))
        try:
            seen = await asyncio.gather(*(self._sent.contains(item.event_id) for item in front))
        except Exception as error:
            log.warning("sent_log.unreachable", error=str(error) or type(error).__name__, retry_in=PACING_RETRY)
            await asyncio.sleep(PACING_RETRY)
            return False
        for item, already in zip(front, seen, strict=True):
            if already and item in self._queue:
                self._queue.remove(item)
                self._metrics.duplicates.inc()
                log.info("event.duplicate_suppressed", event_id=item.event_id, where="before send")
                try:
                    await item.msg.ack()
                finally:
                    _finish(item)
        return True

    async def release_queued(self) -> None:
        """Stopping: give every queued event back to JetStream at once; a message under way finishes."""
        self._closing = True
        queued, self._queue = list(self._queue), deque()
        await asyncio.gather(*(item.msg.nak() for item in queued), return_exceptions=True)
        for item in queued:
            _finish(item)

    def _take(self) -> tuple[list[Pending], str]:
        """Queued events from the front, as many as fit one message; an event split out goes alone."""
        limit = 1 if self._queue[0].alone else self._max_events
        candidates = list(itertools.takewhile(lambda item: not item.alone, itertools.islice(self._queue, limit)))
        count, text = render_fitting([item.event for item in candidates or [self._queue[0]]], limit)
        return [self._queue.popleft() for _ in range(count)], text

    async def _send(self, chat_id: ChatId, batch: list[Pending], text: str) -> None:
        started = time.monotonic()
        try:
            await self._sink.send(chat_id, text)
        except asyncio.CancelledError:
            await asyncio.gather(*(item.msg.nak() for item in batch), return_exceptions=True)
            raise
        except Exception as error:
            await self._failed(chat_id, batch, error)
            return
        self._metrics.send_latency.observe(time.monotonic() - started)
        self._metrics.sent.inc(len(batch))
        self._metrics.events_per_message.observe(len(batch))
        try:
            await asyncio.gather(*(self._sent.add(item.event_id) for item in batch))
            await asyncio.gather(*(item.msg.ack() for item in batch))
        except Exception as error:  # NATS trouble: as the Processor, let JetStream redeliver them
            for item in batch:
                await self._settle(item, decide(error, item.deliveries, self._processor.max_deliver))
            return
        for item in batch:
            _finish(item)

    async def _failed(self, chat_id: ChatId, batch: list[Pending], error: Exception) -> None:
        deliveries = max(item.deliveries for item in batch)
        outcome = decide(error, deliveries, self._processor.max_deliver, events=len(batch))
        log.warning(
            "telegram.send_failed",
            decision=outcome.decision.value,
            error=outcome.reason,
            events=len(batch),
            event_ids=[item.event_id for item in batch],
        )
        match outcome.decision:
            case Decision.WAIT:
                self._metrics.rate_limited.inc()
                self._metrics.retried.inc(len(batch))
                self._queue.extendleft(reversed(batch))
                try:
                    await self._pacer.pause(chat_id, outcome.delay)
                except Exception as kv_error:  # held here anyway (ChatGate); others find out by their 429
                    log.warning("pacing.pause_not_shared", error=str(kv_error) or type(kv_error).__name__)
            case Decision.MIGRATE:
                assert outcome.new_chat_id is not None
                await self._route.migrate(outcome.new_chat_id)
                self._queue.extendleft(reversed(batch))
            case Decision.SPLIT:
                for item in batch:
                    item.alone = True
                self._queue.extendleft(reversed(batch))
            case Decision.PAUSE:
                self._pause.trip(outcome.reason)
                await self._settle_all(batch, outcome)
            case _:  # RETRY, DEAD_LETTER: each event by its own delivery count
                for item in batch:
                    await self._settle(item, decide(error, item.deliveries, self._processor.max_deliver))

    async def _settle_all(self, items: list[Pending], outcome: Outcome) -> None:
        for item in items:
            await self._settle(item, outcome)

    async def _settle(self, item: Pending, outcome: Outcome) -> None:
        try:
            await self._processor.settle(item.msg, outcome, item.deliveries)
        finally:
            _finish(item)


def _finish(item: Pending) -> None:
    if not item.done.done():
        item.done.set_result(None)
