"""Request bodies, validated strictly by pydantic: wrong types, unknown fields and bad tasks are 400s."""

from __future__ import annotations

import json
from typing import Annotated, Any, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from streams.payload import TASK_MAX_LENGTH
from web.problems import InvalidBodyError


def _storable(task: str) -> str:
    if not task.strip():
        raise ValueError("must not be only white space")
    if "\x00" in task:
        raise ValueError("must not contain the NUL character")
    try:
        task.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return task


# what str.isspace() calls white space, spelled for the JSON schema's pattern (ECMA and Python alike)
_WHITE_SPACE = r"\t\n\u000b\f\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# no NUL anywhere, and at least one character that is not white space: exactly what _storable accepts
TASK_PATTERN = rf"^[^\u0000]*[^\u0000{_WHITE_SPACE}][^\u0000]*$"
# length counts code points (str length); stored exactly as sent, not trimmed
Task = Annotated[
    str,
    Field(
        min_length=1,
        max_length=TASK_MAX_LENGTH,
        description="1 to 140 characters (code points), not only white space, no NUL",
        json_schema_extra={"pattern": TASK_PATTERN},
    ),
    AfterValidator(_storable),
]
READ_ONLY: JsonDict = {"readOnly": True, "description": "read-only: ignored, so a client may send a whole todo back"}


class TodoCreate(BaseModel):
    """Body of POST /api/todos."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    task: Task
    done: bool = False


class TodoUpdate(BaseModel):
    """Body of PUT /api/todos/{id}: task, done or both; read-only fields of a todo are ignored."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        json_schema_extra={"anyOf": [{"required": ["task"]}, {"required": ["done"]}]},
    )

    task: Task | SkipJsonSchema[None] = None
    done: bool | SkipJsonSchema[None] = None
    id: Any = Field(default=None, exclude=True, json_schema_extra=READ_ONLY)
    user_id: Any = Field(default=None, alias="userId", exclude=True, json_schema_extra=READ_ONLY)
    created_at: Any = Field(default=None, alias="createdAt", exclude=True, json_schema_extra=READ_ONLY)
    updated_at: Any = Field(default=None, alias="updatedAt", exclude=True, json_schema_extra=READ_ONLY)

    @field_validator("task", "done", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("must not be null")
        return value

    @model_validator(mode="after")
    def _something_to_change(self) -> Self:
        if self.task is None and self.done is None:
            raise ValueError("give task, done or both")
        return self


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], body: bytes) -> M:
    """The body as `model`, or InvalidBodyError saying what is wrong."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidBodyError("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4300 digits
        raise InvalidBodyError(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidBodyError(f"body must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidBodyError(_describe(exc)) from None
