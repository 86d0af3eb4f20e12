"""Settings of the `python -m streams` CLI: NATS only, and NATS_URL is required here."""

from __future__ import annotations

from pydantic import ValidationError, model_validator

from streams.connection import NatsSettings


def describe(error: ValidationError) -> str:
    """One line naming the variable(s) at fault: `NATS_URL: field required`."""
    parts = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "settings"
        parts.append(f"{name}: {item['msg']}")
    return "; ".join(parts)


class Settings(NatsSettings):
    """NATS settings with NATS_URL required."""

    @model_validator(mode="after")
    def _require_url(self) -> Settings:
        if self.nats_url is None:
            raise ValueError("NATS_URL is required, e.g. NATS_URL=nats://127.0.0.1:4222")
        return self

    @classmethod
    def from_env(cls) -> Settings:
        try:
            return cls()
        except ValidationError as error:
            raise SystemExit(f"configuration error: {describe(error)}") from None
