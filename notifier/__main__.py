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

import structlog

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
from streams.connection import connect
from streams.logs import configure_logging, register_secret

log = structlog.get_logger("notifier")
CLOSE_TIMEOUT = 2.0


async def run(settings: Settings, stop: asyncio.Event) -> None:
    metrics = Metrics()
    sink = make_sink(settings)
    worker: JetStreamConsumer | CoreSubscriber | None = None
    runner = await serve(
        make_app(lambda: worker is not None and worker.ready, metrics.registry), settings.notifier_port
    )
    nc = await connect(settings, name="todo-notifier")
    try:
        await sink.start()
        gate = ChatGate()
        if settings.notifier_mode == "core":
            route = ChatRoute(settings.telegram_chat_id or 0, None)
            worker = CoreSubscriber(nc, sink, route, gate, metrics)
            await worker.run(stop)
            return
        js = nc.jetstream()
        for action in await topology.bootstrap(js, settings.nats_stream_replicas):
            log.info("topology", action=str(action))
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
        asyncio.run(_main(settings))
    else:
        uvloop.run(_main(settings))


if __name__ == "__main__":
    main()
