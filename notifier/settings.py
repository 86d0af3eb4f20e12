"""The notifier's settings, read once from the environment at start."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Self

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from streams.connection import NatsSettings
from streams.logs import LogFormat

ChatId = int | str
_TOKEN = re.compile(r"\d+:[^\s:/]+")
_CHANNEL = re.compile(r"@[A-Za-z][A-Za-z0-9_]{3,}")
_RATE = re.compile(r"(\d+)\s*/\s*(\d+(?:\.\d+)?|\.\d+)?\s*(ms|s|m|min)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0}


@dataclass(frozen=True)
class Rate:
    """At most `count` messages in any `period` seconds."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"


def parse_rate(value: object) -> Rate | None:
    """ "20/60s", "1/1s", "1/s", "30/1m", "1/150ms"; "off" or "0" for no limit."""
    if value is None or isinstance(value, Rate):
        return value
    text = str(value).strip().lower()
    if text in {"off", "0", "none", ""}:
        return None
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError('must be like "20/60s" (messages per period; units ms, s, m) or "off"')
    count, amount, unit = int(match[1]), float(match[2] or 1), _UNIT_SECONDS[match[3] or "s"]
    if count == 0:
        return None
    if amount * unit <= 0:
        raise ValueError("the period must be longer than 0")
    return Rate(count, amount * unit)


RateSetting = Annotated[Rate | None, BeforeValidator(parse_rate)]


class Settings(NatsSettings):
    """Everything `python -m notifier` needs; Telegram settings are optional only with the log sink."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")
    program: ClassVar[str] = "notifier"

    telegram_access_token: SecretStr | None = Field(default=None, validation_alias="TELEGRAM_ACCESS_TOKEN")
    telegram_chat_id: ChatId | None = Field(default=None, validation_alias="TELEGRAM_CHAT_ID")
    telegram_api_base_url: str = Field(default="https://api.telegram.org", validation_alias="TELEGRAM_API_BASE_URL")
    # read timeout of one Bot API call; tests lower it to exercise TimedOut
    telegram_timeout: float = Field(default=10.0, gt=0, validation_alias="TELEGRAM_TIMEOUT")
    notifier_port: int = Field(default=8081, ge=0, le=65535, validation_alias="NOTIFIER_PORT")
    # address of /healthz, /readyz and /metrics: every interface in a pod (probes come from the kubelet)
    notifier_host: str = Field(default="0.0.0.0", validation_alias="NOTIFIER_HOST")  # noqa: S104
    notifier_sink: Literal["telegram", "log"] = Field(default="telegram", validation_alias="NOTIFIER_SINK")
    notifier_mode: Literal["jetstream", "core"] = Field(default="jetstream", validation_alias="NOTIFIER_MODE")
    # events sent at the same time by one replica
    notifier_concurrency: int = Field(default=64, ge=1, le=1000, validation_alias="NOTIFIER_CONCURRENCY")
    # while the bot cannot reach its chat (kicked, chat not found, bad token): seconds between probes
    notifier_probe_interval: float = Field(default=30.0, gt=0, validation_alias="NOTIFIER_PROBE_INTERVAL")
    # longest delay between two tries of an event Telegram failed with a transient error (5xx, timeout)
    notifier_retry_max_delay: float = Field(default=60.0, gt=0, validation_alias="NOTIFIER_RETRY_MAX_DELAY")
    # Telegram's limits (FAQ): about 1 message/s per chat, 20 messages/min per group or channel.
    # Every replica paces its sends through shared state, so together they stay under them.
    telegram_chat_rate: RateSetting = Field(default=Rate(1, 1.0), validation_alias="TELEGRAM_CHAT_RATE")
    telegram_group_rate: RateSetting = Field(default=Rate(20, 60.0), validation_alias="TELEGRAM_GROUP_RATE")
    # when a paced chat's backlog builds up, up to this many events share one message (1: one per event)
    notifier_max_events_per_message: int = Field(
        default=20, ge=1, le=100, validation_alias="NOTIFIER_MAX_EVENTS_PER_MESSAGE"
    )
    log_level: str = Field(default="info", validation_alias="LOG_LEVEL")
    log_format: LogFormat | None = Field(default=None, validation_alias="LOG_FORMAT")

    @field_validator("telegram_chat_id", mode="before")
    @classmethod
    def _check_chat(cls, value: object) -> object:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip()
        if not text:
            return None
        if re.fullmatch(r"-?\d+", text):
            return int(text)
        if _CHANNEL.fullmatch(text):
            return text
        raise ValueError("must be a numeric chat id (e.g. -1001234567890) or @channelname")

    @field_validator("telegram_api_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        if not re.match(r"https?://[^/\s]+", value):
            raise ValueError("must be an http(s) URL such as https://api.telegram.org")
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return value.lower()

    @model_validator(mode="after")
    def _check_required(self) -> Self:
        if self.nats_url is None:
            raise ValueError("NATS_URL: field required (e.g. nats://127.0.0.1:4222)")
        if self.notifier_sink == "telegram":
            if self.telegram_access_token is None or not self.telegram_access_token.get_secret_value():
                raise ValueError("TELEGRAM_ACCESS_TOKEN: field required (or set NOTIFIER_SINK=log)")
            if not _TOKEN.fullmatch(self.telegram_access_token.get_secret_value()):
                # the number before ':' is the bot's id, which the probe needs; the message never shows the token
                raise ValueError("TELEGRAM_ACCESS_TOKEN: must look like 123456789:AA... (the token @BotFather gave)")
            if self.telegram_chat_id is None:
                raise ValueError("TELEGRAM_CHAT_ID: field required (or set NOTIFIER_SINK=log)")
        return self

    @property
    def token(self) -> str:
        return self.telegram_access_token.get_secret_value() if self.telegram_access_token else ""
