"""One notifier replica, assembled in one place and supervised.

`run` builds the parts (health port, NATS connection, sink, source, pipeline) on an AsyncExitStack
so each is closed in reverse order whatever happens, and runs every background loop in one
asyncio.TaskGroup. A loop that dies unexpectedly is logged, `/readyz` turns 503, what the replica
holds is given back to the stream, and the process exits 1 so that Kubernetes restarts it: nothing
dies silently while holding events.

SIGTERM/SIGINT: stop fetching, release (nak) queued events at once, give messages under way up to
pipeline.FINISH_TIMEOUT (10 s), release the rest, unsubscribe, drain NATS (up to 2 s). The process
exits 0 within 15 s: give k8s a grace period of at least 20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import structlog
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, NotFoundError

from notifier.chats import ChatGate, ChatRoute
from notifier.core_mode import CoreSource
from notifier.health import make_app, serve
from notifier.jetstream import JetStreamSource
from notifier.metrics import Metrics
from notifier.pacing import Pacer
from notifier.pipeline import Pipeline, Shape, Source
from notifier.replies import Replies
from notifier.sent_log import SentLog
from notifier.settings import Settings
from notifier.sinks import make_sink
from streams import subjects
from streams.connection import connect, server_info
from streams.permissions import NOTIFIER

log = structlog.get_logger("notifier")
T = TypeVar("T")
CLOSE_TIMEOUT = 2.0
TOPOLOGY_RETRY = 1.0


class NoJetStreamError(RuntimeError):
    """NOTIFIER_MODE=jetstream against a plain NATS server: a configuration error, not a transient one."""


class _StopRequestedError(Exception):
    """SIGTERM: ends the TaskGroup after a graceful finish."""


class Replica:
    """What /readyz reports: the pipeline can work, and nothing has failed."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.failed = False

    @property
    def ready(self) -> bool:
        return not self.failed and self.pipeline is not None and self.pipeline.ready


async def run(settings: Settings, stop: asyncio.Event) -> int:
    """Run one replica until `stop` is set (exit code 0) or a part of it fails (1)."""
    metrics = Metrics()
    replica = Replica()
    async with AsyncExitStack() as stack:
        runner = await serve(
            make_app(lambda: replica.ready, metrics.registry), settings.notifier_host, settings.notifier_port
        )
        stack.push_async_callback(runner.cleanup)
        source_box: list[JetStreamSource] = []

        async def reconnected() -> None:
            for source in source_box:
                await source.on_reconnected()

        nc = await _until_stopped(
            connect(settings, name="todo-notifier", identity=NOTIFIER, on_reconnected=reconnected), stop
        )
        if nc is None:
            return 0
        stack.push_async_callback(_close, nc)
        sink = make_sink(settings)
        await sink.start()
        stack.push_async_callback(sink.stop)
        gate = ChatGate()
        chat_id = settings.telegram_chat_id or 0
        source: Source
        replies: Replies | None = None
        if settings.notifier_mode == "core":
            core = CoreSource(nc)
            await core.subscribe()
            stack.push_async_callback(core.unsubscribe)
            source, route, pacer, sent_log = core, ChatRoute(chat_id, None), Pacer(None, gate, None, None), None
        else:
            if not server_info(nc).get("jetstream", False):
                raise NoJetStreamError(
                    "notifier: the NATS server has no JetStream; enable it (nats-server -js) or set NOTIFIER_MODE=core"
                )
            js = nc.jetstream()
            buckets = await _until_stopped(_wait_for_topology(nc), stop)
            if buckets is None:
                return 0
            jetstream = JetStreamSource(nc, js)
            source_box.append(jetstream)
            stack.push_async_callback(jetstream.unbind)
            state = await js.key_value(subjects.STATE_BUCKET)
            route = ChatRoute(chat_id, state)
            if await _until_stopped(_load_route(route), stop) is None:
                return 0
            pacer = Pacer(state, gate, settings.telegram_chat_rate, settings.telegram_group_rate)
            source, sent_log = jetstream, SentLog(await js.key_value(subjects.SENT_BUCKET), js)
            if settings.telegram_replies and settings.notifier_sink == "telegram":
                replies = Replies(await js.key_value(subjects.REPLIES_BUCKET), settings.telegram_thread_id)
                stack.push_async_callback(replies.close)  # before NATS closes: the records under way land
        paced = settings.notifier_sink == "telegram" and pacer.paces(route.current)
        shape = Shape.of(settings, paced=paced)
        metrics.pause_seconds.set_function(lambda: gate.remaining(route.current))
        pipeline = Pipeline(
            source=source,
            sink=sink,
            route=route,
            gate=gate,
            pacer=pacer,
            sent_log=sent_log,
            metrics=metrics,
            shape=shape,
            replies=replies,
        )
        replica.pipeline = pipeline
        log.info(
            "notifier.pipeline",
            paced=paced,
            limits=[str(rate) for rate in pacer.limits(route.current)] if paced else [],
            senders=shape.senders,
            max_events_per_message=shape.max_events,
            replies=replies is not None,
            late_after=shape.late_after or None,
            thread_id=settings.telegram_thread_id,
            silent=settings.telegram_silent,
        )
        loops: dict[str, Coroutine[Any, Any, None]] = {**pipeline.tasks(), "route_refresh": route.refresh_forever()}
        if settings.notifier_mode == "jetstream":  # the pauses other replicas met, shared through KV
            loops["pacing_follow"] = pacer.follow()
        return await _supervise(replica, pipeline, loops, stop)
    return 0  # pragma: no cover (mypy: the stack swallows nothing)


