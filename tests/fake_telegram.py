"""A fake Telegram Bot API server speaking the real wire format, for tests, chaos runs and benchmarks.

POST (form-encoded or JSON) to /bot<token>/<method>; answers {"ok": true, "result": ...} or
{"ok": false, "error_code": N, "description": ..., "parameters": {...}} with HTTP status N.
Implemented (method names case-insensitive): getMe, getChat, getChatMember, sendChatAction,
sendMessage (checks Telegram HTML and the 4096 limit after entity parsing). Faults are programmed on
`FakeTelegram` (429s, 500s, delays, chat errors, poison markers, migrations, the bot's membership and
rights per chat, whole-API outages); every request is recorded with its time. Rules that decide per
request live in `_refusal`, among them Telegram's rate limits when set (`chat_interval`, `group_limit`
per `group_window`, scaled down in time for tests): a sendMessage over them gets a 429 with retry_after.

Chat types follow the id as Telegram's do: "-100..." a supergroup, another negative id a group,
"@name" a channel, a positive id a private chat. Whether the bot may post in a chat is decided by
`_check_may_post` (sendMessage and sendChatAction alike): `revoke_rights` (the bot restricted, like an
admin taking its rights away), `member_status` (left, kicked, restricted) and `chat_can_send` (the
chat's default permissions). getChat does not look at any of them: like the real API, it succeeds for
a chat where the bot may not post; getChatMember tells.

In-process: `async with FakeTelegram(token) as fake: fake.base_url`. As a process:
`python -m tests.fake_telegram --port 8090 --token T`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from tests.services import LOCALHOST, free_port

MAX_TEXT = 4096
ALLOWED_TAGS = {
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
    "a", "tg-emoji", "code", "pre", "blockquote", "tg-time",
}  # fmt: skip
_TOKEN = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s[^<>]*)?)>|&(#\d+|#x[0-9a-fA-F]+|lt|gt|amp|quot);|([<>&])")
KICKED = "Forbidden: bot was kicked from the group chat"
CHAT_NOT_FOUND = "Bad Request: chat not found"
CANT_PARSE = "Bad Request: can't parse entities: unsupported start tag at byte offset 0"
CHAT_ID_EMPTY = "Bad Request: chat_id is empty"
INVALID_USER_ID = "Bad Request: invalid user_id specified"
WRONG_ACTION = "Bad Request: wrong parameter action in request"
NOT_ENOUGH_RIGHTS = "Bad Request: not enough rights to send text messages to the chat"
NEED_CHANNEL_ADMIN = "Bad Request: need administrator rights in the channel chat"
# what sendMessage to a supergroup answers when the bot was kicked / is not a member (see `kicked_from`)
BOT_KICKED = "Forbidden: bot was kicked from the supergroup chat"
BOT_NOT_MEMBER = "Forbidden: bot is not a member of the supergroup chat"
MEMBER_STATUSES = frozenset({"creator", "administrator", "member", "restricted", "left", "kicked"})
CHAT_ACTIONS = frozenset({
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
})  # fmt: skip
OUTAGE_DESCRIPTIONS = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
HOLD_CHECK = 0.05  # seconds between checks whether a request held by `outage_timeouts` was given up


class ParseError(ValueError):
    pass


def chat_type(chat_id: str) -> str:
    """The type Telegram gives the chat with this id: supergroup, group, channel or private."""
    if chat_id.startswith("@"):
        return "channel"
    if re.fullmatch(r"-100\d+", chat_id):
        return "supergroup"
    if re.fullmatch(r"-\d+", chat_id):
        return "group"
    if re.fullmatch(r"\d+", chat_id):
        return "private"
    return "supergroup"  # anything else (the fake used to call every chat a supergroup)


def kicked_from(chat_id: str) -> str:
    """What sendMessage answers (403) when the bot was kicked from the chat (blocked, in a private chat)."""
    kind = chat_type(chat_id)
    if kind == "private":
        return "Forbidden: bot was blocked by the user"
    return f"Forbidden: bot was kicked from the {kind} chat"


def not_member_of(chat_id: str) -> str:
    """What sendMessage answers (403) when the bot is not a member of the chat."""
    kind = chat_type(chat_id)
    if kind == "private":
        return "Forbidden: bot can't initiate conversation with a user"
    return f"Forbidden: bot is not a member of the {kind} chat"


def parse_html(text: str) -> str:
    """The text Telegram would show (tags removed, entities decoded); ParseError like Telegram's."""
    visible: list[str] = []
    stack: list[str] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        visible.append(text[pos : match.start()])
        pos = match.end()
        closing, tag, _attrs, entity, stray = match.groups()
        if stray:
            raise ParseError(f"can't parse entities: unexpected {stray!r} at offset {match.start()}")
        if entity:
            visible.append(html.unescape(f"&{entity};"))
            continue
        tag = tag.lower()
        if tag not in ALLOWED_TAGS:
            raise ParseError(f'can\'t parse entities: unsupported start tag "{tag}"')
        if closing:
            if not stack or stack.pop() != tag:
                raise ParseError(f'can\'t parse entities: unexpected end tag "{tag}"')
        else:
            stack.append(tag)
    visible.append(text[pos:])
    if stack:
        raise ParseError(f"can't parse entities: can't find end tag corresponding to start tag \"{stack[-1]}\"")
    return "".join(visible)


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Request:
    """One request the fake received."""

    at: float  # time.monotonic()
    method: str
    params: dict[str, Any]
    status: int = 200

    @property
    def chat_id(self) -> str:
        return str(self.params.get("chat_id", ""))


