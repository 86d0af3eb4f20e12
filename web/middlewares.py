"""What every request goes through: a request id, metrics, a deadline, errors as problem documents."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from web import db
from web.keys import METRICS
from web.problems import InvalidBodyError, TodoNotFoundError, from_http_exception, problem

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")
# a database outage answers 503 within this time, never a hang
DEADLINE = 4.0


@web.middleware
async def request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take the caller's X-Request-Id (or make one), log with it, send it back."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    with structlog.contextvars.bound_contextvars(request_id=rid):
        response = await handler(request)
        response.headers[REQUEST_ID_HEADER] = rid
        return response


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request by route template, method and status."""
    started = time.perf_counter()
    response = await handler(request)
    elapsed = time.perf_counter() - started
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    labels = (route, request.method, str(response.status))
    metrics = request.app[METRICS]
    metrics.requests.labels(*labels).inc()
    metrics.request_latency.labels(*labels).observe(elapsed)
    level = logging.WARNING if response.status >= HTTPStatus.INTERNAL_SERVER_ERROR else logging.INFO
    log.log(
        level, "http.request", route=route, method=request.method, status=response.status, seconds=round(elapsed, 6)
    )
    return response


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a problem document: 4xx for the caller's mistakes, 503 for outages, 500 for bugs."""
    try:
        if request.can_read_body:
            # read (and cache) the body before the deadline starts: a slow client is not a database outage
            await request.read()
        async with asyncio.timeout(DEADLINE):
            return await handler(request)
    except InvalidBodyError as exc:
        return problem(400, str(exc))
    except TodoNotFoundError as exc:
        return problem(404, f"no todo with id {exc.args[0]}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return from_http_exception(exc)
    except Exception as exc:
        if db.is_outage(exc):
            log.warning("db.unavailable", error=str(exc) or type(exc).__name__)
            return problem(503, "the database is not available; try again shortly", {"Retry-After": "1"})
        log.exception("http.unexpected_error")
        return problem(500, "unexpected error; it has been logged")
