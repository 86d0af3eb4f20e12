"""The notifier's one delivery path: fetch -> hold -> (pace) -> de-duplicate -> send -> settle.

Every event a replica takes from its source (the JetStream consumer, or core NATS) is *held*: kept
alive with in_progress() and queued for the chat. Senders take messages from the front of the
queue: unpaced, NOTIFIER_CONCURRENCY senders each take one event; paced, one sender reserves the
chat's next slot (shared by every replica through KV), waits for it, and takes as many queued events
as fit one message. Whether a chat is paced is a setting of this path, not a second path.

Before a send: the events are checked against `todos_sent` (a redelivery of an event some replica
already sent is acked, not sent again), and, with no await before the request leaves, that the chat
is not paused (a 429 seen by any replica), NATS is connected, and every event is still this
replica's (its lease: delivered on the current NATS connection and kept alive within the ack wait;
a replica frozen or cut off longer than that lets its events go, since JetStream may have handed
them to another replica). After Telegram's ok: the record in `todos_sent` is retried until NATS
takes it, then the events are acked; an accepted event is never nak'ed or dead-lettered.

A failed send is decided by notifier.policy and carried out by `Pipeline._enact`, the one place that
acks, naks, terminates, holds, pauses, splits or migrates.

Two niceties ride along without touching any of that: a message of one update or deletion replies to
its todo's announcement (notifier.replies: looked up before the mark, recorded after Telegram's ok,
neither able to hold, lose or repeat an event), and an event sent more than NOTIFIER_LATE_AFTER after
its change says so (notifier.formatting, decided when the message is rendered, just before it leaves).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import structlog
from nats.aio.msg import Msg
from telegram.error import BadRequest, RetryAfter

from notifier.chats import ChatGate, ChatRoute
from notifier.formatting import Event, MalformedEventError, render_fitting
from notifier.metrics import Metrics
from notifier.pacing import Pacer
from notifier.policy import (
    OUTAGE_AFTER,
    Decision,
    Outcome,
    answer_lost,
    decide,
    is_transient,
    released_on_last_delivery,
)
from notifier.replies import Replies
from notifier.sent_log import SENDING_GRACE, Record, SentLog
from notifier.settings import ChatId, Settings
from notifier.sinks import Sink
from streams import subjects

log = structlog.get_logger(__name__)
# NATS or the pacing state out of reach: look again after this long
NATS_RETRY = 0.5
MARK_TIMEOUT = 4 * NATS_RETRY  # the `sending` mark must be stored within this, or the send waits
# on SIGTERM, sends under way get this long to finish; what is still held is then released
FINISH_TIMEOUT = 10.0
FETCH_PATIENCE = 3.0  # stopping: how long a fetch under way may take to return what it got (1 s + margin)
# a paced chat holds at most this many messages' worth of events, fetched this many at a time
PACED_CAPACITY_MESSAGES = 10
PACED_FETCH_BATCH = 20
# a todos_sent record NATS keeps refusing while connected is given up after this long (the events are acked)
RECORD_GIVE_UP = 30.0
# the first probe of a halted chat comes after this long (at most the probe interval), then doubling
FIRST_PROBE = 1.0


class _Waiters:
    """Senders waiting for work: a new event wakes one of them, not all (64 unpaced senders by default)."""

    def __init__(self) -> None:
        self._futures: deque[asyncio.Future[None]] = deque()

    async def wait(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._futures.append(future)
        try:
            await asyncio.wait_for(future, seconds)
        except TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._futures.remove(future)

    def wake(self, count: int = 1) -> None:
        while count > 0 and self._futures:
            future = self._futures.popleft()
            if not future.done():
                future.set_result(None)
                count -= 1

    def wake_all(self) -> None:
        self.wake(len(self._futures))


@dataclass(eq=False)
class Held:
    """One delivery of an event, held by this replica until it is settled."""

    msg: Msg
    event_id: str
    event: Event | None  # None: the payload is malformed
    deliveries: int
    stored_at: float  # wall clock: when the stream stored it
    renewed: float  # monotonic: when its ack deadline was last pushed back (fetch, in_progress)
    epoch: int  # the NATS connection it was delivered on
    alone: bool = False  # split out of a message Telegram refused: goes in a message of its own
    accepted: bool = False  # Telegram said ok: only its record and ack are left
    # its record in todos_sent must be read before it is sent: a redelivery, a replayed dead letter, an event
    # whose first mark found a record, and any event after a send of it was tried. A first delivery is not
    # read: its first mark is written only where no record exists (notifier.sent_log)
    look: bool = True
    # the state of its record is known here (read, or marked by this replica): its next mark is a plain write
    known: bool = False


class Source(Protocol):
    """Where events come from and how they are settled (JetStream, or core NATS at most once)."""

    @property
    def connected(self) -> bool: ...

    @property
    def epoch(self) -> int: ...

    @property
    def ready(self) -> bool: ...

    @property
    def max_deliver(self) -> int: ...

    @property
    def ack_wait(self) -> float: ...

    async def fetch(self, batch: int) -> list[Msg]: ...

    async def stop_fetching(self) -> list[Msg]:
        """Take no more deliveries (the server forgets this replica's open pull requests); the messages
        already delivered to it and not yet fetched are returned."""
        ...

    @property
    def delivered_since(self) -> float:
        """Monotonic time before which no message of the last fetch was delivered (ack deadlines start there)."""
        ...

    async def ack(self, msg: Msg) -> None: ...

    async def nak(self, msg: Msg, delay: float) -> None: ...

    async def term(self, msg: Msg, reason: str) -> None: ...

    async def in_progress(self, msg: Msg) -> None: ...

    async def wait_connected(self, seconds: float) -> None: ...


def event_id_of(msg: Msg) -> str:
    """The event's identity: the original id on a replayed dead letter, else its Nats-Msg-Id."""
    headers = msg.headers or {}
    found = headers.get(subjects.EVENT_ID_HEADER) or headers.get(subjects.MSG_ID_HEADER)
    if found:
        return found
    try:
        meta = msg.metadata
    except Exception:
        return f"core.{id(msg)}"
    # with the time it was stored: a stream deleted and created again numbers its messages anew
    return f"{meta.stream}.{meta.sequence.stream}.{int(meta.timestamp.timestamp() * 1e9)}"


class Halt:
    """Why this replica sends nothing now: the bot may not post (PAUSE) or Telegram is unreachable (OUTAGE)."""

    def __init__(self, metrics: Metrics) -> None:
        self.reason: str | None = None
        self.kind: Decision | None = None
        self.tripped = asyncio.Event()
        self._metrics = metrics

    @property
    def active(self) -> bool:
        return self.reason is not None

    def trip(self, kind: Decision, reason: str) -> None:
        if self.reason is None:
            detail = (
                "the bot cannot post to its chat: fix the token, chat id, forum topic or the bot's membership "
                "and rights"
                if kind is Decision.PAUSE
                else "Telegram or the network is failing: probing with backoff"
            )
            log.error("telegram.halted", kind=kind.value, reason=reason, detail=detail + "; events wait, none is lost")
        self.reason, self.kind = reason, kind
        self._metrics.paused.set(1)
        self.tripped.set()

    def clear(self) -> None:
        if self.reason is not None:
            log.warning("telegram.resumed", was=self.reason)
        self.reason, self.kind = None, None
        self._metrics.paused.set(0)
        self.tripped.clear()


@dataclass(frozen=True)
class Shape:
    """How the path runs for this chat."""

    paced: bool
    senders: int  # messages in flight at once
    max_events: int  # events per message
    capacity: int  # events held at most
    fetch_batch: int
    probe_interval: float
    max_retry_delay: float
    late_after: float = 0.0  # an event sent this long after its change says when it happened (0: never)

    @classmethod
    def of(cls, settings: Settings, *, paced: bool) -> Shape:
        concurrency, max_events = settings.notifier_concurrency, settings.notifier_max_events_per_message
        if paced:  # one sender, grouping what piles up while the chat waits for its slots
            capacity = max(2 * concurrency, PACED_CAPACITY_MESSAGES * max_events)
            senders, fetch_batch = 1, PACED_FETCH_BATCH
        else:  # one event per message, `concurrency` messages at once
            capacity, senders, fetch_batch, max_events = 2 * concurrency, concurrency, 2 * concurrency, 1
        return cls(paced, senders, max_events, capacity, fetch_batch,
                   settings.notifier_probe_interval, settings.notifier_retry_max_delay,
                   settings.notifier_late_after)  # fmt: skip


class Pipeline:
    """One replica's path from its source to the chat."""

    def __init__(  # noqa: PLR0913 (the replica's parts, wired once in notifier.replica)
        self,
        *,
        source: Source,
        sink: Sink,
        route: ChatRoute,
        gate: ChatGate,
        pacer: Pacer,
        sent_log: SentLog | None,
        metrics: Metrics,
        shape: Shape,
        replies: Replies | None = None,
    ) -> None:
        self._source, self._sink, self._route, self._gate, self._pacer = source, sink, route, gate, pacer
        self._sent_log, self._metrics, self.shape, self._replies = sent_log, metrics, shape, replies
        self.halt = Halt(metrics)
        self._queue: deque[Held] = deque()
        self._held: dict[int, Held] = {}  # id(held) -> held: queued, being sent, or being recorded
        self._in_flight: set[str] = set()  # event ids in a message under way
        self._work = _Waiters()  # senders wait here: one is woken per new piece of work
        self._room = asyncio.Event()  # set when events were settled or the state changed (fetcher, finish)
        self._stopping = False
        self._transient_in_a_row = 0
        self._next_probe = 0.0  # after a halt's probe succeeded and until a send does: its backoff
        self._probed = asyncio.Event()  # the first probe, before the first fetch, has answered
        self._not_fetching = asyncio.Event()  # set while no fetch is under way (finish waits for it)
        self._not_fetching.set()
        metrics.in_flight.set_function(lambda: len(self._held))
        metrics.backlog_age.set_function(self._backlog_age)

    # --- what the replica runs -------------------------------------------------------------------

    def tasks(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The pipeline's loops, to run in the replica's TaskGroup; each runs until cancelled or stopped."""
        loops: dict[str, Coroutine[Any, Any, None]] = {
            "fetch": self._fetch_forever(),
            "keep_alive": self._keep_alive_forever(),
            "probe": self._probe_forever(),
        }
        for number in range(self.shape.senders):
            loops[f"sender-{number}"] = self._send_forever()
        return loops

    @property
    def ready(self) -> bool:
        return self._source.ready and not self.halt.active and not self._stopping

    @property
    def held(self) -> int:
        return len(self._held)

    async def finish(self, patience: float = FINISH_TIMEOUT) -> None:
        """Stop: fetch nothing more, release what waits in the queue, give messages under way `patience` s."""
        self._stopping = True
        self._changed_state()
        # first no more deliveries to this replica: a nak'ed event would otherwise come straight back
        # into its own open pull request, and wait there for the ack wait once the replica is gone
        await self._stop_fetching()
        with contextlib.suppress(TimeoutError):  # a fetch under way returns (and releases) what it got
            await asyncio.wait_for(self._not_fetching.wait(), FETCH_PATIENCE)
        await self._release(self._take_queue())
        deadline = time.monotonic() + patience
        if self._in_flight:
            log.info("pipeline.finishing", in_flight=len(self._in_flight), timeout=patience)
        while self._in_flight and (left := deadline - time.monotonic()) > 0:
            await self._wait_room(left)

    async def release_held(self) -> None:
        """After the loops ended (stopped or failed): give back everything still held."""
        with contextlib.suppress(Exception):  # failed: no more deliveries either (see finish)
            await self._stop_fetching()
        leftover = list(self._held.values())
        self._queue.clear()
        await self._release(leftover)
        if leftover:
            log.info("pipeline.released", events=len(leftover))

    async def _stop_fetching(self) -> None:
        """No more deliveries to this replica; what had already arrived is held (and released with the rest)."""
        for msg in await self._source.stop_fetching():
            await self._admit(msg, self._source.delivered_since)

    # --- fetching --------------------------------------------------------------------------------

    async def _fetch_forever(self) -> None:
        await self._probed.wait()  # a bot that may not post takes nothing (no delivery spent at each restart)
        while not self._stopping:
            room = self.shape.capacity - len(self._held)
            if self.halt.active or room < self.shape.capacity // 2 or not self._source.connected:
                # halted: the backlog waits in the stream, untouched (no delivery spent)
                await self._wait_room(1.0)
                continue
            self._not_fetching.clear()
            try:
                msgs = await self._source.fetch(min(room, self.shape.fetch_batch))
                since = self._source.delivered_since
                for msg in msgs:
                    await self._admit(msg, since)
                if self._stopping:  # SIGTERM during the fetch: give them back at once
                    await self._release(self._take_queue())
                    return
            finally:
                self._not_fetching.set()
            self._work.wake(len(msgs))

    async def _admit(self, msg: Msg, now: float) -> None:
        try:
            meta = msg.metadata
            deliveries, stored_at = meta.num_delivered or 1, meta.timestamp.timestamp()
        except Exception:
            deliveries, stored_at = 1, time.time()
        self._metrics.received.inc()
        event_id = event_id_of(msg)
        try:
            event: Event | None = Event.from_message(msg.subject, msg.data, stored_at)
        except MalformedEventError as error:
            held = Held(msg, event_id, None, deliveries, stored_at, now, self._source.epoch)
            self._held[id(held)] = held
            await self._enact([held], decide(error, deliveries, max_deliver=self._source.max_deliver))
            return
        held = Held(msg, event_id, event, deliveries, stored_at, now, self._source.epoch)
        held.look = deliveries > 1 or subjects.EVENT_ID_HEADER in (msg.headers or {})
        for stale in [queued for queued in self._queue if queued.event_id == event_id]:
            # a new delivery of an event still queued here (its lease lapsed): the new one replaces it
            self._queue.remove(stale)
            self._forget(stale)
        self._held[id(held)] = held
        self._queue.append(held)

    # --- sending ---------------------------------------------------------------------------------

    async def _send_forever(self) -> None:
        while True:
            message = await self._next_message()
            if message is None:
                return
            chat_id, batch = message
            await self._send(chat_id, batch)

    async def _next_message(self) -> tuple[ChatId, list[Held]] | None:
        """Wait until a message may leave; None when stopping."""
        while True:
            if self._stopping:
                return None
            if not self._queue or self.halt.active:
                await self._work.wait(1.0)
                continue
            chat_id = self._route.current
            if not await self._wait_for_turn(chat_id):
                continue
            if not self._source.connected:
                # neither could the send be recorded nor the events acked: wait for NATS
                await self._source.wait_connected(NATS_RETRY)
                continue
            self._let_go_lapsed()
            batch = self._take()
            if not batch:  # what is queued waits for an earlier delivery of it, under way
                await self._work.wait(1.0)
                continue
            kept = await self._drop_already_sent(batch)
            if kept is None:
                await asyncio.sleep(NATS_RETRY)
                continue
            batch = kept
            if not batch:
                continue
            if self._may_leave(chat_id, batch):
                return chat_id, batch

    async def _wait_for_turn(self, chat_id: ChatId) -> bool:
        """Paced: the chat's next slot (shared by every replica). Unpaced: the end of a 429's pause.
        False when something changed meanwhile and the caller should look again."""
        if not self.shape.paced:
            if self._gate.remaining(chat_id) > 0:  # a 429, here or at another replica
                await self._gate.wait(chat_id)
                return False
            return True
        if not await self._prune_already_sent():
            return False  # nothing left to send: no slot taken
        try:
            delay = await self._pacer.reserve(chat_id)
        except Exception as error:
            log.warning("pacing.failed", error=str(error) or type(error).__name__, retry_in=NATS_RETRY)
            await asyncio.sleep(NATS_RETRY)
            return False
        if delay > 0:
            await asyncio.sleep(delay)
        return True

    def _may_leave(self, chat_id: ChatId, batch: list[Held]) -> bool:
        """The last look, with no await until the request leaves; if not, the batch goes back."""
        if (
            self._stopping
            or self.halt.active
            or not self._source.connected
            or self._gate.remaining(chat_id) > 0
            or chat_id != self._route.current
            or any(self._lapsed(held) for held in batch)
        ):
            self._requeue(batch)
            self._let_go_lapsed()
            return False
        return True

    def _take(self) -> list[Held]:
        """Events from the front of the queue for one message (an event split out goes alone); events
        whose earlier delivery is in a message under way stay queued until it is settled."""
        batch: list[Held] = []
        for held in self._queue:
            if held.event_id in self._in_flight:
                continue
            if held.alone and batch:
                break
            batch.append(held)
            if held.alone or len(batch) >= self.shape.max_events:
                break
        if len(batch) > 1:
            events = [held.event for held in batch if held.event is not None]
            count, _ = render_fitting(events, len(batch), late_after=self.shape.late_after)
            batch = batch[:count]
        for held in batch:
            self._queue.remove(held)
            self._in_flight.add(held.event_id)
        return batch

    async def _prune_already_sent(self) -> bool:
        """A paced chat: ack the events at the front of the queue that some replica already sent, before
        a slot is taken for them (a recreated consumer replays days of sent events; they must not cost
        the chat's slots). False when the queue is then empty."""
        if self._sent_log is None:
            return bool(self._queue)
        front = [held for held in self._queue if held.event_id not in self._in_flight][: self.shape.max_events]
        try:
            records = await self._sent_log.lookup_all(held.event_id for held in front)
        except Exception:  # looked up again just before the send
            return bool(self._queue)
        for held, record in zip(front, records, strict=True):
            if record is Record.SENT and held in self._queue:
                self._queue.remove(held)
                self._metrics.duplicates.inc()
                log.info("event.duplicate_suppressed", event_id=held.event_id, deliveries=held.deliveries)
                await self._enact([held], None)
        return bool(self._queue)

    async def _drop_already_sent(self, batch: list[Held]) -> list[Held] | None:
        """Ack the events some replica already sent; mark those whose earlier answer was lost.

        None when `todos_sent` is out of reach (the batch is back in the queue).
        """
        if self._sent_log is None:
            return batch
        looked = [held for held in batch if held.look]
        try:
            records = await self._sent_log.lookup_all(held.event_id for held in looked)
            if under_way := [n for n, record in enumerate(records) if record is Record.SENDING]:
                # a send of them began and nobody here knows its answer: its sender may hold Telegram's
                # ok and be reconnecting to NATS right now, as this replica just did. Give it the time to
                # record it (leases are kept alive meanwhile), then look again
                await asyncio.sleep(SENDING_GRACE)
                again = await self._sent_log.lookup_all(looked[n].event_id for n in under_way)
                for n, record in zip(under_way, again, strict=True):
                    records[n] = record
        except Exception as error:
            log.warning("sent_log.unreachable", error=str(error) or type(error).__name__, retry_in=NATS_RETRY)
            self._requeue(batch)
            return None
        found = {id(held): record for held, record in zip(looked, records, strict=True)}
        kept = []
        for held in batch:
            record = found.get(id(held), Record.NOT_SENT)
            if record is Record.SENT:
                self._in_flight.discard(held.event_id)
                self._metrics.duplicates.inc()
                log.info("event.duplicate_suppressed", event_id=held.event_id, deliveries=held.deliveries)
                await self._enact([held], None)
                continue
            if record in {Record.MAYBE_SENT, Record.SENDING} and held.event is not None and not held.event.may_repeat:
                held.event = dataclasses.replace(held.event, may_repeat=True)
            if held.look:
                held.look, held.known = False, True
            kept.append(held)
        return kept

    async def _send(self, chat_id: ChatId, batch: list[Held]) -> None:
        events = [held.event for held in batch if held.event is not None]
        count, text = render_fitting(events, len(events), late_after=self.shape.late_after)
        if count < len(batch):  # a "may repeat" or "late" line made it too long: the rest go next
            self._requeue(batch[count:])
            batch, events = batch[:count], events[:count]
        ids = [held.event_id for held in batch]
        try:
            # before the mark, whose last look must be the last await before the request leaves
            reply_to = await self._replies.target(chat_id, events) if self._replies is not None else None
            if not await self._mark(chat_id, batch):
                return
            for held in batch:  # whatever this try leaves in todos_sent, a later one reads it first
                held.look = True
            started = time.monotonic()
            try:
                message_id = await self._sink.send(chat_id, text, reply_to=reply_to)
            except asyncio.CancelledError:
                raise  # stopping past FINISH_TIMEOUT or failing: release_held() gives them back
            except Exception as error:
                await self._failed(chat_id, batch, error)
                return
            self._transient_in_a_row = 0
            self._next_probe = 0.0
            self._metrics.send_latency.observe(time.monotonic() - started)
            self._metrics.events_per_message.observe(len(batch))
            for held in batch:
                held.accepted = True
            if self._replies is not None:  # not awaited: the ack never waits for it
                self._replies.announced(chat_id, events, message_id)
            await self._accepted(batch)
        finally:
            self._in_flight.difference_update(ids)
            self._room.set()
            if self._queue:  # a later delivery of one of them may wait for this message
                self._work.wake()

    async def _mark(self, chat_id: ChatId, batch: list[Held]) -> bool:
        """Mark the batch `sending` in todos_sent, last look included; False if it must not leave now (it went
        back to the queue, or was let go)."""
        if self._sent_log is None:
            return True
        # no send without its mark: a later delivery finding no record sends without a word
        ids = [held.event_id for held in batch]
        first = [held.event_id for held in batch if not held.known]
        recorded = await self._sent_log.sending(ids, MARK_TIMEOUT, first=first)
        if recorded is None:
            log.warning("sent_log.mark_failed", events=len(ids), retry_in=NATS_RETRY)
            await self._source.wait_connected(NATS_RETRY)
            self._requeue(batch)
            self._let_go_lapsed()
            return False
        for held in batch:  # marked here, or found with a record: read it before the next try
            held.look, held.known = held.event_id in recorded, held.event_id not in recorded
        if recorded:
            self._requeue(batch)
            return False
        # the last look (a batch put back now is marked: a later copy says "may repeat")
        return self._may_leave(chat_id, batch)

    async def _accepted(self, batch: list[Held]) -> None:
        """Telegram took them: record them in `todos_sent` (retrying until NATS takes it), then ack."""
        ids = [held.event_id for held in batch]
        if self._sent_log is not None:
            failing_while_connected = 0.0
            while True:
                try:
                    await self._sent_log.sent(ids)
                    break
                except Exception as error:
                    if failing_while_connected == 0.0:
                        log.warning("sent_log.record_failed", error=str(error) or type(error).__name__, events=len(ids))
                    if self._source.connected:
                        failing_while_connected += NATS_RETRY
                    if failing_while_connected > RECORD_GIVE_UP:
                        # NATS answers but keeps refusing the write (bucket gone, storage full): the chat has
                        # the events, so ack them; a redelivery would find no record and say "may repeat"
                        reason = str(error) or type(error).__name__
                        log.error("sent_log.record_abandoned", error=reason, events=len(ids))  # noqa: TRY400
                        break
                    await self._source.wait_connected(NATS_RETRY)
        self._metrics.sent.inc(len(batch))
        await self._enact(batch, None)

    async def _failed(self, chat_id: ChatId, batch: list[Held], error: Exception) -> None:
        if isinstance(error, RetryAfter):  # before any await: no other sender of this replica may go now
            self._gate.hold(chat_id, _seconds(error.retry_after))
        if is_transient(error):
            self._transient_in_a_row += 1
        else:
            self._transient_in_a_row = 0  # Telegram answered: whatever it is, it is not an outage
        outcome = decide(
            error,
            max(held.deliveries for held in batch),
            max_deliver=self._source.max_deliver,
            events=len(batch),
            transient_in_a_row=self._transient_in_a_row,
            max_retry_delay=self.shape.max_retry_delay,
        )
        log.warning(
            "telegram.send_failed",
            decision=outcome.decision.value,
            error=outcome.reason,
            events=len(batch),
            event_ids=[held.event_id for held in batch],
        )
        self._note_refusal(batch, error)
        outcome = await self._confirm_dead_letter(chat_id, error, outcome)
        if outcome.decision in {Decision.RETRY, Decision.DEAD_LETTER}:
            for held in batch:  # each by its own delivery count
                await self._enact([held], self._decide_alone(error, held))
            return
        await self._enact(batch, outcome, chat_id)

    def _note_refusal(self, batch: list[Held], error: Exception) -> None:
        """What a failed send tells of the events: Telegram may have them (answer lost), or it refused them."""
        if answer_lost(error):  # if sent again from here, it says so (whatever the KV holds)
            for held in batch:
                if held.event is not None and not held.event.may_repeat:
                    held.event = dataclasses.replace(held.event, may_repeat=True)
            if self._sent_log is not None:  # ... and from another replica too, without waiting for a record
                self._sent_log.lost(held.event_id for held in batch if not self._lapsed(held))
        elif self._sent_log is not None:
            # only the "may repeat" line depends on it: an earlier attempt whose answer was lost stays
            # marked, and a delivery that is no longer ours writes nothing over its new owner's mark
            self._sent_log.refused(
                held.event_id
                for held in batch
                if (held.event is None or not held.event.may_repeat) and not self._lapsed(held)
            )

    async def _confirm_dead_letter(self, chat_id: ChatId, error: Exception, outcome: Outcome) -> Outcome:
        """Telegram's wording is no stable API: before a BadRequest kills an event, ask whether the bot may
        post at all. A bot-level refusal the table does not know then holds the backlog instead."""
        if outcome.decision is not Decision.DEAD_LETTER or not isinstance(error, BadRequest):
            return outcome
        try:
            await self._sink.probe(chat_id)
        except Exception as probed:
            if decide(probed, 0, max_deliver=0).decision is Decision.PAUSE:
                return Outcome(Decision.PAUSE, f"{outcome.reason}; probe: {type(probed).__name__}: {probed}")
        return outcome

    def _decide_alone(self, error: Exception, held: Held) -> Outcome:
        return decide(
            error,
            held.deliveries,
            max_deliver=self._source.max_deliver,
            transient_in_a_row=min(self._transient_in_a_row, 1),
            max_retry_delay=self.shape.max_retry_delay,
        )

    # --- the one place that carries out decisions ------------------------------------------------

    async def _enact(  # noqa: C901, PLR0912 (one branch per decision)
        self, batch: list[Held], outcome: Outcome | None, chat_id: ChatId | None = None
    ) -> None:
        """Settle or hold `batch` as decided. None: done (sent now, or sent before): ack."""
        if outcome is None:
            for held in batch:
                await self._source.ack(held.msg)
                self._forget(held)
            return
        chat = chat_id if chat_id is not None else self._route.current
        if outcome.decision in {Decision.RETRY, Decision.DEAD_LETTER, Decision.RELEASE}:
            # a delivery whose lease lapsed (the replica was frozen during the send) may be another
            # replica's now, and a nak or term written while NATS is away leaves late: it could settle
            # the event under another replica. Let it go instead (JetStream delivers it again).
            away = not self._source.connected
            for held in [held for held in batch if self._lapsed(held) or (away and not self._last_delivery(held))]:
                batch.remove(held)
                self._let_go(held)
        match outcome.decision:
            case Decision.WAIT:
                self._metrics.rate_limited.inc()
                self._metrics.retried.inc(len(batch))
                self._gate.hold(chat, outcome.delay)
                try:  # every replica holds too (they watch the pace keys)
                    await self._pacer.pause(chat, outcome.delay)
                except Exception as error:
                    log.warning("pacing.pause_not_shared", error=str(error) or type(error).__name__)
                self._requeue(batch)
            case Decision.MIGRATE:
                assert outcome.new_chat_id is not None
                try:
                    await self._route.migrate(outcome.new_chat_id)
                except Exception as error:
                    log.warning("telegram.migration_not_shared", error=str(error) or type(error).__name__)
                self._requeue(batch)
            case Decision.PAUSE | Decision.OUTAGE:
                self.halt.trip(outcome.decision, outcome.reason)
                self._requeue(batch)
            case Decision.SPLIT:
                for held in batch:
                    held.alone = True
                self._requeue(batch)
            case Decision.RETRY:
                self._metrics.retried.inc(len(batch))
                for held in batch:
                    await self._source.nak(held.msg, outcome.delay)
                    self._forget(held)
                log.info("event.retry_later", delay=outcome.delay, events=len(batch))
            case Decision.DEAD_LETTER:
                for held in batch:
                    await self._source.term(held.msg, outcome.reason)
                    self._forget(held)
                    self._metrics.dead_lettered.inc()
                    log.error("event.dead_lettered", event_id=held.event_id, reason=outcome.reason)
            case Decision.RELEASE:
                for held in batch:
                    await self._source.nak(held.msg, 0)
                    self._forget(held)

    async def _release(self, items: list[Held]) -> None:
        """Give events back to the stream at once (stopping); an accepted one is acked."""
        for held in items:
            if held.accepted:  # Telegram has it: done, whether or not its record made it
                await self._enact([held], None)
            elif self._last_delivery(held):
                reason = f"released on its last delivery ({held.deliveries}) while the replica stopped"
                await self._enact([held], Outcome(Decision.DEAD_LETTER, reason))
            else:
                await self._enact([held], Outcome(Decision.RELEASE, "stopping"))

    # --- holding ---------------------------------------------------------------------------------

    @property
    def _lease(self) -> float:
        """How long after its last keep-alive a delivery is surely still ours (a margin under the ack wait)."""
        return 0.8 * self._source.ack_wait

    def _lapsed(self, held: Held) -> bool:
        if held.accepted or self._last_delivery(held):
            # on its last delivery JetStream gives it to nobody else: letting it go would kill it unsaid
            return False
        return held.epoch != self._source.epoch or time.monotonic() - held.renewed > self._lease

    def _last_delivery(self, held: Held) -> bool:
        return released_on_last_delivery(held.deliveries, self._source.max_deliver)

    def _let_go_lapsed(self) -> None:
        """Queued events whose lease lapsed (NATS reconnected, the replica was frozen): JetStream may
        have handed them to another replica. Let them go without a word: if nobody else has them,
        JetStream delivers them again after the ack wait, late rather than twice."""
        for held in [held for held in self._queue if self._lapsed(held)]:
            self._queue.remove(held)
            self._let_go(held)

    def _let_go(self, held: Held) -> None:
        self._forget(held)
        log.info("event.let_go", event_id=held.event_id, reason="lease lapsed (NATS reconnect or a freeze)")

    async def _keep_alive_forever(self) -> None:
        """in_progress() for every held event, so a slow or paced send is not redelivered elsewhere."""
        while True:
            # renewed every fifth of the ack wait: a replica stalled (CPU-starved, paused by a debugger) for up
            # to 0.6 x the ack wait keeps its leases; longer, and it lets the events go rather than race another
            every = 0.2 * self._source.ack_wait
            await asyncio.sleep(min(every / 4, 0.5))
            if not self._source.connected:
                continue  # a keep-alive now would be queued and sent late: let the lease tell
            now = time.monotonic()
            for held in list(self._held.values()):
                if now - held.renewed < every:
                    continue
                if self._lapsed(held):
                    continue  # never renew a lease that lapsed: another replica may have the event
                held.renewed = now
                await self._source.in_progress(held.msg)
            if self._queue:
                self._let_go_lapsed()

    async def _probe_forever(self) -> None:
        """Probe once before the first fetch; then, while halted, with backoff (up to NOTIFIER_PROBE_INTERVAL);
        resume when the bot may post."""
        try:
            await self._sink.probe(self._route.current)
        except Exception as error:
            outcome = decide(error, 0, max_deliver=0)
            if outcome.decision is Decision.PAUSE:
                self.halt.trip(Decision.PAUSE, outcome.reason)
            elif outcome.decision is Decision.MIGRATE and outcome.new_chat_id is not None:
                with contextlib.suppress(Exception):
                    await self._route.migrate(outcome.new_chat_id)
            # anything else (Telegram down at start): the sends find out
        finally:
            self._probed.set()
        first = min(FIRST_PROBE, self.shape.probe_interval)
        while True:
            await self.halt.tripped.wait()
            # a halt that comes back before any send succeeded goes on with the backoff it had
            delay = self._next_probe or first
            while self.halt.active:
                await asyncio.sleep(delay)
                delay = min(self.shape.probe_interval, max(first, delay * 2))
                try:
                    await self._sink.probe(self._route.current)
                except Exception as error:
                    outcome = decide(error, 0, max_deliver=0)
                    if outcome.decision is Decision.MIGRATE and outcome.new_chat_id is not None:
                        with contextlib.suppress(Exception):
                            await self._route.migrate(outcome.new_chat_id)
                        continue  # probe the new chat after `first` (never 0: no hammering)
                    if outcome.decision is Decision.WAIT:
                        delay = max(delay, outcome.delay)
                    log.warning("telegram.still_halted", error=outcome.reason, next_probe_in=delay)
                    continue
                # the probe got through, the sends may not (sendMessage failing alone, a closed topic):
                # until a send succeeds, a failure of the same kind halts again at once, with this backoff
                self._next_probe = delay
                self._transient_in_a_row = OUTAGE_AFTER - 1 if self.halt.kind is Decision.OUTAGE else 0
                self.halt.clear()
                self._changed_state()

    # --- bookkeeping -----------------------------------------------------------------------------

    def _requeue(self, batch: list[Held]) -> None:
        for held in batch:
            self._in_flight.discard(held.event_id)
        self._queue.extendleft(reversed(batch))
        self._work.wake(len(batch))

    def _take_queue(self) -> list[Held]:
        items = list(self._queue)
        self._queue.clear()
        return items

    def _forget(self, held: Held) -> None:
        self._held.pop(id(held), None)
        self._room.set()

    def _changed_state(self) -> None:
        """Stopping, or resumed after a halt: everyone looks again."""
        self._work.wake_all()
        self._room.set()

    async def _wait_room(self, seconds: float) -> None:
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), seconds)

    def _backlog_age(self) -> float:
        stored = [held.stored_at for held in self._held.values()]
        return max(0.0, time.time() - min(stored)) if stored else 0.0


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)