@dataclass
class Sent:
    """A message the fake accepted."""

    at: float
    chat_id: str
    text: str
    message_id: int


class TelegramError(Exception):
    def __init__(self, code: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters


@dataclass
class FakeTelegram:
    """The fake Bot API; set the public fields (or call the helpers) to inject faults."""

    token: str = "123456:TEST-token-abcdefghijklmnopqrstuvw"
    port: int = field(default_factory=free_port)
    # faults, consumed one per sendMessage
    fail_429: int = 0
    retry_after: int = 2
    fail_500: int = 0
    delay: float = 0.0  # seconds before answering any request
    slow_requests: int = 0  # the next N requests wait `slow_delay` before answering
    slow_delay: float = 0.0
    # chat id -> description; "chat not found" is a 400, "Forbidden: ..." a 403
    chat_errors: dict[str, str] = field(default_factory=dict)
    # sendMessage texts holding one of these markers get a 400 can't parse entities
    poison_markers: list[str] = field(default_factory=list)
    # old chat id -> new chat id (sendMessage to the old one answers migrate_to_chat_id)
    migrations: dict[str, int] = field(default_factory=dict)
    # Telegram's limits, off at 0: one message per chat every `chat_interval` s, at most `group_limit`
    # messages in any `group_window` s to a group (negative id) or channel (@name); over them: 429
    chat_interval: float = 0.0
    group_limit: int = 0
    group_window: float = 0.0
    rate_limited: int = 0  # 429s the limits answered (injected fail_429s not counted)
    # the bot's status per chat id (see MEMBER_STATUSES); absent: "administrator" ("member" in a private chat)
    member_status: dict[str, str] = field(default_factory=dict)
    # chat id -> the chat's default permission to send messages (groups and supergroups; absent: True)
    chat_can_send: dict[str, bool] = field(default_factory=dict)
    # chat id -> whether the bot, when its member_status there is "restricted", may still send (absent: False)
    restricted_can_send: dict[str, bool] = field(default_factory=dict)
    # chats where an admin took the bot's rights away (`revoke_rights`); wins over member_status
    revoked: set[str] = field(default_factory=set)
    # outage of the whole API: every request answers this status (502, 503 ...), nothing is accepted
    outage_status: int = 0
    outage_answers: int = 0  # requests answered with outage_status
    # blackholed network: every request is held unanswered until the client gives up (recorded as 499)
    outage_timeouts: bool = False
    requests: list[Request] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._next_id = 1
        self._accepted: dict[str, list[float]] = {}  # chat id -> times of the messages accepted

    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def sent_to(self, chat_id: int | str) -> list[Sent]:
        return [message for message in self.sent if message.chat_id == str(chat_id)]

    def revoke_rights(self, chat_id: int | str) -> None:
        """The bot stays in the chat but may not post (restricted): getChat still succeeds."""
        self.revoked.add(str(chat_id))

    def restore_rights(self, chat_id: int | str) -> None:
        self.revoked.discard(str(chat_id))

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        return app

    async def start(self) -> Self:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOCALHOST, self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        params = await _params(request)
        record = Request(time.monotonic(), request.match_info["method"], params)
        self.requests.append(record)
        if self.outage_timeouts and not await self._held(request):
            record.status = 499  # the client gave up: nothing is delivered
            return web.Response(status=499)
        if self.outage_status:
            self.outage_answers += 1
            status = self.outage_status
            description = OUTAGE_DESCRIPTIONS.get(status, "Service Unavailable")
            return self._error(record, TelegramError(status, description))
        delay = self.delay
        if self.slow_requests > 0:
            self.slow_requests -= 1
            delay += self.slow_delay
        if delay:
            await asyncio.sleep(delay)
            if request.transport is None or request.transport.is_closing():
                record.status = 499  # the client gave up (timeout, killed): nothing is delivered
                return web.Response(status=499)
        try:
            result = self._call(request.match_info["token"], record.method, params)
        except TelegramError as error:
            return self._error(record, error)
        return web.json_response({"ok": True, "result": result})

    async def _held(self, request: web.Request) -> bool:
        """Hold the request while `outage_timeouts` is set; False if the client gave up meanwhile.

        Lifting the outage lets a held request through (TCP retransmits it once the network is back).
        """
        while self.outage_timeouts:
            if request.transport is None or request.transport.is_closing():
                return False
            await asyncio.sleep(HOLD_CHECK)
        return True

    @staticmethod
    def _error(record: Request, error: TelegramError) -> web.Response:
        record.status = error.code
        body: dict[str, Any] = {"ok": False, "error_code": error.code, "description": error.description}
        if error.parameters:
            body["parameters"] = error.parameters
        return web.json_response(body, status=error.code)

    def _call(self, token: str, method: str, params: dict[str, Any]) -> Any:
        if token != self.token:
            raise TelegramError(401, "Unauthorized")
        match method.lower():
            case "getme":
                return {
                    "id": int(self.token.split(":")[0]),
                    "is_bot": True,
                    "first_name": "Fake",
                    "username": "fake_bot",
                }
            case "getchat":
                return self._get_chat(self._chat(params))
            case "getchatmember":
                chat_id = self._chat_id(params)
                user_id = _user_id(params)
                self._check_chat_error(chat_id)
                return self._chat_member(chat_id, user_id)
            case "sendchataction":
                chat_id = self._chat_id(params)
                if params.get("action") not in CHAT_ACTIONS:
                    raise TelegramError(400, WRONG_ACTION)
                self._check_chat_error(chat_id)
                self._check_migrated(chat_id)
                self._check_may_post(chat_id)
                return True
            case "sendmessage":
                return self._send_message(params)
        raise TelegramError(404, "Not Found: method not found")

    def _chat(self, params: dict[str, Any]) -> str:
        chat_id = self._chat_id(params)
        self._check_chat_error(chat_id)
        return chat_id

    @staticmethod
    def _chat_id(params: dict[str, Any]) -> str:
        chat_id = str(params.get("chat_id", "")).strip()
        if not chat_id:
            raise TelegramError(400, CHAT_ID_EMPTY)
        return chat_id

    def _check_chat_error(self, chat_id: str) -> None:
        if chat_id in self.chat_errors:
            description = self.chat_errors[chat_id]
            raise TelegramError(403 if description.startswith("Forbidden") else 400, description)

    def _check_migrated(self, chat_id: str) -> None:
        if chat_id in self.migrations:
            raise TelegramError(400, "Bad Request: group chat was upgraded to a supergroup chat",
                                migrate_to_chat_id=self.migrations[chat_id])  # fmt: skip

    def _status(self, chat_id: str) -> str:
        """The bot's member status in the chat, as getChatMember answers it."""
        if chat_id in self.revoked:
            return "restricted"
        default = "member" if chat_type(chat_id) == "private" else "administrator"
        status = self.member_status.get(chat_id, default)
        if status not in MEMBER_STATUSES:
            raise ValueError(f"member_status[{chat_id!r}] = {status!r}: not one of {sorted(MEMBER_STATUSES)}")
        return status

    def _own_send_right(self, chat_id: str) -> bool:
        """A restricted bot's own right to send text (the chat's default permissions apply on top)."""
        return chat_id not in self.revoked and self.restricted_can_send.get(chat_id, False)

    def _check_may_post(self, chat_id: str) -> None:
        """Raise what sendMessage answers when the bot may not post in the chat at all."""
        if chat_id in self.revoked:
            raise TelegramError(400, NOT_ENOUGH_RIGHTS)
        status = self._status(chat_id)
        kind = chat_type(chat_id)
        chat_allows = kind in ("private", "channel") or self.chat_can_send.get(chat_id, True)
        if status == "kicked":
            raise TelegramError(403, kicked_from(chat_id))
        if status == "left":
            raise TelegramError(403, not_member_of(chat_id))
        if kind == "channel" and status in ("member", "restricted"):
            raise TelegramError(400, NEED_CHANNEL_ADMIN)
        if status == "restricted" and not (self._own_send_right(chat_id) and chat_allows):
            raise TelegramError(400, NOT_ENOUGH_RIGHTS)
        if status == "member" and not chat_allows:
            raise TelegramError(400, NOT_ENOUGH_RIGHTS)

    def _get_chat(self, chat_id: str) -> dict[str, Any]:
        kind = chat_type(chat_id)
        chat: dict[str, Any] = {"id": _chat_number(chat_id), "type": kind}
        if kind == "private":
            chat["first_name"] = "Todos"
        else:
            chat["title"] = "Todos"
        if kind == "channel":
            chat["username"] = chat_id.removeprefix("@")
        chat.update({"accent_color_id": 0, "max_reaction_count": 11,
                     "accepted_gift_types": {"unlimited_gifts": False, "limited_gifts": False,
                                             "unique_gifts": False, "premium_subscription": False,
                                             "gifts_from_channels": False}})  # fmt: skip
        if kind in ("group", "supergroup"):
            chat["permissions"] = _permissions(self.chat_can_send.get(chat_id, True))
        return chat

    def _chat_member(self, chat_id: str, user_id: int) -> dict[str, Any]:
        user = {"id": user_id, "is_bot": True, "first_name": "Fake", "username": "fake_bot"}
        status = self._status(chat_id)
        member: dict[str, Any] = {"status": status, "user": user}
        kind = chat_type(chat_id)
        match status:
            case "creator":
                member["is_anonymous"] = False
            case "administrator":
                member.update({
                    "can_be_edited": False, "is_anonymous": False, "can_manage_chat": True,
                    "can_delete_messages": True, "can_manage_video_chats": True, "can_restrict_members": True,
                    "can_promote_members": False, "can_change_info": True, "can_invite_users": True,
                    "can_post_stories": True, "can_edit_stories": True, "can_delete_stories": True,
                })  # fmt: skip
                if kind == "channel":  # as the real API: the channel-only rights in channels only
                    member.update({"can_post_messages": True, "can_edit_messages": True,
                                   "can_manage_direct_messages": False})  # fmt: skip
                else:
                    member.update({"can_pin_messages": True, "can_manage_topics": False})
            case "restricted":
                member.update({"is_member": True, **_permissions(self._own_send_right(chat_id)), "until_date": 0})
            case "kicked":
                member["until_date"] = 0
        return member

    def _refusal(self, chat_id: str, text: str) -> None:
        """Faults and limits that refuse a sendMessage before it is accepted (a rate limiter goes here)."""
        self._check_migrated(chat_id)
        self._check_may_post(chat_id)
        if self.fail_429 > 0:
            self.fail_429 -= 1
            raise TelegramError(429, f"Too Many Requests: retry after {self.retry_after}", retry_after=self.retry_after)
        if self.fail_500 > 0:
            self.fail_500 -= 1
            raise TelegramError(500, "Internal Server Error")
        if (wait := self._over_limit(chat_id, time.monotonic())) > 0:
            self.rate_limited += 1
            retry_after = max(1, math.ceil(wait))  # Telegram answers whole seconds
            raise TelegramError(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)
        if any(marker in text for marker in self.poison_markers):
            raise TelegramError(400, CANT_PARSE)

    def _over_limit(self, chat_id: str, now: float) -> float:
        """Seconds until a message to the chat would be within its limits (0: it is now)."""
        times = self._accepted.get(chat_id, [])
        wait = 0.0
        if self.chat_interval and times:
            wait = times[-1] + self.chat_interval - now
        if self.group_limit and (chat_id.startswith(("-", "@"))):
            recent = [at for at in times if at > now - self.group_window]
            if len(recent) >= self.group_limit:
                wait = max(wait, recent[-self.group_limit] + self.group_window - now)
        return wait

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = self._chat(params)
        text = str(params.get("text", ""))
        if not text.strip():
            raise TelegramError(400, "Bad Request: message text is empty")
        self._refusal(chat_id, text)
        parse_mode = params.get("parse_mode")
        if parse_mode not in (None, "HTML"):
            raise TelegramError(400, f"Bad Request: unsupported parse_mode {parse_mode}")
        visible = text
        if parse_mode == "HTML":
            try:
                visible = parse_html(text)
            except ParseError as error:
                raise TelegramError(400, f"Bad Request: {error}") from None
        if utf16_length(visible) > MAX_TEXT:
            raise TelegramError(400, "Bad Request: message is too long")
        message_id, self._next_id = self._next_id, self._next_id + 1
        now = time.time()
        at = time.monotonic()
        self.sent.append(Sent(at, chat_id, text, message_id))
        accepted = self._accepted.setdefault(chat_id, [])
        accepted.append(at)
        del accepted[: -max(1, self.group_limit)]  # all that the limits look at
        return {
            "message_id": message_id,
            "date": int(now),
            "chat": {"id": _chat_number(chat_id), "type": chat_type(chat_id)},
            "text": visible,
        }


def _chat_number(chat_id: str) -> int | str:
    return int(chat_id) if re.fullmatch(r"-?\d+", chat_id) else chat_id


def _user_id(params: dict[str, Any]) -> int:
    value = params.get("user_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    raise TelegramError(400, INVALID_USER_ID)


def _permissions(can_send: bool) -> dict[str, bool]:
    """ChatPermissions (and a restricted member's rights): sending as `can_send`, managing the chat off."""
    sending = ("can_send_messages", "can_send_audios", "can_send_documents", "can_send_photos",
               "can_send_videos", "can_send_video_notes", "can_send_voice_notes", "can_send_polls",
               "can_send_other_messages", "can_add_web_page_previews", "can_react_to_messages")  # fmt: skip
    managing = ("can_change_info", "can_invite_users", "can_pin_messages", "can_manage_topics", "can_edit_tag")
    return {**dict.fromkeys(sending, can_send), **dict.fromkeys(managing, False)}


async def _params(request: web.Request) -> dict[str, Any]:
    if request.content_type == "application/json":
        body = await request.json()
        return dict(body) if isinstance(body, dict) else {}
    form = await request.post()
    params: dict[str, Any] = {key: value for key, value in form.items() if isinstance(value, str)}
    # PTB JSON-encodes nested values (link_preview_options, reply_markup ...)
    for key, value in list(params.items()):
        if value.startswith(("{", "[")):
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    params.update({key: value for key, value in request.query.items() if key not in params})
    return params


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeTelegram(token=args.token, port=args.port, delay=args.delay)
    async with fake:
        print(f"fake telegram on {fake.base_url}", flush=True)
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--token", default=FakeTelegram.token)
    parser.add_argument("--delay", type=float, default=0.0)
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
