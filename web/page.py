"""The todo web page at `/` (static files, no build step) and its live feed of events (Server-Sent Events)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from web.feed import HEARTBEAT, HEARTBEAT_LINE, RETRY_MS
from web.keys import FEED, REQUEST_ID
from web.middlewares import REQUEST_ID_HEADER, streaming

STATIC = Path(__file__).parent / "static"
# the files the page loads, and nothing else from the directory
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# the page runs its own script and style only, talks to its own origin only, and is never framed
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # a new release is picked up at once; the ETag makes the check cheap
    "Cache-Control": "no-cache",
}
# a slow browser's write that takes longer than this ends its stream (its buffer on our side is bounded too)
WRITE_TIMEOUT = 10.0


async def index(_: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC / "index.html", headers={"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS}
    )


async def asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound(text=f"no file {name}")
    return web.FileResponse(STATIC / name, headers={"Content-Type": ASSETS[name], **SECURITY_HEADERS})


@streaming
async def events(request: web.Request) -> web.StreamResponse:
    """`text/event-stream`: a `status` event first ({"events": "on"|"off"|"disconnected"}, again on every
    change), then `todos.created|updated|deleted` with the event's payload, and a comment line as heartbeat."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx and friends: pass each event on at once
            REQUEST_ID_HEADER: request.get(REQUEST_ID, ""),
        }
    )
    if request.method == "HEAD":
        return response
    feed = request.app[FEED]
    listener = await feed.listen()
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        while listener.open:
            chunk = await listener.take(HEARTBEAT)
            if not listener.open:
                break
            async with asyncio.timeout(WRITE_TIMEOUT):
                await response.write(chunk or HEARTBEAT_LINE)
    except TimeoutError:
        # the browser stopped reading: drop the connection rather than wait on it
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        pass  # the browser went away
    finally:
        await feed.leave(listener)
    return response
