"""Where messages go: the Telegram Bot API (python-telegram-bot) or, with NOTIFIER_SINK=log, the log.

Every message goes to the chat (TELEGRAM_CHAT_ID), into its forum topic when TELEGRAM_THREAD_ID is set
(`message_thread_id`), silently with TELEGRAM_SILENT (`disable_notification`), and as a reply when the
pipeline names the message to reply to (`reply_parameters` with `allow_sending_without_reply`: a
deleted announcement must not fail the send). `send` returns the new message's id.

`probe` asks Telegram whether the bot may post to the chat now, without posting: getChat succeeds
for a chat where the bot may not post (muted, restricted, not an admin of a channel), so the probe
reads the bot's own membership (getChatMember) and the chat's default permissions. A private chat has
no membership to read: there the probe is sendChatAction, which fails exactly as sendMessage would
(blocked by the user) and otherwise shows "typing" for a moment. No Bot API method reads a forum
topic, so a topic that was closed or deleted is found by a send, which pauses again (see
notifier.pipeline `_probe_forever`).

The log sink writes the message as a person would read it in Telegram (tags gone, entities unescaped,
on its own lines) when the log is for people (LOG_FORMAT=console), and as the HTML text, one field of
one line, when it is JSON.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import structlog
from telegram import Bot, LinkPreviewOptions
from telegram.constants import ParseMode
from telegram.error import BadRequest

from notifier.formatting import visible_text
from notifier.settings import ChatId, Settings
from notifier.transport import AiohttpRequest
from streams.logs import default_format

log = structlog.get_logger(__name__)
# already JSON: PTB passes a string through, where a LinkPreviewOptions would be turned into a dict and dumped
_NO_PREVIEW = json.dumps(LinkPreviewOptions(is_disabled=True).to_dict())
CONNECT_TIMEOUT = 5.0


class Sink(Protocol):
    """Sends one message to a chat; raises telegram.error.TelegramError subclasses on failure."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, chat_id: ChatId, text: str, *, reply_to: int | None = None) -> int | None:
        """Send; the new message's id (None where there is no message, as in the log)."""
        ...

    async def probe(self, chat_id: ChatId) -> None:
        """Raise what `send` would raise if the bot cannot post to the chat (bad token, kicked, no rights)."""


class NoRightToPostError(BadRequest):
    """The probe found the bot in the chat without the right to post (a bot-level BadRequest)."""


def may_post(chat: dict[str, Any], member: dict[str, Any]) -> str | None:  # noqa: PLR0911 (one return per rule)
    """None if a bot with this membership may post to this chat; else why not (Telegram's own words)."""
    status = member.get("status")
    kind = chat.get("type")
    if status in {"left", "kicked"}:
        return f"bot is not a member of the chat (status {status})"
    if kind == "channel":
        if status == "creator" or (status == "administrator" and member.get("can_post_messages", False)):
            return None
        return "not enough rights to post in the channel (need administrator rights with can_post_messages)"
    if status in {"creator", "administrator"}:
        return None
    if status == "restricted" and not (member.get("is_member", False) and member.get("can_send_messages", False)):
        return "not enough rights to send text messages to the chat (bot restricted)"
    if status in {"member", "restricted"} and not (chat.get("permissions") or {}).get("can_send_messages", True):
        return "not enough rights to send text messages to the chat (members may not send)"
    return None


