"""HTTP handlers: thin; parse, call web.todos, answer. Errors become problem documents in middlewares."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import structlog
from aiohttp import web

from streams import payload
from web import db, todos
from web.keys import BROKER, METRICS, OUTBOX_WAKEUP, SETTINGS
from web.problems import TodoNotFoundError, problem
from web.schemas import TodoCreate, TodoUpdate, parse_body

READY_TIMEOUT = 2.0
log = structlog.get_logger(__name__)


# only the canonical 8-4-4-4-12 form: uuid.UUID() would also take braces, urn:uuid: or no dashes
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _todo_id(request: web.Request) -> uuid.UUID:
    given = request.match_info["id"]
    if not _UUID.fullmatch(given):
        raise TodoNotFoundError(given)
    return uuid.UUID(given)


def _answer(todo: payload.Todo, status: int = 200) -> web.Response:
    return web.Response(status=status, body=todo.to_bytes(), content_type="application/json")


def _outbox(request: web.Request) -> bool:
    return request.app[SETTINGS].nats_url is not None


def _committed(request: web.Request) -> None:
    """Wake the relay: an outbox row was just committed."""
    if _outbox(request):
        request.app[OUTBOX_WAKEUP].set()


async def list_todos(_: web.Request) -> web.Response:
    body = json.dumps([todo.to_json() for todo in await todos.list_todos()], ensure_ascii=False)
    return web.Response(body=body.encode(), content_type="application/json")


async def create_todo(request: web.Request) -> web.Response:
    body = parse_body(TodoCreate, await request.read())
    todo = await todos.create_todo(body, outbox=_outbox(request))
    _committed(request)
    response = _answer(todo, status=201)
    response.headers["Location"] = f"/api/todos/{todo.id}"
    return response


async def get_todo(request: web.Request) -> web.Response:
    return _answer(await todos.get_todo(_todo_id(request)))


async def update_todo(request: web.Request) -> web.Response:
    todo_id = _todo_id(request)
    body = parse_body(TodoUpdate, await request.read())
    todo = await todos.update_todo(todo_id, body, outbox=_outbox(request))
    _committed(request)
    return _answer(todo)


async def delete_todo(request: web.Request) -> web.Response:
    todo = await todos.delete_todo(_todo_id(request), outbox=_outbox(request))
    _committed(request)
    return _answer(todo)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the API can serve: the database answers. NATS being away does not take the API out of its
    Service (the outbox holds the events until it is back): its state is in the body and in /metrics."""
    try:
        async with asyncio.timeout(READY_TIMEOUT):
            await db.ping()
    except Exception as exc:
        # the reason in words for the caller; the exception (an address, a driver's text) only in the log
        log.warning("readyz.database_unavailable", error=str(exc) or type(exc).__name__)
        return problem(503, "the database does not answer")
    body = {"status": "ready", "database": "up"}
    if _outbox(request):
        body["nats"] = "connected" if request.app[BROKER].is_connected else "disconnected: events wait in the outbox"
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text format, or OpenMetrics when the Accept header asks for application/openmetrics-text."""
    body, content_type = request.app[METRICS].render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def options(request: web.Request) -> web.Response:
    """204 with `Allow`: the methods of this path (the same list a 405 gives)."""
    resource = request.match_info.route.resource
    methods = sorted({route.method for route in resource} if resource is not None else {"OPTIONS"})
    return web.Response(status=204, headers={"Allow": ",".join(methods)})
