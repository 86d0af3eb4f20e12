"""`python -m notifier`: one notifier replica (run as many as you like); see notifier.replica."""

from __future__ import annotations

import asyncio
import signal

import structlog

from notifier.replica import NoJetStreamError, run
from notifier.settings import Settings
from streams.connection import redact_url, url_secrets
from streams.logs import configure_logging, register_secret
from streams.runtime import loop_factory

log = structlog.get_logger("notifier")


async def _main(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    proxy = settings.telegram_proxy if settings.notifier_sink == "telegram" else None
    log.info(
        "notifier.starting",
        mode=settings.notifier_mode,
        sink=settings.notifier_sink,
        port=settings.notifier_port,
        proxy=redact_url(proxy) if proxy else None,
    )
    return await run(settings, stop)


def main() -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    register_secret(settings.token)
    for proxy in (settings.https_proxy, settings.http_proxy):  # a proxy's password, if its URL holds one
        for secret in url_secrets(proxy or ""):
            register_secret(secret)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            code = runner.run(_main(settings))
    except NoJetStreamError as error:
        raise SystemExit(str(error)) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
