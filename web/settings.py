"""The API's settings, read once from the environment at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from streams.connection import NatsSettings
from streams.logs import LogFormat

DEFAULT_DATABASE_URL = "sqlite://var/todos.sqlite3"


class Settings(NatsSettings):
    """Everything `python -m web` reads from the environment (NATS_* come from NatsSettings)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    database_url: str = Field(default=DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL")
    host: str = Field(default="0.0.0.0", validation_alias="HOST")  # noqa: S104 - a server inside a container
    port: int = Field(default=8080, ge=1, le=65535, validation_alias="PORT")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", validation_alias="LOG_LEVEL"
    )
    log_format: LogFormat | None = Field(default=None, validation_alias="LOG_FORMAT")

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme == "sqlite":
            if not value.removeprefix("sqlite://"):
                raise ValueError("sqlite URLs name a file: sqlite://var/todos.sqlite3")
            return value
        if parts.scheme in {"postgres", "postgresql"}:
            if not parts.path.strip("/"):
                raise ValueError("must name a database: postgres://user:pass@host:5432/db")
            return value
        raise ValueError("must start with postgres:// or sqlite://")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite://")

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.database_url.removeprefix("sqlite://")) if self.is_sqlite else None
