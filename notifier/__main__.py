"""`python -m notifier`: one notifier replica (run as many as you like).

SIGTERM/SIGINT: stop fetching (the fetch under way ends within 1 s, 3 s if stalled), nak the events
waiting for a paced chat's slots, give in-flight sends up to consumer.FINISH_TIMEOUT (10 s) and nak
the rest, unsubscribe the pull subscription, drain NATS (up to 2 s). The process exits 0 within 15 s:
give k8s a grace period of at least 20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats.errors
import structlog
from nats.aio.client import Client
from nats.js.errors import APIError

from notifier.batching import Batcher
from notifier.chats import ChatGate, ChatRoute
from notifier.consumer import JetStreamConsumer
from notifier.core import CoreSubscriber
from notifier.health import make_app, serve
from notifier.metrics import Metrics
from notifier.pacing import Pacer
from notifier.processing import BotPause, Processor, SentLog
from notifier.settings import Settings
from notifier.telegram import make_sink
from streams import subjects, topology
from streams.connection import connect, server_info
from streams.logs import configure_logging, register_secret

log = structlog.get_logger("notifier")
T = TypeVar("T")
CLOSE_TIMEOUT = 2.0
TOPOLOGY_RETRY = 1.0


class NoJetStreamError(RuntimeError):
    """NOTIFIER_MODE=jetstream against a plain NATS server: a configuration error, not a transient one."""


async def run(settings: Settings, stop: asyncio.Event) -> None:
    metrics = Metrics()
    sink = make_sink(settings)
    worker: JetStreamConsumer | CoreSubscriber | None = None
    runner = await serve(
        make_app(lambda: worker is not None and worker.ready, metrics.registry),
        settings.notifier_host,
        settings.notifier_port,
    )
    nc = await _until_stopped(connect(settings, name="todo-notifier"), stop)
    if nc is None:
        await runner.cleanup()
        return
    try:
        await sink.start()
        gate = ChatGate()
        if settings.notifier_mode == "core":
            route = ChatRoute(settings.telegram_chat_id or 0, None)
            worker = CoreSubscriber(nc, sink, route, gate, metrics)
            await worker.run(stop)
            return
        js = nc.jetstream()
        if not await _until_stopped(_ensure_topology(nc, settings), stop):
            return
        state = await js.key_value(subjects.STATE_BUCKET)
        route = ChatRoute(settings.telegram_chat_id or 0, state)
        await route.load()
        pause = BotPause(metrics)
        sent = SentLog(await js.key_value(subjects.SENT_BUCKET))
        pacer = Pacer(state, gate, settings.telegram_chat_rate, settings.telegram_group_rate)
        metrics.pause_seconds.set_function(lambda: gate.remaining(route.current))
        processor = Processor(
            nc=nc,
            sink=sink,
            route=route,
            gate=gate,
            sent=sent,
            metrics=metrics,
            pause=pause,
            probe_interval=settings.notifier_probe_interval,
            pacer=pacer,
        )
        batcher = None
        if settings.notifier_sink == "telegram" and pacer.paces(route.current):
            batcher = Batcher(
                processor=processor,
                sink=sink,
                route=route,
                pacer=pacer,
                sent=sent,
                metrics=metrics,
                pause=pause,
                max_events=settings.notifier_max_events_per_message,
            )
        log.info(
            "notifier.pacing",
            paced=batcher is not None,
            limits=[str(rate) for rate in pacer.limits(route.current)] if batcher else [],
            max_events_per_message=settings.notifier_max_events_per_message if batcher else 1,
        )
        worker = JetStreamConsumer(
            nc=nc,
            js=js,
            processor=processor,
            sink=sink,
            route=route,
            pause=pause,
            metrics=metrics,
            concurrency=settings.notifier_concurrency,
            probe_interval=settings.notifier_probe_interval,
            batcher=batcher,
            max_events_per_message=settings.notifier_max_events_per_message,
            stream_replicas=settings.nats_stream_replicas,
        )
        background = [asyncio.create_task(route.refresh_forever()), asyncio.create_task(pacer.follow())]
        try:
            await worker.run(stop)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
    finally:
        await sink.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), CLOSE_TIMEOUT)
        if not nc.is_closed:
            await nc.close()
        await runner.cleanup()
        log.info("notifier.stopped")


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


async def _ensure_topology(nc: Client, settings: Settings) -> bool:
    """Create or check the stream, consumer and KV buckets, retrying while JetStream is not ready yet."""
    if not server_info(nc).get("jetstream", False):
        raise NoJetStreamError(
            "notifier: the NATS server has no JetStream; enable it (nats-server -js) or set NOTIFIER_MODE=core"
        )
    while True:
        try:
            actions = await topology.bootstrap(nc.jetstream(), settings.nats_stream_replicas)
        except (APIError, nats.errors.Error, TimeoutError) as error:
            # JetStream enabled but not answering yet: a cluster electing its leader, a server starting
            log.warning("topology.not_ready", error=str(error) or type(error).__name__, retry_in=TOPOLOGY_RETRY)
            await asyncio.sleep(TOPOLOGY_RETRY)
            continue
        for action in actions:
            log.info("topology", action=str(action))
        return True


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("notifier.starting", mode=settings.notifier_mode, sink=settings.notifier_sink, port=settings.notifier_port)
    await run(settings, stop)


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    register_secret(settings.token)
    try:
        import uvloop  # noqa: PLC0415 (optional speed-up: libuv event loop, ~1.5x events/s)
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_main(settings))
    except NoJetStreamError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
