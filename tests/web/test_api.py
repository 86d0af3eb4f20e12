"""Every route of the contract: answers, status codes, validation, timestamps, problem documents."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.web.helpers import TIMESTAMP, count_rows, stream_events
from web.middlewares import request_id

PROBLEM = "application/problem+json"
Client = TestClient[Any, Any]


async def create(api: Client, task: str = "buy milk", **extra: Any) -> dict[str, Any]:
    response = await api.post("/api/todos", json={"task": task, **extra})
    assert response.status == 201, await response.text()
    return dict(await response.json())


async def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    document = json.loads(await response.read())
    assert document["status"] == status
    assert {"type", "title", "status", "detail"} <= document.keys()
    assert document["detail"]
    return dict(document)


def assert_todo_shape(todo: dict[str, Any]) -> None:
    assert set(todo) == {"id", "userId", "task", "done", "createdAt", "updatedAt"}
    assert uuid.UUID(todo["id"]).version == 4
    assert re.match(TIMESTAMP, todo["createdAt"])
    assert re.match(TIMESTAMP, todo["updatedAt"])


async def test_create_answers_the_todo_with_its_location(api: Client) -> None:
    """POST: 201, the todo in the contract's shape, Location pointing at it, and GET finds it."""
    response = await api.post("/api/todos", json={"task": "buy milk"})
    assert response.status == 201
    todo = await response.json()
    assert_todo_shape(todo)
    assert todo["task"] == "buy milk"
    assert todo["done"] is False
    assert todo["userId"] is None
    assert todo["createdAt"] == todo["updatedAt"]
    assert response.headers["Location"] == f"/api/todos/{todo['id']}"
    fetched = await api.get(response.headers["Location"])
    assert fetched.status == 200
    assert await fetched.json() == todo


async def test_create_with_done_and_untrimmed_task(api: Client) -> None:
    """done is taken as sent; the task is stored exactly as sent, white space included."""
    todo = await create(api, "  spaced  ", done=True)
    assert todo["task"] == "  spaced  "
    assert todo["done"] is True
    assert (await (await api.get(f"/api/todos/{todo['id']}")).json())["task"] == "  spaced  "


async def test_list_is_oldest_first(api: Client) -> None:
    """GET /api/todos lists todos by createdAt, then id: todos created in one millisecond come by id.

    The order is compared to the answers sorted by that key, not to the order the POSTs were sent in,
    which two POSTs answered within one millisecond would not follow.
    """
    created = [await create(api, f"task {i}") for i in range(5)]
    created += await asyncio.gather(*(create(api, f"together {i}") for i in range(20)))
    response = await api.get("/api/todos")
    assert response.status == 200
    listed = await response.json()
    assert listed == sorted(created, key=lambda todo: (todo["createdAt"], todo["id"]))


async def test_list_orders_todos_of_one_millisecond_by_id(api: Client, database_url: str) -> None:
    """Todos sharing a createdAt (stored so, to be sure the tie happens) are listed by id."""
    ids = [uuid.uuid4() for _ in range(6)]
    connection = await asyncpg.connect(database_url)
    try:
        await connection.executemany(
            "INSERT INTO todos (id, task, done, created_at, updated_at)"
            " VALUES ($1, 'tied', false, '2026-11-28T23:15:54.808Z', '2026-11-28T23:15:54.808Z')",
            [(todo_id,) for todo_id in ids],
        )
    finally:
        await connection.close()
    listed = await (await api.get("/api/todos")).json()
    assert [todo["id"] for todo in listed] == sorted(str(todo_id) for todo_id in ids)
    assert {todo["createdAt"] for todo in listed} == {"2026-11-28T23:15:54.808Z"}


async def test_update_changes_given_fields_and_moves_updated_at(api: Client) -> None:
    """PUT: fields left out keep their value; updatedAt moves on every PUT, even when nothing changed."""
    todo = await create(api)
    response = await api.put(f"/api/todos/{todo['id']}", json={"done": True})
    assert response.status == 200
    updated = await response.json()
    assert_todo_shape(updated)
    assert updated["task"] == todo["task"]
    assert updated["done"] is True
    assert updated["createdAt"] == todo["createdAt"]
    assert updated["updatedAt"] > todo["updatedAt"]
    again = await (await api.put(f"/api/todos/{todo['id']}", json={"done": True})).json()
    assert again["updatedAt"] > updated["updatedAt"]
    renamed = await (await api.put(f"/api/todos/{todo['id']}", json={"task": "sell milk"})).json()
    assert (renamed["task"], renamed["done"]) == ("sell milk", True)
    assert await (await api.get(f"/api/todos/{todo['id']}")).json() == renamed


async def test_update_ignores_read_only_fields(api: Client) -> None:
    """A client may send the whole todo back: id, userId, createdAt and updatedAt in the body are ignored."""
    todo = await create(api)
    body = {**todo, "id": str(uuid.uuid4()), "userId": "someone", "createdAt": "1999-01-01T00:00:00.000Z",
            "updatedAt": 42, "task": "changed"}  # fmt: skip
    response = await api.put(f"/api/todos/{todo['id']}", json=body)
    assert response.status == 200
    updated = await response.json()
    assert updated["id"] == todo["id"]
    assert updated["userId"] is None
    assert updated["createdAt"] == todo["createdAt"]
    assert updated["task"] == "changed"


