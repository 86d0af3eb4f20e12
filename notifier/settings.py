"""The notifier's settings, read once from the environment at start."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal, Self
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from streams.connection import NatsSettings
from streams.logs import LogFormat

ChatId = int | str
_TOKEN = re.compile(r"\d+:[^\s:/]+")
_CHANNEL = re.compile(r"@[A-Za-z][A-Za-z0-9_]{3,}")
_RATE = re.compile(r"(\d+)\s*/\s*(\d+(?:\.\d+)?|\.\d+)?\s*(ms|s|m|min)?")
_DURATION = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|min|h)?")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_THREAD_ID = re.compile(r"\d{1,10}")
MAX_MESSAGE_ID = 2**31 - 1  # the Bot API's message and topic ids are 32-bit


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


def parse_duration(value: object) -> float:
    """Seconds from "300", "300s", "5m", "5min", "1.5h", "500ms" (a bare number is seconds); "off" or "0": 0."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower()
    if text in {"off", "none"}:
        return 0.0
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError('must be seconds or a duration such as "90s", "5m" or "1h" (units ms, s, m, h), or "off"')
    return float(match[1]) * _UNIT_SECONDS[match[2] or "s"]


DurationSetting = Annotated[float, BeforeValidator(parse_duration)]


def bypasses_proxy(url: str, no_proxy: str | None) -> bool:
    """Whether NO_PROXY names the host of `url`, as curl reads it: entries separated by commas (or spaces),
    `*` for every host, a name for itself and its subdomains (a leading dot is optional), an IP address for
    itself; `host:port` only on that port. No CIDR ranges."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for entry in re.split(r"[,\s]+", (no_proxy or "").strip().lower()):
        if entry == "*":
            return True
        if entry.startswith("["):  # [IPv6]:port
            name, _, entry_port = entry[1:].partition("]")
            entry_port = entry_port.removeprefix(":")
        elif entry.count(":") == 1:  # host:port (more colons: a bare IPv6 address)
            name, _, entry_port = entry.partition(":")
        else:
            name, entry_port = entry, ""
        name = name.lstrip(".")
        if entry_port and not entry_port.isdigit():
            continue
        if name and (host == name or host.endswith("." + name)) and (not entry_port or int(entry_port) == port):
            return True
    return False


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
    # a forum supergroup's topic to post in (message_thread_id); None: the chat itself (a forum's General topic)
    telegram_thread_id: int | None = Field(default=None, validation_alias="TELEGRAM_THREAD_ID")
    # messages arrive without a notification sound (disable_notification)
    telegram_silent: bool = Field(default=False, validation_alias="TELEGRAM_SILENT")
    # an update or deletion replies to the message that announced the todo (kept in the todos_replies bucket)
    telegram_replies: bool = Field(default=True, validation_alias="TELEGRAM_REPLIES")
    # an event sent this long after its change carries a line saying when the change happened (0: never)
    notifier_late_after: DurationSetting = Field(default=300.0, ge=0, validation_alias="NOTIFIER_LATE_AFTER")
    # the Bot API through a proxy (where Telegram is blocked): read here, once, and given to the HTTP client
    # explicitly (aiohttp ignores the environment unless told to). See `telegram_proxy`.
    https_proxy: str | None = Field(default=None, validation_alias="HTTPS_PROXY")
    http_proxy: str | None = Field(default=None, validation_alias="HTTP_PROXY")
    no_proxy: str | None = Field(default=None, validation_alias="NO_PROXY")
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

    @field_validator("telegram_thread_id", mode="before")
    @classmethod
    def _check_thread(cls, value: object) -> object:
        if value is None:
            return None
        text = str(value).strip()
        if not text:
            return None
        if isinstance(value, bool) or not _THREAD_ID.fullmatch(text) or not 0 < int(text) <= MAX_MESSAGE_ID:
            raise ValueError("must be a forum topic's id (its message_thread_id): a positive integer")
        return int(text)

    @field_validator("https_proxy", "http_proxy", "no_proxy", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value is None or not str(value).strip() else str(value).strip()

    @field_validator("https_proxy", "http_proxy")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            valid = parts.scheme in {"http", "https"} and bool(parts.hostname)
            parts.port  # noqa: B018 (raises on a port that is not a number in 0-65535)
        except ValueError:
            valid = False
        if not valid:  # never echo the value: it may hold the proxy's password
            raise ValueError("must be an http:// or https:// proxy URL such as http://proxy.example:3128 "
                             "(SOCKS proxies are not supported)")  # fmt: skip
        return value

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

    @property
    def telegram_proxy(self) -> str | None:
        """The proxy the Bot API is reached through, chosen as curl and httpx choose: HTTPS_PROXY for an
        https:// TELEGRAM_API_BASE_URL, HTTP_PROXY for http://; none when NO_PROXY names its host."""
        parts = urlsplit(self.telegram_api_base_url)
        proxy = self.https_proxy if parts.scheme == "https" else self.http_proxy
        return None if proxy is None or bypasses_proxy(self.telegram_api_base_url, self.no_proxy) else proxy
