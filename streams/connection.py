"""Connecting to NATS the same way in every process: NATS_URL, NATS_CREDS, NATS_TLS_CA."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar, Self
from urllib.parse import unquote, urlsplit, urlunsplit

import structlog
from nats.aio.client import Client
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.logs import register_secret
from streams.permissions import inbox_prefix

log = structlog.get_logger(__name__)

Callback = Callable[[], Awaitable[None]]

# Notice a dead connection (server gone without a FIN/RST: half-open TCP, a silent network) in seconds.
# nats-py's defaults (a ping every 120 s, 2 outstanding) take up to 6 minutes. Its _ping_interval loop
# wakes every PING_INTERVAL s, counts one more outstanding ping (a PONG resets the count to 0) and declares
# the connection stale (disconnect, then reconnect) when the count exceeds MAX_OUTSTANDING_PINGS, before
# sending the next ping. So a server that stops answering is noticed after at most
# (MAX_OUTSTANDING_PINGS + 1) * PING_INTERVAL = 9 s, at least MAX_OUTSTANDING_PINGS * PING_INTERVAL = 6 s;
# a live server has MAX_OUTSTANDING_PINGS * PING_INTERVAL = 6 s to answer a ping.
PING_INTERVAL = 3
MAX_OUTSTANDING_PINGS = 2
MIN_SECRET = 4


class NatsSettings(BaseSettings):
    """How to reach NATS. `nats_url` is None only where NATS is optional (the API)."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    nats_url: str | None = Field(default=None, validation_alias="NATS_URL")
    nats_creds: Path | None = Field(default=None, validation_alias="NATS_CREDS")
    nats_tls_ca: Path | None = Field(default=None, validation_alias="NATS_TLS_CA")
    nats_stream_replicas: int = Field(default=1, ge=1, le=5, validation_alias="NATS_STREAM_REPLICAS")
    # TLS before the server's first word (nats-server `tls { handshake_first: true }`, 2.10.4+)
    nats_tls_handshake_first: bool = Field(default=False, validation_alias="NATS_TLS_HANDSHAKE_FIRST")

    @field_validator("nats_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        for number, url in enumerate(value.split(","), start=1):
            try:
                parts = urlsplit(url.strip())
                valid = parts.scheme in {"nats", "tls", "ws", "wss"} and bool(parts.hostname)
                parts.port  # noqa: B018 (raises on a port that is not a number in 0-65535)
            except ValueError:
                valid = False
            if not valid:
                # which one, never what it holds (it may carry a password)
                where = f" (server {number} of the list)" if "," in value else ""
                raise ValueError(f"must look like nats://host:4222 (schemes nats, tls, ws, wss){where}")
        return value.strip()

    @field_validator("nats_creds", "nats_tls_ca")
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value

    # names the program in the one-line error of from_env(), e.g. "notifier: TELEGRAM_CHAT_ID: ..."
    program: ClassVar[str] = ""

    @classmethod
    def from_env(cls) -> Self:
        """The settings, or SystemExit with one line naming the first bad variable."""
        try:
            return cls()
        except ValidationError as error:
            prefix = f"{cls.program}: " if cls.program else ""
            raise SystemExit(prefix + describe(error)) from None

    @property
    def servers(self) -> list[str]:
        return [url.strip() for url in (self.nats_url or "").split(",")]


def describe(error: ValidationError) -> str:
    """`TELEGRAM_CHAT_ID: field required`: the first error, named by its environment variable."""
    first = error.errors()[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {message}" if where else message


def server_info(nc: Client) -> dict[str, Any]:
    """The INFO the connected server sent (JetStream enabled, TLS required...); nats-py keeps it private."""
    return dict(getattr(nc, "_server_info", None) or {})


def redact_url(url: str) -> str:
    """The URL, or comma-separated list of URLs, with every password and token replaced, fit for logs.

    `nats://user:secret@host` keeps the user; `nats://TOKEN@host` (token auth) is all secret. The host
    and port are kept as written (an IPv6 host keeps its brackets), and a URL that does not parse is
    replaced whole rather than raising.
    """
    return ",".join(_redact_one(part.strip()) for part in url.split(","))


def _redact_one(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=f"{user + ':' if colon else ''}***@{hostport}"))


def url_secrets(url: str) -> list[str]:
    """The passwords and tokens in a URL or comma-separated list of URLs (to register for redaction)."""
    found = []
    for part in url.split(","):
        with contextlib.suppress(ValueError):
            userinfo, at, _ = urlsplit(part.strip()).netloc.rpartition("@")
            user, colon, password = userinfo.partition(":")
            raw = (password if colon else user) if at else ""
            # as written too: a library quoting the URL (aiohttp's proxy errors do) shows it percent-encoded
            found += [secret for secret in dict.fromkeys((unquote(raw), raw)) if secret]
    return found


class PlainTextRefusedError(ConnectionError):
    """A tls:// server that does not offer TLS: refused before CONNECT (and its credentials) is sent."""


class _Client(Client):
    """nats-py's client, with one more guard: for a `tls://` server it upgrades only when the server's INFO
    asks for TLS, and otherwise sends CONNECT (with the user's password or token) in clear text. Here a
    tls:// server whose INFO does not require TLS is refused right after INFO, before CONNECT, at the
    first connect and at every reconnect."""

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        server = self._current_server
        if (
            initial_connection
            and server is not None
            and server.uri.scheme == "tls"
            and not self.options.get("tls_handshake_first")
            and not info.get("tls_required")
        ):
            raise PlainTextRefusedError("NATS_URL says tls:// but the server did not negotiate TLS")
        await super()._process_info(info, initial_connection)


async def connect(  # noqa: C901, PLR0913 - keyword-only options of one call
    settings: NatsSettings,
    *,
    name: str,
    identity: str,
    on_disconnected: Callback | None = None,
    on_reconnected: Callback | None = None,
    connect_timeout: float = 2.0,
    allow_reconnect: bool = True,
    max_reconnect_attempts: int = -1,
) -> Client:
    """Connect with reconnects forever; every state change is logged.

    `identity` (streams.permissions: web, notifier, streams) names the inbox this process reads its
    replies on, `_INBOX.<identity>.`, the only one its NATS user may subscribe to."""

    async def disconnected() -> None:
        log.warning("nats.disconnected")
        if on_disconnected is not None:
            await on_disconnected()

    async def reconnected() -> None:
        log.info("nats.reconnected", server=redact_url(str(nc.connected_url.geturl())) if nc.connected_url else None)
        if on_reconnected is not None:
            await on_reconnected()

    refused: list[PlainTextRefusedError] = []

    async def error(exc: Exception) -> None:
        if isinstance(exc, PlainTextRefusedError):
            refused.append(exc)
        log.warning("nats.error", error=str(exc) or type(exc).__name__)

    async def closed() -> None:
        log.info("nats.closed")

    for secret in url_secrets(settings.nats_url or ""):
        # nats-py and its callers may quote a server URL in an error: never with its password or token
        # (a secret shorter than MIN_SECRET would blank out common words; the URLs themselves are redacted)
        if len(secret) >= MIN_SECRET:
            register_secret(secret)
    options: dict[str, Any] = {}
    if settings.nats_creds is not None:
        options["user_credentials"] = str(settings.nats_creds)
    if settings.nats_tls_ca is not None:
        options["tls"] = ssl.create_default_context(cafile=str(settings.nats_tls_ca))
    nc = _Client()
    try:
        await nc.connect(
            servers=settings.servers,
            name=name,
            inbox_prefix=inbox_prefix(identity),
            tls_handshake_first=settings.nats_tls_handshake_first,
            connect_timeout=connect_timeout,  # type: ignore[arg-type]  # nats-py types it int; it takes seconds
            allow_reconnect=allow_reconnect,
            max_reconnect_attempts=max_reconnect_attempts,
            reconnect_time_wait=0.5,  # type: ignore[arg-type]
            ping_interval=PING_INTERVAL,
            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
            closed_cb=closed,
            **options,
        )
    except BaseException as exc:
        # cancelled (SIGTERM, an app stopping) or failed half-way: nats-py leaves its socket open
        with contextlib.suppress(Exception):
            await nc.close()
        if refused and isinstance(exc, Exception):
            raise refused[-1] from None  # the reason, rather than nats-py's "no servers available"
        raise
    log.info("nats.connected", servers=[redact_url(url) for url in settings.servers], name=name)
    return nc