async def test_delete_answers_the_todo_as_it_was(api: Client) -> None:
    """DELETE: 200 with the todo as it was; afterwards GET, PUT and DELETE are 404."""
    todo = await create(api)
    response = await api.delete(f"/api/todos/{todo['id']}")
    assert response.status == 200
    assert await response.json() == todo
    await assert_problem(await api.get(f"/api/todos/{todo['id']}"), 404)
    await assert_problem(await api.put(f"/api/todos/{todo['id']}", json={"done": True}), 404)
    await assert_problem(await api.delete(f"/api/todos/{todo['id']}"), 404)
    assert await (await api.get("/api/todos")).json() == []


@pytest.mark.parametrize("todo_id", [str(uuid.uuid4()), "not-a-uuid", "1", "%20"])
async def test_unknown_or_malformed_id_is_404(api: Client, todo_id: str) -> None:
    """An unknown id and an id that is not a UUID are both 404 problem documents, on every method."""
    await assert_problem(await api.get(f"/api/todos/{todo_id}"), 404)
    await assert_problem(await api.put(f"/api/todos/{todo_id}", json={"done": True}), 404)
    await assert_problem(await api.delete(f"/api/todos/{todo_id}"), 404)


async def test_only_the_canonical_uuid_form_finds_a_todo(api: Client) -> None:
    """Braces, no dashes, urn:uuid: or misplaced dashes are not ids: 404, though uuid.UUID() would take them."""
    todo = await create(api)
    same = uuid.UUID(todo["id"])
    misplaced = todo["id"][:8] + todo["id"][9:13] + "-" + todo["id"][13:]
    for spelling in (f"{{{same}}}", same.hex, f"urn:uuid:{same}", misplaced):
        await assert_problem(await api.get(f"/api/todos/{spelling}"), 404)
    assert (await api.get(f"/api/todos/{todo['id'].upper()}")).status == 200


TOO_LONG = "a" * 141
INVALID_CREATE = [
    (b"not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b'["task"]', "JSON object"),
    (b'"task"', "JSON object"),
    (b"null", "JSON object"),
    (b"{}", "task"),
    (b'{"task": 5}', "task"),
    (b'{"task": null}', "task"),
    (b'{"task": "x", "done": "yes"}', "done"),
    (b'{"task": "x", "done": 1}', "done"),
    (b'{"task": "x", "done": null}', "done"),
    (b'{"task": "x", "extra": 1}', "extra"),
    (b'{"task": "x", "id": "ignored on PUT only"}', "id"),
    (b'{"task": ""}', "task"),
    (b'{"task": "   \\t\\n "}', "white space"),
    (json.dumps({"task": TOO_LONG}).encode(), "140"),
    (json.dumps({"task": "\U0001f600" * 141}).encode(), "140"),
    (b'{"task": "nul \\u0000 inside"}', "task"),
    (b'{"task": "lone \\ud800 surrogate"}', "task"),
    (b"[" * 60_000, "nested too deeply"),
    (b'{"task": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "nested too deeply"),
    (b'{"task": "x", "done": ' + b"1" * 5_000 + b"}", "not valid JSON"),
]


@pytest.mark.parametrize(("body", "mentions"), INVALID_CREATE)
async def test_invalid_create_is_400_and_changes_nothing(
    api: Client, database_url: str, jetstream: Any, body: bytes, mentions: str
) -> None:
    """Every invalid POST body is a 400 whose detail says what is wrong; nothing stored, nothing published."""
    response = await api.post("/api/todos", data=body, headers={"Content-Type": "application/json"})
    problem = await assert_problem(response, 400)
    assert mentions in problem["detail"]
    assert await count_rows(database_url, "todos") == 0
    assert await count_rows(database_url, "outbox") == 0
    assert await stream_events(jetstream.url) == []


INVALID_UPDATE = [
    (b"not json", "not valid JSON"),
    (b"[]", "JSON object"),
    (b"{}", "task, done or both"),
    (b'{"id": "x", "createdAt": "y"}', "task, done or both"),
    (b'{"done": "yes"}', "done"),
    (b'{"done": 1}', "done"),
    (b'{"done": null}', "done"),
    (b'{"task": null}', "task"),
    (b'{"task": ""}', "task"),
    (b'{"task": " "}', "white space"),
    (json.dumps({"task": TOO_LONG}).encode(), "140"),
    (b'{"done": true, "color": "red"}', "color"),
    (b'{"done": true, "user_id": "snake case is not a read-only field"}', "user_id"),
]


@pytest.mark.parametrize(("body", "mentions"), INVALID_UPDATE)
async def test_invalid_update_is_400_and_changes_nothing(
    api: Client, database_url: str, jetstream: Any, body: bytes, mentions: str
) -> None:
    """Every invalid PUT body is a 400; the todo is unchanged and no todos.updated is published."""
    todo = await create(api)
    response = await api.put(f"/api/todos/{todo['id']}", data=body, headers={"Content-Type": "application/json"})
    problem = await assert_problem(response, 400)
    assert mentions in problem["detail"]
    assert await (await api.get(f"/api/todos/{todo['id']}")).json() == todo
    assert await count_rows(database_url, "outbox") <= 1  # at most the created event, not yet relayed
    assert all(event.subject == "todos.created" for event in await stream_events(jetstream.url))


async def test_task_length_counts_code_points(api: Client) -> None:
    """140 emoji (4 UTF-8 bytes each) are 140 characters: accepted on POST and PUT, stored as sent."""
    emoji = "\U0001f600" * 140
    todo = await create(api, emoji)
    assert todo["task"] == emoji
    combined = "e\u0301" * 70  # 140 code points that render as 70 characters
    response = await api.put(f"/api/todos/{todo['id']}", json={"task": combined})
    assert response.status == 200
    assert (await response.json())["task"] == combined


async def test_body_over_64_kib_is_413(api: Client, database_url: str) -> None:
    """A body over 64 KiB is a 413 problem document on POST and PUT; nothing is stored."""
    todo = await create(api)
    big = json.dumps({"task": "x", "pad": "y" * 70_000}).encode()
    await assert_problem(await api.post("/api/todos", data=big), 413)
    await assert_problem(await api.put(f"/api/todos/{todo['id']}", data=big), 413)
    assert await count_rows(database_url, "todos") == 1


async def test_unknown_route_and_wrong_method_are_problems(api: Client) -> None:
    """404 for an unknown path and 405 for a wrong method, both as problem documents."""
    await assert_problem(await api.get("/api/nothing"), 404)
    problem = await assert_problem(await api.patch("/api/todos", json={}), 405)
    assert problem["title"] == "Method Not Allowed"


async def test_request_id_is_echoed_or_made(api: Client) -> None:
    """X-Request-Id: the caller's is sent back; without one, the API makes one."""
    response = await api.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert response.headers["X-Request-Id"] == "abc-123"
    made = (await api.get("/healthz")).headers["X-Request-Id"]
    # this process's random prefix and a counter (was `len(made) >= 16`, false for the first 99 made ids)
    assert re.fullmatch(r"[0-9a-f]{12}-\d+", made)
    assert made != (await api.get("/healthz")).headers["X-Request-Id"]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-1.2:3_x", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("запрос-1", False),  # \w takes Cyrillic letters: the id must be ASCII
        ("abc def", False),
        ("", False),
    ],
)
async def test_request_id_is_kept_only_when_safe(api: Client, given: str, kept: bool) -> None:
    """A caller's X-Request-Id is kept only if it is 1-128 of A-Za-z0-9._:- (it is logged and echoed), else replaced."""
    echoed = (await api.get("/healthz", headers={"X-Request-Id": given})).headers["X-Request-Id"]
    assert (echoed == given) is kept
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", echoed)


