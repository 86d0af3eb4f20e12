"""Settings of the `python -m streams` CLI: NATS only, and NATS_URL is required here."""

from __future__ import annotations

from typing import ClassVar

from pydantic import model_validator

from streams.connection import NatsSettings


class Settings(NatsSettings):
    """NATS settings with NATS_URL required."""

    program: ClassVar[str] = "streams"

    @model_validator(mode="after")
    def _require_url(self) -> Settings:
        if self.nats_url is None:
            raise ValueError("NATS_URL is required, e.g. NATS_URL=nats://127.0.0.1:4222")
        return self
