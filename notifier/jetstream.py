"""The pipeline's source in JetStream mode: the shared durable pull consumer `todos_broadcasters`.

Who owns the topology: `python -m streams bootstrap` (the k8s Job, `just bootstrap-streams`, `just
up`) creates and updates the stream, the consumer, the dead-letter stream and the KV buckets. A
notifier only checks: it waits (not ready) until they exist, and reads the consumer's ack wait and
max deliveries from the server when it binds (at start, after losing the consumer), so an operator's
change to the consumer is respected, never undone (restart the replicas to apply it). The one thing
it creates is a consumer that is missing (deleted by hand, lost with its stream's storage), with the
topology's settings: delivery would stop otherwise, and `todos_sent` remembers every event as long as
the stream keeps it, so a new consumer re-sends nothing.

Traps of nats-py 2.x designed around (see STACK-NOTES): an idle fetch raises TimeoutError (or a bare
asyncio one) or returns [], and can stall, so every fetch runs under a watchdog; a deleted consumer
shows up as an APIError; the pull subscription is unsubscribed before the connection is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StatusCode
from nats.js.errors import APIError, NotFoundError

from streams import subjects, topology
from streams.logs import redact

log = structlog.get_logger(__name__)
FETCH_TIMEOUT = 1.0
# a fetch still pending this long after its own timeout is stalled (nats.py #986): abandon it
WATCHDOG_MARGIN = 2.0
REBIND_DELAY = 1.0
FLUSH_TIMEOUT = 2  # seconds (nats-py wants an int)


class JetStreamSource:
    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self._nc, self._js = nc, js
        self._psub: JetStreamContext.PullSubscription | None = None
        # read from the consumer when binding (an operator may have changed them)
        self.max_deliver = topology.MAX_DELIVER
        self.ack_wait = topology.ACK_WAIT
        self._reconnected = asyncio.Event()
        # monotonic time before which none of the messages the last fetch returned was delivered, so
        # ack deadlines are counted from there, never later. A fetch hands out, first, what waits in
        # nats-py's queue: deliveries to the previous fetch's pull request (it may linger on the server
        # after that fetch timed out), so then the bound is the previous fetch's start.
        self.delivered_since = time.monotonic()
        self._last_start = self.delivered_since

    @property
    def connected(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def epoch(self) -> int:
        """Which NATS connection this is (reconnects so far): a delivery taken before a reconnect may be stale."""
        return int(self._nc.stats["reconnects"])

    @property
    def ready(self) -> bool:
        return self.connected and self._psub is not None

    async def on_reconnected(self) -> None:
        self._reconnected.set()

    async def wait_connected(self, seconds: float) -> None:
        if self.connected:
            await asyncio.sleep(seconds)
            return
        self._reconnected.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reconnected.wait(), seconds)

    async def _bind(self) -> bool:
        try:
            try:
                info = await self._js.consumer_info(subjects.STREAM, subjects.CONSUMER)
            except NotFoundError:
                await self._js.stream_info(subjects.STREAM)  # NotFoundError too: the stream is missing
                info = await self._js.add_consumer(subjects.STREAM, topology.consumer_config())
                log.warning(
                    "consumer.recreated",
                    consumer=subjects.CONSUMER,
                    detail="the consumer was missing; created with the topology's settings "
                    "(todos_sent keeps what was sent, so nothing is sent twice)",
                )
            self.max_deliver = info.config.max_deliver or 0
            self.ack_wait = float(info.config.ack_wait or topology.ACK_WAIT)
            self._psub = await self._js.pull_subscribe_bind(durable=subjects.CONSUMER, stream=subjects.STREAM)
        except NotFoundError:
            log.warning("topology.missing", stream=subjects.STREAM, detail="run `python -m streams bootstrap`")
            return False
        except Exception as error:
            log.warning("consumer.bind_failed", error=str(error) or type(error).__name__)
            return False
        log.info("consumer.bound", consumer=subjects.CONSUMER, ack_wait=self.ack_wait, max_deliver=self.max_deliver)
        return True

    async def unbind(self) -> None:
        psub, self._psub = self._psub, None
        if psub is not None:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def stop_fetching(self) -> list[Msg]:
        """Unsubscribe the pull subscription: once the server has seen that (the flush), a pull request of
        ours still open has no interest left and gets nothing more. What reached us before is returned."""
        psub, self._psub = self._psub, None
        if psub is None:
            return []
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
            await self._nc.flush(timeout=FLUSH_TIMEOUT)
        return _take_delivered(psub)

    async def fetch(self, batch: int) -> list[Msg]:
        if self._psub is None and not await self._bind():
            await asyncio.sleep(REBIND_DELAY)
            return []
        assert self._psub is not None
        started = time.monotonic()
        left_behind = not self._psub._sub._pending_queue.empty()  # noqa: SLF001 (nats-py keeps it private)
        since = self._last_start if left_behind else started
        self._last_start = started
        try:
            msgs = await asyncio.wait_for(self._pull(self._psub, batch), FETCH_TIMEOUT + WATCHDOG_MARGIN)
        except TimeoutError:  # idle (nats TimeoutError, a bare asyncio one, or the watchdog)
            return []
        except APIError as error:  # consumer or stream deleted, JetStream unavailable
            log.warning("consumer.lost", error=str(error) or type(error).__name__, action="binding again")
            await self.unbind()
            await asyncio.sleep(REBIND_DELAY)
            return []
        except Exception as error:
            log.warning("consumer.fetch_failed", error=str(error) or type(error).__name__)
            await asyncio.sleep(REBIND_DELAY)
            return []
        self.delivered_since = since
        return msgs

    async def _pull(self, psub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
        """What is stored already, up to `batch`, at once; if nothing, the first event the moment it is stored
        (waiting up to FETCH_TIMEOUT).

        Not nats-py's fetch(batch): when nothing is stored, its request lingers until a *second* message
        comes or it expires, so at 100 events/s one event in ten waited for the next one (one in two for
        each of 3 replicas, 50 ms each: the tail grew with every replica added).
        """
        msgs = await self._available(psub, batch)
        if msgs or self._psub is not psub:  # stop_fetching() meanwhile: no new request, its answer would be lost
            return msgs
        return await psub.fetch(1, timeout=FETCH_TIMEOUT)  # a request for one message ends with it

    async def _available(self, psub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
        """Deliveries left by an earlier request, then a no_wait request: the server answers at once with
        what it has and a 404 (or nothing more once the batch is full)."""
        sub = psub._sub  # noqa: SLF001 (nats-py keeps the subscription and the request subjects private)
        msgs = _take_delivered(psub, batch)
        if len(msgs) == batch or self._psub is not psub:
            return msgs
        request = json.dumps({"batch": batch - len(msgs), "no_wait": True}).encode()
        await self._nc.publish(psub._nms, request, psub._deliver)  # noqa: SLF001
        while len(msgs) < batch:
            try:
                msg = await sub.next_msg(timeout=FETCH_TIMEOUT)
            except TimeoutError:
                break
            status = JetStreamContext.is_status_msg(msg)
            if status == StatusCode.CONTROL_MESSAGE:  # a heartbeat
                continue
            # a 404 or 408 ends the request; another status raises APIError (consumer deleted ...)
            if not JetStreamContext._is_processable_msg(status, msg):  # noqa: SLF001
                break
            msgs.append(msg)
        return msgs

    async def ack(self, msg: Msg) -> None:
        # a lost ack (NATS away) only means a redelivery, which todos_sent then acks unsent
        with contextlib.suppress(Exception):
            await msg.ack()

    async def nak(self, msg: Msg, delay: float) -> None:
        with contextlib.suppress(Exception):
            await (msg.nak(delay=delay) if delay > 0 else msg.nak())

    async def term(self, msg: Msg, reason: str) -> None:
        """+TERM with a reason (nats-py's term() sends none); the MSG_TERMINATED advisory carries it."""
        one_line = redact(" ".join(reason.split()))[:500]
        with contextlib.suppress(Exception):
            await self._nc.publish(msg.reply, b"+TERM " + one_line.encode())

    async def in_progress(self, msg: Msg) -> None:
        with contextlib.suppress(Exception):
            await msg.in_progress()


def _take_delivered(psub: JetStreamContext.PullSubscription, limit: int | None = None) -> list[Msg]:
    """Messages already delivered to the subscription and not yet taken (up to `limit`); the status
    messages that end a pull request (404, 408) are dropped."""
    sub = psub._sub  # noqa: SLF001 (nats-py keeps its queue private)
    msgs: list[Msg] = []
    while not sub._pending_queue.empty() and (limit is None or len(msgs) < limit):  # noqa: SLF001
        msg = sub._pending_queue.get_nowait()  # noqa: SLF001
        sub._pending_size -= len(msg.data)  # noqa: SLF001
        if not JetStreamContext.is_status_msg(msg):
            msgs.append(msg)
    return msgs