class TelegramSink:
    """sendMessage with parse_mode=HTML and link previews off; explicit timeouts."""

    def __init__(self, settings: Settings) -> None:
        proxy = settings.telegram_proxy
        self._request = AiohttpRequest(
            pool_size=settings.notifier_concurrency,
            read_timeout=settings.telegram_timeout,
            connect_timeout=min(CONNECT_TIMEOUT, settings.telegram_timeout),
            proxy=proxy,
        )
        self._bot = Bot(
            settings.token,
            base_url=f"{settings.telegram_api_base_url}/bot",
            request=self._request,
            get_updates_request=AiohttpRequest(
                pool_size=1, read_timeout=30, connect_timeout=CONNECT_TIMEOUT, proxy=proxy
            ),
        )
        # a token is "<bot id>:<secret>": the id is needed to read the bot's own membership
        self._bot_id = int(settings.token.split(":", 1)[0]) if settings.token.split(":", 1)[0].isdigit() else 0
        # the same for every message: the topic, and no notification sound
        self._options: dict[str, object] = {}
        if settings.telegram_thread_id is not None:
            self._options["message_thread_id"] = settings.telegram_thread_id
        if settings.telegram_silent:
            self._options["disable_notification"] = True

    async def start(self) -> None:
        # not bot.initialize(): it calls getMe, and a bad token must pause the replica, not crash it
        await self._request.initialize()

    async def stop(self) -> None:
        await self._request.shutdown()

    async def send(self, chat_id: ChatId, text: str, *, reply_to: int | None = None) -> int | None:
        # Bot.send_message with the answer left raw: turning it into a full telegram.Message costs
        # about a third of a send's CPU, and only Telegram's "ok" and the message id matter here (PTB
        # still maps errors). Bot API method names are case-insensitive; the lowercase name keeps PTB
        # from warning that send_message exists.
        api_kwargs: dict[str, object] = {
            "chat_id": chat_id,
            "text": text,
            "parse_mode": ParseMode.HTML,
            "link_preview_options": _NO_PREVIEW,
            **self._options,
        }
        if reply_to is not None:
            # already JSON, as link_preview_options; the announcement may have been deleted since: send anyway
            api_kwargs["reply_parameters"] = json.dumps({"message_id": reply_to, "allow_sending_without_reply": True})
        answer = await self._bot.do_api_request("sendmessage", api_kwargs=api_kwargs)
        message_id = answer.get("message_id") if isinstance(answer, dict) else None
        return message_id if isinstance(message_id, int) else None

    async def probe(self, chat_id: ChatId) -> None:
        # raw answers: only a few fields matter, and PTB's full objects cost a lot to build
        if isinstance(chat_id, int) and chat_id > 0:
            await self._bot.do_api_request("sendchataction", api_kwargs={"chat_id": chat_id, "action": "typing"})
            return
        chat = await self._bot.do_api_request("getchat", api_kwargs={"chat_id": chat_id})
        member = await self._bot.do_api_request(
            "getchatmember", api_kwargs={"chat_id": chat_id, "user_id": self._bot_id}
        )
        why_not = may_post(chat if isinstance(chat, dict) else {}, member if isinstance(member, dict) else {})
        if why_not is not None:
            raise NoRightToPostError(why_not)


class LogSink:
    """Writes the message it would send to the log; always succeeds.

    `readable`: as Telegram would show it, below the log line (streams.logs prints a `body` field on the
    lines that follow in console logs); otherwise the HTML text as the field `text` of one line.
    """

    def __init__(self, *, readable: bool = False) -> None:
        self._readable = readable

    async def start(self) -> None:
        log.info("sink.log", detail="NOTIFIER_SINK=log: messages are logged, not sent")

    async def stop(self) -> None:
        return None

    async def send(self, chat_id: ChatId, text: str, *, reply_to: int | None = None) -> int | None:  # noqa: ARG002
        if self._readable:
            log.info("telegram.would_send", chat_id=chat_id, body=visible_text(text))
        else:
            log.info("telegram.would_send", chat_id=chat_id, text=text)
        return None

    async def probe(self, chat_id: ChatId) -> None:  # noqa: ARG002 (Sink's signature)
        return None


def make_sink(settings: Settings) -> Sink:
    if settings.notifier_sink == "log":
        # the format streams.logs.configure_logging chose for this process: console is for people
        return LogSink(readable=(settings.log_format or default_format()) == "console")
    return TelegramSink(settings)
