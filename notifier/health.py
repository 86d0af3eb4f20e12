"""/healthz, /readyz and /metrics on NOTIFIER_PORT; every GET answers HEAD too, every path OPTIONS."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

Readiness = Callable[[], bool]
READY: web.AppKey[Readiness] = web.AppKey("ready")
REGISTRY = web.AppKey("registry", CollectorRegistry)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[READY]():
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not ready"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text format, or OpenMetrics when the Accept header asks for application/openmetrics-text."""
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encode(request.app[REGISTRY]), headers={"Content-Type": content_type})


async def options(request: web.Request) -> web.Response:
    """204 with `Allow`: the methods of this path (the same list a 405 gives)."""
    resource = request.match_info.route.resource
    methods = sorted({route.method for route in resource} if resource is not None else {"OPTIONS"})
    return web.Response(status=204, headers={"Allow": ",".join(methods)})


def make_app(ready: Callable[[], bool], registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    app[READY] = ready
    app[REGISTRY] = registry
    # add_get registers HEAD as well (aiohttp answers it with the GET handler's headers and no body)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    for resource in app.router.resources():
        if isinstance(resource, web.Resource):
            resource.add_route("OPTIONS", options)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
