"""Todo changes and their outbox rows, written in one transaction.

Times are truncated to milliseconds before they are stored, so the row, the API answer and the
event all carry the same instant. An update locks the todo row (SELECT ... FOR UPDATE on
PostgreSQL; SQLite serialises writers anyway) before it writes its event row, so the events of
one todo get outbox ids in commit order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from streams import payload
from streams.subjects import Change
from web import models
from web.problems import TodoNotFoundError
from web.schemas import TodoCreate, TodoUpdate

MILLISECOND = timedelta(milliseconds=1)


def now() -> datetime:
    """The current UTC time at millisecond precision, as timestamps are shown."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def to_payload(row: models.Todo) -> payload.Todo:
    return payload.Todo(
        id=row.id,
        user_id=row.user_id,
        task=row.task,
        done=row.done,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _record(connection: BaseDBAsyncClient, change: Change, todo: payload.Todo, at: datetime) -> None:
    await models.OutboxEvent.create(
        event_id=uuid.uuid4(), subject=change.subject, payload=todo.to_bytes(), created_at=at, using_db=connection
    )


async def list_todos() -> list[payload.Todo]:
    return [to_payload(row) for row in await models.Todo.all().order_by("created_at", "id")]


async def get_todo(todo_id: uuid.UUID) -> payload.Todo:
    row = await models.Todo.get_or_none(id=todo_id)
    if row is None:
        raise TodoNotFoundError(todo_id)
    return to_payload(row)


# PostgreSQL: the todo and its event in one statement, atomic without BEGIN/COMMIT round trips (the hot path)
_CREATE_WITH_EVENT = (
    "WITH todo AS (INSERT INTO todos (id, user_id, task, done, created_at, updated_at)"
    " VALUES ($1, NULL, $2, $3, $4, $4))"
    " INSERT INTO outbox (event_id, subject, payload, created_at) VALUES ($5, $6, $7, $4)"
)


async def create_todo(body: TodoCreate, *, outbox: bool) -> payload.Todo:
    at = now()
    todo = payload.Todo(id=uuid.uuid4(), task=body.task, done=body.done, created_at=at, updated_at=at)
    client = connections.get("default")
    if outbox and client.capabilities.dialect == "postgres":
        values = [todo.id, todo.task, todo.done, at, uuid.uuid4(), Change.CREATED.subject, todo.to_bytes()]
        await client.execute_query(_CREATE_WITH_EVENT, values)
        return todo
    fields: dict[str, Any] = {"id": todo.id, "task": todo.task, "done": todo.done, "created_at": at, "updated_at": at}
    if not outbox:
        await models.Todo.create(**fields)
        return todo
    async with in_transaction() as connection:
        await models.Todo.create(**fields, using_db=connection)
        await _record(connection, Change.CREATED, todo, at)
    return todo


async def _locked(connection: BaseDBAsyncClient, todo_id: uuid.UUID) -> models.Todo:
    row = await models.Todo.filter(id=todo_id).select_for_update().using_db(connection).first()
    if row is None:
        raise TodoNotFoundError(todo_id)
    return row


async def update_todo(todo_id: uuid.UUID, body: TodoUpdate, *, outbox: bool) -> payload.Todo:
    async with in_transaction() as connection:
        row = await _locked(connection, todo_id)
        if body.task is not None:
            row.task = body.task
        if body.done is not None:
            row.done = body.done
        # every update moves updatedAt, strictly, even two within one millisecond
        row.updated_at = max(now(), row.updated_at + MILLISECOND)
        await row.save(using_db=connection, update_fields=["task", "done", "updated_at"])
        todo = to_payload(row)
        if outbox:
            await _record(connection, Change.UPDATED, todo, row.updated_at)
    return todo


async def delete_todo(todo_id: uuid.UUID, *, outbox: bool) -> payload.Todo:
    async with in_transaction() as connection:
        row = await _locked(connection, todo_id)
        todo = to_payload(row)
        await models.Todo.filter(id=todo_id).using_db(connection).delete()
        if outbox:
            await _record(connection, Change.DELETED, todo, now())
    return todo
