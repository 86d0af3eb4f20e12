"""The API's settings, read once from the environment at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from streams.connection import MIN_SECRET, NatsSettings, redact_url, url_secrets
from streams.logs import LogFormat, redact, register_secret

DEFAULT_DATABASE_URL = "sqlite://var/todos.sqlite3"


class Settings(NatsSettings):
    """Everything `python -m web` reads from the environment (NATS_* come from NatsSettings)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    database_url: str = Field(default=DEFAULT_DATABASE_URL, validation_alias="DATABASE_URL")
    # the owner role's URL, for migrations only (`python -m web migrate`, or the API's start-up migration)
    database_migration_url: str | None = Field(default=None, validation_alias="DATABASE_MIGRATION_URL")
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
        if urlsplit(value).scheme == "sqlite":
            if not value.removeprefix("sqlite://"):
                raise ValueError("sqlite URLs name a file: sqlite://var/todos.sqlite3")
            return value
        return _check_postgres_url(value)

    @field_validator("database_migration_url")
    @classmethod
    def _check_database_migration_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if urlsplit(value).scheme == "sqlite":
            raise ValueError("is for PostgreSQL only (SQLite is migrated through DATABASE_URL): unset it")
        if urlsplit(value).scheme not in {"postgres", "postgresql"}:
            raise ValueError("must start with postgres://")
        return _check_postgres_url(value)

    @model_validator(mode="after")
    def _postgres_for_migration_url(self) -> Self:
        # DATABASE_URL left unset is allowed: `python -m web migrate` needs only DATABASE_MIGRATION_URL
        # (the API refuses to start that way: `needs_database_url`)
        if self.database_migration_url is not None and self.is_sqlite and "database_url" in self.model_fields_set:
            # the model's error has no variable to name: the message names both
            raise ValueError(
                "DATABASE_MIGRATION_URL is for PostgreSQL only, and DATABASE_URL is SQLite:"
                " unset DATABASE_MIGRATION_URL, or set DATABASE_URL to the PostgreSQL database"
            )
        return self

    @model_validator(mode="after")
    def _hide_passwords(self) -> Self:
        """Loading the settings registers the database passwords: from now on no log line carries them.

        asyncpg, tortoise or a wrapped exception may quote a connection string; the URLs themselves are
        shown only through `shown_url`.
        """
        for url in (self.database_url, self.database_migration_url):
            for secret in database_secrets(url or ""):
                # one shorter than MIN_SECRET would blank out common words (as for NATS passwords)
                if len(secret) >= MIN_SECRET:
                    register_secret(secret)
        return self

    @property
    def needs_database_url(self) -> bool:
        """DATABASE_MIGRATION_URL without DATABASE_URL: enough to migrate, not to serve (the default is SQLite)."""
        return self.database_migration_url is not None and self.is_sqlite

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite://")

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.database_url.removeprefix("sqlite://")) if self.is_sqlite else None


def _check_postgres_url(value: str) -> str:
    """A PostgreSQL URL tortoise and asyncpg can use; the message never quotes it (it may hold a password)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a port that is not a number in 0-65535)
    except ValueError:
        raise ValueError("has a malformed host or port: postgres://user:pass@host:5432/db") from None
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError("must start with postgres:// or sqlite://")
    if not parts.path.strip("/"):
        raise ValueError("must name a database: postgres://user:pass@host:5432/db")
    return value


def database_secrets(url: str) -> list[str]:
    """The passwords in a database URL: in its user info, or as a `password` query parameter.

    `postgres://todos_app@host/db` has none: url_secrets would read a user without password as a
    token, which NATS URLs have and database URLs do not.
    """
    try:
        parts = urlsplit(url)
        secrets = url_secrets(url) if parts.password else []
    except ValueError:
        return []
    return secrets + parse_qs(parts.query).get("password", [])


def shown_url(url: str) -> str:
    """A database URL fit for a log line or a message: passwords hidden, the role name kept."""
    try:
        has_password = urlsplit(url).password is not None
    except ValueError:
        return "<unparsable URL>"
    return redact(redact_url(url) if has_password else url)
