"""What every request goes through: a request id, metrics, a deadline, errors as problem documents.

A streaming handler (`@streaming`: the page's Server-Sent Events) has no deadline and no latency sample:
its answer lasts as long as the browser stays; it is still counted and logged when it ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from http import HTTPStatus

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from web import db
from web.keys import METRICS, REQUEST_ID
from web.problems import InvalidBodyError, TodoNotFoundError, from_http_exception, problem

log = structlog.get_logger(__name__)
_stdlib_log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
# a caller's id is logged and echoed back: ASCII only (\w would take any Unicode letter), and matched
# whole (a pattern ending in $ also matches before a final newline)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))
# a database outage answers 503 within this time, never a hang
DEADLINE = 4.0


_streaming: set[Handler] = set()


def streaming(handler: Handler) -> Handler:
    """Mark a handler whose answer is an endless stream: no deadline, no latency sample."""
    _streaming.add(handler)
    return handler


# made ids: this process's random prefix and a counter (unique across replicas, no entropy read per request)
_ID_PREFIX = secrets.token_hex(6)
_made_ids = itertools.count(1)


@web.middleware
async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request, in one layer (each layer costs a coroutine per request on the hot path):
    a request id (the caller's X-Request-Id or a made one) logged with it and sent back; a deadline
    and errors as problem documents (`_answer`); counted, timed and logged by route template.
    """
    started = time.perf_counter()
    rid = request_id(request.headers.get(REQUEST_ID_HEADER))
    with structlog.contextvars.bound_contextvars(request_id=rid):
        if handler in _streaming:
            request[REQUEST_ID] = rid  # it sends its headers before it returns
            response = await handler(request)
            _observe(request, response, time.perf_counter() - started, sample=False)
            return response
        response = await _answer(request, handler)
        response.headers[REQUEST_ID_HEADER] = rid
        _observe(request, response, time.perf_counter() - started)
    return response


def request_id(given: str | None) -> str:
    """The caller's X-Request-Id when it is 1-128 of `A-Za-z0-9._:-`, else a made one."""
    return given if given is not None and _REQUEST_ID.fullmatch(given) else f"{_ID_PREFIX}-{next(_made_ids)}"


def _observe(request: web.Request, response: web.StreamResponse, elapsed: float, sample: bool = True) -> None:
    """Count and time the request by route template, method and status; log it (at INFO, WARNING for 5xx)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    # any token is a method to aiohttp: unknown ones share one label, so a scanner cannot grow the series
    method = request.method if request.method in _METHODS else "other"
    requests, latency = request.app[METRICS].http(route, method, response.status)
    requests.inc()
    if sample:
        latency.observe(elapsed)
    level = logging.WARNING if response.status >= HTTPStatus.INTERNAL_SERVER_ERROR else logging.INFO
    if _stdlib_log.isEnabledFor(level):  # skip building a line that would be dropped
        log.log(level, "http.request", route=route, method=method, status=response.status, seconds=round(elapsed, 6))


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer, or a problem document: 4xx for the caller's mistakes, 503 for outages, 500 for bugs."""
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
