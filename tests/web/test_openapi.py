"""GET /api/openapi.json: a valid OpenAPI 3.1 document, and every route answers as it documents."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from aiohttp.test_utils import TestClient
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

Client = TestClient[Any, Any]
# 503s (database or NATS away) are exercised in test_outages.py
ELSEWHERE = {"503"}


async def fetch_document(api: Client) -> dict[str, Any]:
    response = await api.get("/api/openapi.json")
    assert response.status == 200
    return dict(await response.json())


async def test_document_is_valid_openapi_31_and_covers_every_route(api: Client) -> None:
    """The document validates against the OpenAPI 3.1 meta-schema and lists every route the app serves."""
    document = await fetch_document(api)
    assert document["openapi"].startswith("3.1.")
    assert OPENAPI_31_VALIDATOR.is_valid(document), list(OPENAPI_31_VALIDATOR.iter_errors(document))[:3]
    served = {
        (route.resource.canonical, route.method.lower())
        for route in api.app.router.routes()
        # HEAD and OPTIONS answer on every path (the document's description says so; test_page.py tests them)
        if route.resource is not None and route.method not in {"HEAD", "OPTIONS"}
    }
    documented = {
        (path, method) for path, item in document["paths"].items() for method in item if method != "parameters"
    }
    assert documented == served
    assert {"Todo", "TodoCreate", "TodoUpdate", "Problem"} <= document["components"]["schemas"].keys()


def _check(document: dict[str, Any], *, path: str, method: str, status: int, content_type: str, body: bytes) -> None:
    """The answer is one the document lists for this operation, in its media type and schema."""
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, (path, method, status)
    content = responses[str(status)].get("content")
    if content is None:
        return
    assert content_type in content, (path, method, status, content_type)
    if content_type.endswith("json"):
        schema = {**content[content_type]["schema"], "components": document["components"]}
        jsonschema.Draft202012Validator(schema).validate(json.loads(body))


async def test_each_documented_answer_happens_as_documented(api: Client) -> None:
    """Each documented (route, method, status) is produced by a real request, with the documented body shape."""
    document = await fetch_document(api)
    created = await (await api.post("/api/todos", json={"task": "documented"})).json()
    item = f"/api/todos/{created['id']}"
    missing = "/api/todos/00000000-0000-4000-8000-000000000000"
    big = json.dumps({"task": "x", "pad": "y" * 70_000})
    requests = [
        ("/api/todos", "get", "/api/todos", None),
        ("/api/todos", "post", "/api/todos", '{"task": "t"}'),
        ("/api/todos", "post", "/api/todos", '{"task": ""}'),
        ("/api/todos", "post", "/api/todos", big),
        ("/api/todos/{id}", "get", item, None),
        ("/api/todos/{id}", "get", missing, None),
        ("/api/todos/{id}", "put", item, '{"done": true}'),
        ("/api/todos/{id}", "put", item, '{"done": "yes"}'),
        ("/api/todos/{id}", "put", missing, '{"done": true}'),
        ("/api/todos/{id}", "put", item, big),
        ("/api/todos/{id}", "delete", missing, None),
        ("/api/todos/{id}", "delete", item, None),
        ("/healthz", "get", "/healthz", None),
        ("/readyz", "get", "/readyz", None),
        ("/metrics", "get", "/metrics", None),
        ("/api/openapi.json", "get", "/api/openapi.json", None),
        ("/api/events", "get", "/api/events", None),
        ("/", "get", "/", None),
        ("/static/{name}", "get", "/static/app.js", None),
        ("/static/{name}", "get", "/static/style.css", None),
        ("/static/{name}", "get", "/static/nothing.js", None),
    ]
    seen = set()
    for template, method, url, body in requests:
        response = await api.request(method.upper(), url, data=body)
        if response.content_type == "text/event-stream":
            response.close()  # an endless stream: its headers are the answer checked here
            content = b""
        else:
            content = await response.read()
        _check(
            document,
            path=template,
            method=method,
            status=response.status,
            content_type=response.content_type,
            body=content,
        )
        seen.add((template, method, str(response.status)))
    documented = {
        (path, method, status)
        for path, item_ in document["paths"].items()
        for method, operation in item_.items()
        if method != "parameters"
        for status in operation["responses"]
        if status not in ELSEWHERE
    }
    assert seen == documented
