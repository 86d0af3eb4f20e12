"""The event payload: exactly the todo as the API answers it."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

TASK_MAX_LENGTH = 140


def format_timestamp(moment: datetime) -> str:
    """UTC ISO 8601 with milliseconds and `Z`, as Sequelize writes it: 2026-11-28T23:15:54.808Z."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(format_timestamp, return_type=str)]


class Todo(BaseModel):
    """A todo as the API returns it and as every event carries it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    id: uuid.UUID
    user_id: str | None = Field(default=None, alias="userId")
    task: str = Field(min_length=1, max_length=TASK_MAX_LENGTH)
    done: bool = False
    created_at: Timestamp = Field(alias="createdAt")
    updated_at: Timestamp = Field(alias="updatedAt")

    def to_json(self) -> dict[str, object]:
        """The JSON object of the API answer and the event payload."""
        return self.model_dump(mode="json", by_alias=True)

    @functools.cached_property
    def _bytes(self) -> bytes:
        # cached in the instance: the model is frozen (a changed todo is a new Todo, never a model_copy)
        return self.__pydantic_serializer__.to_json(self, by_alias=True)

    def to_bytes(self) -> bytes:
        """The JSON document (UTF-8), made once per todo (an answer and its event carry the same bytes)."""
        return self._bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> Todo:
        return cls.model_validate_json(data)