async def _supervise(
    replica: Replica, pipeline: Pipeline, loops: dict[str, Coroutine[Any, Any, None]], stop: asyncio.Event
) -> int:
    tasks: list[asyncio.Task[None]] = []

    async def guarded(name: str, loop: Coroutine[Any, Any, None]) -> None:
        try:
            await loop
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.exception("replica.task_died", task=name, detail="the replica stops and exits 1 (restart it)")
            replica.failed = True
            raise
        if not pipeline_stopping():
            log.error("replica.task_ended", task=name, detail="a loop ended on its own: the replica stops")
            replica.failed = True
            raise RuntimeError(f"{name} ended")

    def pipeline_stopping() -> bool:
        return stop.is_set()

    async def until_stopped() -> None:
        await stop.wait()
        await pipeline.finish()
        for task in tasks:
            task.cancel()
        raise _StopRequestedError

    try:
        async with asyncio.TaskGroup() as group:
            tasks.extend(group.create_task(guarded(name, loop), name=name) for name, loop in loops.items())
            group.create_task(until_stopped(), name="until_stopped")
    except* _StopRequestedError:
        pass
    except* BaseException:  # a loop died: logged by guarded()
        replica.failed = True
    await pipeline.release_held()
    log.info("notifier.stopped", failed=replica.failed)
    return 1 if replica.failed else 0


async def _wait_for_topology(nc: Client) -> bool:
    """Wait until the streams and the KV buckets exist (`python -m streams bootstrap` creates them)."""
    js = nc.jetstream()
    warned = False
    while True:
        try:
            await js.stream_info(subjects.STREAM)
            await js.stream_info(subjects.DLQ_STREAM)  # without it, a dead letter would leave no trace
            await js.key_value(subjects.SENT_BUCKET)
            await js.key_value(subjects.STATE_BUCKET)
            await js.key_value(subjects.REPLIES_BUCKET)
        except (NotFoundError, BucketNotFoundError) as error:
            if not warned:
                log.warning(
                    "topology.missing",
                    error=str(error) or type(error).__name__,
                    detail="waiting for `python -m streams bootstrap` (just bootstrap-streams)",
                )
                warned = True
        except Exception as error:
            log.warning("topology.not_ready", error=str(error) or type(error).__name__, retry_in=TOPOLOGY_RETRY)
        else:
            return True
        await asyncio.sleep(TOPOLOGY_RETRY)


async def _load_route(route: ChatRoute) -> bool:
    """Read the chat's migration from KV, retried while the bucket does not answer yet (a cluster that has
    just created it may still be electing its leader: a read then times out)."""
    while True:
        try:
            await route.load()
        except Exception as error:
            log.warning("topology.not_ready", error=str(error) or type(error).__name__, retry_in=TOPOLOGY_RETRY)
            await asyncio.sleep(TOPOLOGY_RETRY)
        else:
            return True


async def _until_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """The result of `work`, or None when SIGTERM came first (NATS may never answer)."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _close(nc: Client) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), CLOSE_TIMEOUT)
    if not nc.is_closed:
        await nc.close()
