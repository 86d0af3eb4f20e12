"""The application factory: wires settings, resources, middlewares and routes, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from web import openapi, page, views
from web.broker import Broker
from web.db import orm_ctx
from web.feed import Feed
from web.keys import BROKER, FEED, METRICS, OUTBOX_WAKEUP, SETTINGS
from web.metrics import Metrics
from web.middlewares import edge
from web.relay import relay_ctx
from web.settings import Settings

MAX_BODY = 64 * 1024


async def nats_ctx(app: web.Application) -> AsyncIterator[None]:
    app[BROKER].start(app[SETTINGS], app[OUTBOX_WAKEUP])
    yield
    await app[BROKER].stop()


async def end_feed(app: web.Application) -> None:
    """On shutdown, before aiohttp waits for open requests: end every live-feed stream, which never ends itself."""
    app[FEED].close()


def init_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[edge])
    app[SETTINGS] = settings
    app[METRICS] = metrics = Metrics()
    app[OUTBOX_WAKEUP] = asyncio.Event()
    app[FEED] = feed = Feed(enabled=settings.nats_url is not None, on_drop=metrics.feed_dropped.inc)
    app[BROKER] = Broker(on_open=feed.attach, on_change=feed.connection_changed)
    metrics.nats_connected.set_function(lambda: float(app[BROKER].is_connected))
    metrics.feed_clients.set_function(lambda: float(feed.listeners))
    # the ORM first: the relay task started later must see its context
    app.cleanup_ctx.extend([orm_ctx, nats_ctx, relay_ctx])
    app.on_shutdown.append(end_feed)
    # every GET answers HEAD too; every path answers OPTIONS (below)
    app.router.add_get("/api/todos", views.list_todos)
    app.router.add_post("/api/todos", views.create_todo)
    app.router.add_get("/api/todos/{id}", views.get_todo)
    app.router.add_put("/api/todos/{id}", views.update_todo)
    app.router.add_delete("/api/todos/{id}", views.delete_todo)
    app.router.add_get("/api/events", page.events)
    app.router.add_get("/api/openapi.json", openapi.serve)
    app.router.add_get("/healthz", views.healthz)
    app.router.add_get("/readyz", views.readyz)
    app.router.add_get("/metrics", views.metrics)
    app.router.add_get("/", page.index)
    app.router.add_get("/static/{name}", page.asset)
    for resource in app.router.resources():
        if isinstance(resource, web.Resource):
            resource.add_route("OPTIONS", views.options)
    return app