@pytest.mark.parametrize("given", ["abc\n", "abc\r\nX-Evil: 1", "abc\x00", "x" * 129, "ид", None])
def test_request_id_replaces_what_http_cannot_carry(given: str | None) -> None:
    """Ids no HTTP client sends (a line break, which `$` let through before a final newline) are replaced too."""
    made = request_id(given)
    assert made != given
    assert re.fullmatch(r"[0-9a-f]{12}-\d+", made)
    assert request_id("abc-1.2:3_x") == "abc-1.2:3_x"


async def test_health_and_readiness(api: Client) -> None:
    """/healthz and /readyz answer 200 while the database and NATS are up."""
    assert (await api.get("/healthz")).status == 200
    assert (await api.get("/readyz")).status == 200


async def test_metrics_expose_requests_latency_and_outbox(api: Client) -> None:
    """/metrics has the request counter and latency histogram by route, method, status, and the outbox metrics."""
    await create(api)
    await api.get("/api/todos/not-a-uuid")
    text = await (await api.get("/metrics")).text()
    assert 'http_requests_total{method="POST",route="/api/todos",status="201"} 1.0' in text
    assert 'http_requests_total{method="GET",route="/api/todos/{id}",status="404"} 1.0' in text
    assert 'http_request_duration_seconds_bucket{le="0.1",method="POST",route="/api/todos",status="201"}' in text
    for name in ("outbox_backlog", "outbox_published_total", "outbox_publish_failures_total",
                 "outbox_publish_latency_seconds_bucket"):  # fmt: skip
        assert f"# TYPE {name.removesuffix('_total').removesuffix('_bucket')}" in text


async def test_a_slow_body_is_not_a_database_outage(api: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request deadline starts once the body is in: a client trickling its body gets 201, not 503."""
    monkeypatch.setattr("web.middlewares.DEADLINE", 0.3)

    async def trickle() -> Any:
        for part in (b'{"task": ', b'"slow', b' client"}'):
            yield part
            await asyncio.sleep(0.3)

    response = await api.post("/api/todos", data=trickle(), headers={"Content-Type": "application/json"})
    assert response.status == 201, await response.text()
    assert (await response.json())["task"] == "slow client"
