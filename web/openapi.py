"""The OpenAPI 3.1 document of the API; body schemas come from the pydantic models."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from streams.payload import Todo
from web.page import ASSETS
from web.problems import CONTENT_TYPE as PROBLEM
from web.problems import Problem
from web.schemas import TodoCreate, TodoUpdate

JSON = "application/json"
OPENMETRICS = "application/openmetrics-text"
EVENT_STREAM = "text/event-stream"
REF = "#/components/schemas/{model}"
TIMESTAMP_PATTERN = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _problems(*statuses: int) -> dict[str, Any]:
    descriptions = {
        400: "Invalid body; `detail` says what is wrong",
        404: "No todo with this id (or the id is not a UUID)",
        413: "Body larger than 64 KiB",
        503: "The database is not available",
    }
    return {
        str(status): {"description": descriptions[status], "content": {PROBLEM: {"schema": _ref("Problem")}}}
        for status in statuses
    }


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {JSON: {"schema": _ref(name)}}}


ID_PARAMETER = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "the todo's id; anything that is not a UUID is a 404",
    "schema": {"type": "string", "format": "uuid"},
}


# what a client (or a stateful test) can do next with a todo it created
LINKS = {
    name: {"operationId": operation, "parameters": {"id": "$response.body#/id"}}
    for name, operation in [("GetTodo", "getTodo"), ("UpdateTodo", "updateTodo"), ("DeleteTodo", "deleteTodo")]
}


EVENTS_DESCRIPTION = """Server-Sent Events: what the API publishes, as it leaves for Telegram (from one core NATS
subscription to `todos.>` per process). The first message is `event: status` with `data: {"events": "on"}`
(`"off"`: NATS_URL is not set, no events are published; `"disconnected"`: NATS is configured but away right
now, events wait in the outbox); another `status` follows each change. Then one message per event:
`event: todos.created|updated|deleted`, `id:` the event's id, `data:` its payload (the todo JSON). A comment
line every 15 s keeps the stream open. A client that falls 256 events behind is disconnected and
reconnects (EventSource does that by itself, after the `retry:` of 1 s); no events are replayed."""


def document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(Todo, "serialization"), (TodoCreate, "validation"), (TodoUpdate, "validation"), (Problem, "serialization")],
        by_alias=True,
        ref_template=REF,
    )
    timestamp = {
        "type": "string",
        "format": "date-time",
        "pattern": TIMESTAMP_PATTERN,
        "examples": ["2026-11-28T23:15:54.808Z"],
    }
    for name in ("createdAt", "updatedAt"):
        schemas["$defs"]["Todo"]["properties"][name].update(timestamp)
    todo = _ref("Todo")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "todo-events API",
            "version": "1.0.0",
            "description": (
                "Todos; every change is published as an event (todos.created|updated|deleted). Every path also "
                "answers OPTIONS (204, `Allow` lists its methods) and every GET answers HEAD."
            ),
        },
        "paths": {
            "/api/todos": {
                "get": {
                    "operationId": "listTodos",
                    "summary": "All todos, oldest first (by createdAt, then id)",
                    "responses": {"200": _json({"type": "array", "items": todo}, "The todos"), **_problems(503)},
                },
                "post": {
                    "operationId": "createTodo",
                    "summary": "Create a todo; publishes todos.created",
                    "requestBody": _body("TodoCreate"),
                    "responses": {
                        "201": {
                            **_json(todo, "The created todo"),
                            "headers": {"Location": {"description": "/api/todos/{id}", "schema": {"type": "string"}}},
                            "links": LINKS,
                        },
                        **_problems(400, 413, 503),
                    },
                },
            },
            "/api/todos/{id}": {
                "parameters": [ID_PARAMETER],
                "get": {
                    "operationId": "getTodo",
                    "summary": "One todo",
                    "responses": {"200": _json(todo, "The todo"), **_problems(404, 503)},
                },
                "put": {
                    "operationId": "updateTodo",
                    "summary": "Change task and/or done; moves updatedAt; publishes todos.updated",
                    "requestBody": _body("TodoUpdate"),
                    "responses": {"200": _json(todo, "The updated todo"), **_problems(400, 404, 413, 503)},
                },
                "delete": {
                    "operationId": "deleteTodo",
                    "summary": "Delete a todo; publishes todos.deleted with the todo as it was",
                    "responses": {"200": _json(todo, "The todo as it was"), **_problems(404, 503)},
                },
            },
            "/api/events": {
                "get": {
                    "operationId": "events",
                    "summary": "Live feed of the events (Server-Sent Events)",
                    "description": EVENTS_DESCRIPTION,
                    "responses": {"200": _text(EVENT_STREAM, "An endless event stream")},
                }
            },
            "/": {
                "get": {
                    "operationId": "page",
                    "summary": "The todo web page (list, add, done, delete, live event feed)",
                    "responses": {"200": _text("text/html", "The page")},
                }
            },
            "/static/{name}": {
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "description": "a file of the page",
                        "schema": {"type": "string", "enum": sorted(ASSETS)},
                    }
                ],
                "get": {
                    "operationId": "pageFile",
                    "summary": "The page's script and style sheet",
                    "responses": {
                        "200": {
                            "description": "The file",
                            "content": {
                                media_type.split(";")[0]: {"schema": {"type": "string"}}
                                for media_type in sorted(set(ASSETS.values()))
                            },
                        },
                        "404": {"description": "No such file", "content": {PROBLEM: {"schema": _ref("Problem")}}},
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "200 while the process serves",
                    "responses": {"200": _json({"type": "object"}, "Serving")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "200 when the database answers (NATS's state is in the body; its absence is no 503)",
                    "responses": {
                        "200": _json({"type": "object"}, "Ready"),
                        "503": {"description": "Not ready", "content": {PROBLEM: {"schema": _ref("Problem")}}},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics; OpenMetrics when the Accept header asks for it",
                    "responses": {
                        "200": {
                            "description": "Prometheus text format (default) or OpenMetrics",
                            "content": {media: {"schema": {"type": "string"}} for media in ("text/plain", OPENMETRICS)},
                        }
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
        },
        "components": {"schemas": schemas["$defs"]},
    }


async def serve(_: web.Request) -> web.Response:
    return web.json_response(document())
