"""structlog set up once per process: JSON (or console) lines, secrets redacted everywhere."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "console"]

_secrets: set[str] = set()
REDACTED = "[REDACTED]"


_pattern: re.Pattern[str] | None = None


def register_secret(secret: str) -> None:
    """Never let `secret` reach a log line, from structlog or from any stdlib logger (httpx...).

    Matched in any letter case: python-telegram-bot capitalizes error descriptions (str.capitalize()
    lowercases the rest), so a token quoted by Telegram comes back lowercased.
    """
    global _pattern  # noqa: PLW0603 (one registry per process)
    if secret:
        _secrets.add(secret)
        alternatives = "|".join(re.escape(known) for known in sorted(_secrets, key=len, reverse=True))
        _pattern = re.compile(alternatives, re.IGNORECASE)


def redact(text: str) -> str:
    return _pattern.sub(REDACTED, text) if _pattern is not None else text


def _holds_secret(text: str) -> bool:
    return _pattern is not None and _pattern.search(text) is not None


def _redact_event(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if not _secrets:
        return event_dict
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = redact(value)
        elif value is not None and not isinstance(value, int | float | bool):
            redacted = redact(repr(value) if not isinstance(value, BaseException) else str(value))
            if _holds_secret(repr(value)) or _holds_secret(str(value)):
                event_dict[key] = redacted
    return event_dict


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # structlog's records carry their event dict as msg: _redact_event handles those
        if _secrets and not isinstance(record.msg, dict):
            record.msg = redact(record.getMessage())
            record.args = None
        return True


class _RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """Last line of defence: the rendered line itself (tracebacks included) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


BODY = "body"  # a field printed, in console logs, on the lines below its log line (a message to read)


class _WithBody:
    """The console renderer, then the `body` field, if any, on its own lines below the line (indented),
    so a multi-line text reads as it is instead of as one escaped string."""

    def __init__(self, renderer: structlog.dev.ConsoleRenderer) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        body = event_dict.pop(BODY, None)
        line = self._renderer(logger, name, event_dict)
        if body is None:
            return line
        return line + "".join(f"\n    {part}" for part in str(body).splitlines())


def default_format() -> LogFormat:
    return "console" if sys.stderr.isatty() else "json"


def configure_logging(level: str = "info", fmt: LogFormat | None = None) -> None:
    """Route structlog and stdlib logging to stderr as one JSON object per line."""
    fmt = fmt or default_format()
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_event,
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        )
    else:
        # rich's traceback panel shows frame locals by default, cut to 80 characters: a cut token
        # would slip past redaction, so no locals in console tracebacks either
        renderer = _WithBody(
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False))
        )
    structlog.configure(
        # a line below the level is dropped before any processor runs (the access log costs nothing then)
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter())
    handler.setFormatter(
        _RedactingFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _redact_event, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # httpx logs every request URL at INFO, and Telegram URLs hold the bot token
    for noisy in ("httpx", "httpcore", "telegram", "aiosqlite", "asyncio", "tortoise"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
