"""Where messages go: the Telegram Bot API (python-telegram-bot) or, with NOTIFIER_SINK=log, the log."""

from __future__ import annotations

from typing import Protocol

import structlog
from telegram import Bot, LinkPreviewOptions
from telegram.constants import ParseMode

from notifier.http import AiohttpRequest
from notifier.settings import ChatId, Settings

log = structlog.get_logger(__name__)
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
CONNECT_TIMEOUT = 5.0


class Sink(Protocol):
    """Sends one message to a chat; raises telegram.error.TelegramError subclasses on failure."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, chat_id: ChatId, text: str) -> None: ...

    async def probe(self, chat_id: ChatId) -> None:
        """Raise what `send` would raise if the bot cannot reach the chat at all (bad token, kicked)."""


class TelegramSink:
    """sendMessage with parse_mode=HTML and link previews off; explicit timeouts."""

    def __init__(self, settings: Settings) -> None:
        self._request = AiohttpRequest(
            pool_size=settings.notifier_concurrency,
            read_timeout=settings.telegram_timeout,
            connect_timeout=min(CONNECT_TIMEOUT, settings.telegram_timeout),
        )
        self._bot = Bot(
            settings.token,
            base_url=f"{settings.telegram_api_base_url}/bot",
            request=self._request,
            get_updates_request=AiohttpRequest(pool_size=1, read_timeout=30, connect_timeout=CONNECT_TIMEOUT),
        )

    async def start(self) -> None:
        # not bot.initialize(): it calls getMe, and a bad token must pause the replica, not crash it
        await self._request.initialize()

    async def stop(self) -> None:
        await self._request.shutdown()

    async def send(self, chat_id: ChatId, text: str) -> None:
        # Bot.send_message with the answer left raw: turning it into a full telegram.Message costs
        # about a third of a send's CPU, and only Telegram's "ok" matters here (PTB still maps errors).
        # Bot API method names are case-insensitive; the lowercase name keeps PTB from warning that
        # send_message exists.
        await self._bot.do_api_request(
            "sendmessage",
            api_kwargs={
                "chat_id": chat_id,
                "text": text,
                "parse_mode": ParseMode.HTML,
                "link_preview_options": _NO_PREVIEW,
            },
        )

    async def probe(self, chat_id: ChatId) -> None:
        # the raw answer: what matters is whether Telegram lets the bot see the chat, not its many fields
        await self._bot.do_api_request("getchat", api_kwargs={"chat_id": chat_id})


class LogSink:
    """Writes the message it would send to the log; always succeeds."""

    async def start(self) -> None:
        log.info("sink.log", detail="NOTIFIER_SINK=log: messages are logged, not sent")

    async def stop(self) -> None:
        return None

    async def send(self, chat_id: ChatId, text: str) -> None:
        log.info("telegram.would_send", chat_id=chat_id, text=text)

    async def probe(self, chat_id: ChatId) -> None:  # noqa: ARG002 (Sink's signature)
        return None


def make_sink(settings: Settings) -> Sink:
    return LogSink() if settings.notifier_sink == "log" else TelegramSink(settings)
