"""Secrets never reach a log line, whatever the format and wherever they hide."""

from __future__ import annotations

import logging

import pytest
import structlog

from streams.logs import configure_logging, register_secret

TOKEN = "8123456789:AAE-abcdefghijklmnopqrstuvwxyz0123456"


def _fail(url: str = f"https://api.telegram.org/bot{TOKEN}/sendMessage") -> None:
    raise ValueError(f"could not reach {url}")


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_token_is_redacted_from_messages_fields_and_tracebacks(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """structlog fields, stdlib records (httpx logs URLs) and tracebacks with frame locals: no token."""
    configure_logging("debug", fmt)  # type: ignore[arg-type]
    register_secret(TOKEN)
    log = structlog.get_logger("test")
    log.info("sending", url=f"https://api.telegram.org/bot{TOKEN}/getMe")
    logging.getLogger("httpx").warning("HTTP Request: POST https://api.telegram.org/bot%s/sendMessage", TOKEN)
    try:
        _fail()
    except ValueError:
        log.exception("send.failed")
    out = capsys.readouterr().err

    assert "sending" in out
    assert "send.failed" in out
    assert "ValueError" in out
    assert TOKEN not in out
    assert TOKEN[:30] not in out
    assert "[REDACTED]" in out
