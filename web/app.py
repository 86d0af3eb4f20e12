"""The application factory: wires settings, resources, middlewares and routes, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from web import openapi, views
from web.broker import Broker
from web.db import orm_ctx
from web.keys import BROKER, METRICS, OUTBOX_WAKEUP, SETTINGS
from web.metrics import Metrics
from web.middlewares import edge
from web.relay import relay_ctx
from web.settings import Settings

MAX_BODY = 64 * 1024


async def nats_ctx(app: web.Application) -> AsyncIterator[None]:
    app[BROKER].start(app[SETTINGS], app[OUTBOX_WAKEUP])
    yield
    await app[BROKER].stop()


def init_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[edge])
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[OUTBOX_WAKEUP] = asyncio.Event()
    app[BROKER] = Broker()
    app[METRICS].nats_connected.set_function(lambda: float(app[BROKER].is_connected))
    # the ORM first: the relay task started later must see its context
    app.cleanup_ctx.extend([orm_ctx, nats_ctx, relay_ctx])
    app.router.add_get("/api/todos", views.list_todos, allow_head=False)
    app.router.add_post("/api/todos", views.create_todo)
    app.router.add_get("/api/todos/{id}", views.get_todo, allow_head=False)
    app.router.add_put("/api/todos/{id}", views.update_todo)
    app.router.add_delete("/api/todos/{id}", views.delete_todo)
    app.router.add_get("/api/openapi.json", openapi.serve, allow_head=False)
    app.router.add_get("/healthz", views.healthz, allow_head=False)
    app.router.add_get("/readyz", views.readyz, allow_head=False)
    app.router.add_get("/metrics", views.metrics, allow_head=False)
    return app
