"""The JetStream side of a replica: fetch from the shared durable consumer, keep events alive, stop cleanly.

Traps of nats-py 2.x designed around (see docs/STACK-NOTES): an idle fetch raises TimeoutError (or a
bare asyncio one) or returns [], and can stall, so every fetch runs under a watchdog; a deleted
consumer shows up as an APIError (ServiceUnavailable / not found) and is recreated; the pull
subscription is unsubscribed before the connection is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError

from notifier.batching import Batcher
from notifier.chats import ChatRoute
from notifier.metrics import Metrics
from notifier.policy import Decision, decide
from notifier.processing import BotPause, Processor
from notifier.telegram import Sink
from streams import subjects, topology

log = structlog.get_logger(__name__)
FETCH_TIMEOUT = 1.0
# a fetch still pending this long after its own timeout is stalled (nats.py #986): abandon it
WATCHDOG_MARGIN = 2.0
# the consumer's ack wait is 5 s: an event held longer than this gets an in_progress()
PROGRESS_EVERY = 2.0
REBIND_DELAY = 1.0
# on SIGTERM, in-flight sends get this long to finish; the rest are nak'ed for other replicas
FINISH_TIMEOUT = 10.0
# a paced chat: events held at most (enough to fill messages while the chat waits for its slots),
# fetched this many at a time so that the replicas share them
PACED_CAPACITY_MESSAGES = 10
PACED_FETCH_BATCH = 20


class JetStreamConsumer:
    """Fetches batches; hands each event to the Processor, `concurrency` at a time, or to the paced
    chat's Batcher, which holds them until its next slot."""

    def __init__(  # noqa: PLR0913 (the replica's parts, wired once in __main__)
        self,
        *,
        nc: Client,
        js: JetStreamContext,
        processor: Processor,
        sink: Sink,
        route: ChatRoute,
        pause: BotPause,
        metrics: Metrics,
        concurrency: int,
        probe_interval: float,
        batcher: Batcher | None = None,
        max_events_per_message: int = 1,
        stream_replicas: int = 1,
    ) -> None:
        self._nc, self._js, self._processor, self._sink = nc, js, processor, sink
        # a lost consumer is recreated with the topology's own settings (never scaling the stream down)
        self._stream_replicas = stream_replicas
        self._route, self._pause, self._metrics = route, pause, metrics
        self._probe_interval = probe_interval
        self._slots = asyncio.Semaphore(concurrency)
        self._batcher = batcher
        self._capacity = 2 * concurrency
        self._fetch_batch = self._capacity
        if batcher is not None:
            self._capacity = max(self._capacity, PACED_CAPACITY_MESSAGES * max_events_per_message)
            self._fetch_batch = PACED_FETCH_BATCH
        self._psub: JetStreamContext.PullSubscription | None = None
        self._held: dict[int, tuple[Msg, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        metrics.backlog_age.set_function(self._backlog_age)

    @property
    def bound(self) -> bool:
        return self._psub is not None

    @property
    def ready(self) -> bool:
        return self._nc.is_connected and self.bound and not self._pause.active

    def _backlog_age(self) -> float:
        stored = [msg.metadata.timestamp.timestamp() for msg, _ in self._held.values()]
        return max(0.0, time.time() - min(stored)) if stored else 0.0

    async def run(self, stop: asyncio.Event) -> None:
        progress = asyncio.create_task(self._signal_progress())
        sender = asyncio.create_task(self._batcher.run()) if self._batcher is not None else None
        try:
            while not stop.is_set():
                if self._pause.active:
                    await self._probe(stop)
                elif self._psub is None:
                    await self._bind(stop)
                else:
                    await self._fetch_and_dispatch(stop)
            await self._finish()
        finally:
            for task in (progress, sender):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await self._unbind()

    async def _bind(self, stop: asyncio.Event) -> None:
        try:
            await topology.bootstrap(self._js, self._stream_replicas)
            self._psub = await self._js.pull_subscribe_bind(durable=subjects.CONSUMER, stream=subjects.STREAM)
            info = await self._js.consumer_info(subjects.STREAM, subjects.CONSUMER)
            self._processor.max_deliver = info.config.max_deliver or 0
        except Exception as error:
            log.warning("consumer.bind_failed", error=str(error) or type(error).__name__)
            await _wait(stop, REBIND_DELAY)
            return
        log.info("consumer.bound", stream=subjects.STREAM, consumer=subjects.CONSUMER)

    async def _unbind(self) -> None:
        psub, self._psub = self._psub, None
        if psub is not None:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def _fetch_and_dispatch(self, stop: asyncio.Event) -> None:
        room = self._capacity - len(self._tasks)
        if room < self._capacity // 2:
            self._room.clear()
            await _wait(stop, FETCH_TIMEOUT, self._room)
            return
        assert self._psub is not None
        try:
            msgs = await asyncio.wait_for(
                self._psub.fetch(min(room, self._fetch_batch), timeout=FETCH_TIMEOUT), FETCH_TIMEOUT + WATCHDOG_MARGIN
            )
        except TimeoutError:  # idle (nats TimeoutError, a bare asyncio one, or the watchdog)
            return
        except APIError as error:  # consumer or stream deleted, JetStream unavailable
            log.warning("consumer.lost", error=str(error) or type(error).__name__, action="recreating")
            await self._unbind()
            return
        except Exception as error:
            log.warning("consumer.fetch_failed", error=str(error) or type(error).__name__)
            await _wait(stop, REBIND_DELAY)
            return
        now = time.monotonic()
        for msg in msgs:
            self._held[id(msg)] = (msg, now)
            task = asyncio.create_task(self._process(msg))
            self._tasks.add(task)
            task.add_done_callback(self._done)
        self._metrics.in_flight.set(len(self._tasks))

    async def _process(self, msg: Msg) -> None:
        try:
            if self._batcher is not None:
                await self._batcher.handle(msg)
            else:
                async with self._slots:
                    await self._processor.handle(msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event.unhandled")
        finally:
            self._held.pop(id(msg), None)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._metrics.in_flight.set(len(self._tasks))
        if len(self._tasks) <= self._capacity // 2:
            self._room.set()

    async def _signal_progress(self) -> None:
        """in_progress() for every event held a while, so slow sends are not redelivered elsewhere."""
        while True:
            await asyncio.sleep(PROGRESS_EVERY / 4)
            now = time.monotonic()
            for key, (msg, since) in list(self._held.items()):
                if now - since >= PROGRESS_EVERY:
                    self._held[key] = (msg, now)
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    async def _probe(self, stop: asyncio.Event) -> None:
        """While paused: every probe interval, ask Telegram whether the bot can reach the chat again."""
        await _wait(stop, self._probe_interval)
        if stop.is_set():
            return
        try:
            await self._sink.probe(self._route.current)
        except Exception as error:
            outcome = decide(error, 0)
            if outcome.decision is Decision.MIGRATE and outcome.new_chat_id is not None:
                await self._route.migrate(outcome.new_chat_id)
            log.warning("telegram.still_paused", error=outcome.reason, next_probe_in=self._probe_interval)
            return
        self._pause.clear()

    async def _finish(self) -> None:
        """Stop: let in-flight sends finish for a bounded time, release the rest."""
        if self._batcher is not None:  # events queued for a paced chat could wait long: release them now
            await self._batcher.release_queued()
        if not self._tasks:
            return
        log.info("consumer.finishing", in_flight=len(self._tasks), timeout=FINISH_TIMEOUT)
        _, pending = await asyncio.wait(set(self._tasks), timeout=FINISH_TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        log.info("consumer.finished", released=len(pending))


async def _wait(stop: asyncio.Event, seconds: float, other: asyncio.Event | None = None) -> None:
    """Sleep up to `seconds`, waking early on stop (or on `other`)."""
    waiters = [asyncio.create_task(stop.wait())]
    if other is not None:
        waiters.append(asyncio.create_task(other.wait()))
    _, pending = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    del pending
