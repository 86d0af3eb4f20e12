"""The OpenAPI 3.1 document of the API; body schemas come from the pydantic models."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

from streams.payload import Todo
from web.problems import CONTENT_TYPE as PROBLEM
from web.problems import Problem
from web.schemas import TodoCreate, TodoUpdate

JSON = "application/json"
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
            "description": "Todos; every change is published as an event (todos.created|updated|deleted).",
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
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {"description": "Text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
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
