"""Errors as RFC 9457 problem documents (application/problem+json), decided at the edge."""

from __future__ import annotations

import json
from http import HTTPStatus

from aiohttp import web
from pydantic import BaseModel, ConfigDict

CONTENT_TYPE = "application/problem+json"


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(frozen=True)

    type: str = "about:blank"
    title: str
    status: int
    detail: str


class TodoNotFoundError(LookupError):
    """No todo has this id (or the id is not a UUID)."""


class InvalidBodyError(ValueError):
    """The request body is not an acceptable todo; the message says why."""


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    document = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail)
    return web.Response(
        status=status,
        body=json.dumps(document.model_dump(), ensure_ascii=False).encode(),
        content_type=CONTENT_TYPE,
        headers=headers,
    )


def from_http_exception(exc: web.HTTPException) -> web.Response:
    """aiohttp's own errors (unknown route, wrong method, body too large) as problem documents."""
    detail = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else exc.reason
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        detail = "request body is larger than 64 KiB"
    return problem(exc.status, detail, headers)
