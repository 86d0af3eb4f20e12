"""What the API stores: todos, and the outbox of events waiting to reach NATS."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from streams.payload import TASK_MAX_LENGTH


class Todo(Model):
    """A todo. Times are UTC, truncated to milliseconds, so the API, the row and the event agree."""

    id = fields.UUIDField(primary_key=True)
    user_id = fields.CharField(max_length=255, null=True)
    # a code point is at most 4 bytes; 140 code points always fit
    task = fields.CharField(max_length=TASK_MAX_LENGTH)
    done = fields.BooleanField(default=False)
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()

    class Meta:
        table = "todos"
        indexes = (("created_at", "id"),)


class OutboxEvent(Model):
    """An event committed with its change and not yet acked by NATS (its id orders the relay)."""

    id = fields.BigIntField(primary_key=True, generated=True)
    event_id = fields.UUIDField(unique=True)
    subject = fields.CharField(max_length=64)
    payload = fields.BinaryField()
    created_at = fields.DatetimeField()

    class Meta:
        table = "outbox"
