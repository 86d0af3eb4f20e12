"""A fake Telegram Bot API server speaking the real wire format, for tests, chaos runs and benchmarks.

POST (form-encoded or JSON) to /bot<token>/<method>; answers {"ok": true, "result": ...} or
{"ok": false, "error_code": N, "description": ..., "parameters": {...}} with HTTP status N. Both body
shapes give the same parameters (a JSON body that is not an object: 400, as Telegram answers).
Implemented (method names case-insensitive): getMe, getChat, getChatMember, sendChatAction,
sendMessage (parse_mode case-insensitive; HTML checked by Telegram's rules in `parse_html`; the 4096
limit counted in UTF-16 code units after entity parsing; a forum topic, a reply and a silent message
read as the Bot API reads them, in `_message_options`). Faults are programmed on `FakeTelegram`
(429s, 500s, delays, chat errors, poison markers, migrations, the bot's membership and rights per chat,
whole-API outages); every request is recorded with its time. Rules that decide per request live in
`_refusal`, among them Telegram's rate limits when set (`chat_interval`, `group_limit` per
`group_window`, scaled down in time for tests): a sendMessage over them gets a 429 with retry_after.

A request whose client gave up (timeout, killed) while it was delayed is still executed, as Telegram
does with a request that reached it: the message is posted, its `Sent.answer_lost` is True and the
request is recorded with status 499. Only `outage_timeouts` (the network down: the request never
reached Telegram) delivers nothing.

Chat types follow the id as Telegram's do: "-100..." a supergroup, another negative id a group,
"@name" a channel (answered with a stable "-100..." id), a positive id a private chat. Whether the
bot may post in a chat is decided by `_check_may_post` (sendMessage and sendChatAction alike):
`revoke_rights` (the bot restricted, like an admin taking its rights away), `member_status` (left,
kicked, restricted) and `chat_can_send` (the chat's default permissions). getChat does not look at
any of them: like the real API, it succeeds for a chat where the bot may not post; getChatMember tells.

Forum topics: a chat listed in `forums` is a forum supergroup with those topics (`open_topic`,
`close_topic`, `delete_topic`); a message into a topic it does not have, or into any topic of a chat
that is not a forum, answers "message thread not found", into a closed one "TOPIC_CLOSED" (the bot,
an administrator without can_manage_topics, may not post there). `delete_message` takes a message
away, so a reply to it finds nothing.

In-process: `async with FakeTelegram(token) as fake: fake.base_url` (a free port, read back once
listening). As a process: `python -m tests.fake_telegram --port 8090 --token T`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import string
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from tests.services import LOCALHOST

MAX_TEXT = 4096
SUPPORTED_TAGS = frozenset({
    "b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
    "a", "tg-emoji", "code", "pre", "blockquote", "tg-time",
})  # fmt: skip
NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}  # the only named ones Telegram decodes
_SPACES = frozenset(" \t\r\n\v\0")  # TDLib's is_space
_ATTRIBUTE_NAME_ENDS = _SPACES | frozenset("=>/\"'")
_NAME_TOKEN = frozenset(string.ascii_letters + string.digits + ".-")
PARSE_MODES = frozenset({"", "none", "html", "markdown", "markdownv2"})  # compared in lower case
KICKED = "Forbidden: bot was kicked from the group chat"
CHAT_NOT_FOUND = "Bad Request: chat not found"
CANT_PARSE = 'Bad Request: can\'t parse entities: Unsupported start tag "poison" at byte offset 0'
UNSUPPORTED_PARSE_MODE = "Bad Request: unsupported parse_mode"
TEXT_EMPTY = "Bad Request: message text is empty"
TOO_LONG = "Bad Request: message is too long"
JSON_OBJECT_EXPECTED = "Bad Request: JSON object expected"
UNAUTHORIZED = "Unauthorized"
METHOD_NOT_FOUND = "Not Found: method not found"
CHAT_ID_EMPTY = "Bad Request: chat_id is empty"
INVALID_USER_ID = "Bad Request: invalid user_id specified"
WRONG_ACTION = "Bad Request: wrong parameter action in request"
NOT_ENOUGH_RIGHTS = "Bad Request: not enough rights to send text messages to the chat"
NEED_CHANNEL_ADMIN = "Bad Request: need administrator rights in the channel chat"
MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"
THREAD_NOT_FOUND = "Bad Request: message thread not found"
TOPIC_CLOSED = "Bad Request: TOPIC_CLOSED"
REPLY_NOT_FOUND = "Bad Request: message to be replied not found"
# reply_parameters is a JSON object, read strictly (td's JSON reader), unlike the flat parameters
REPLY_NOT_JSON = "Bad Request: can't parse reply parameters JSON object"
REPLY_NOT_OBJECT = "Bad Request: object expected as reply parameters"
REPLY_NO_MESSAGE_ID = 'Bad Request: can\'t find field "message_id"'
REPLY_MESSAGE_ID_NOT_NUMBER = 'Bad Request: field "message_id" must be a Number'
REPLY_MESSAGE_ID_INVALID = 'Bad Request: field "message_id" must be a valid Number'
REPLY_FLAG_NOT_BOOLEAN = 'Bad Request: field "allow_sending_without_reply" must be of type Boolean'
TOPIC_OPEN, TOPIC_IS_CLOSED = "open", "closed"
# what sendMessage to a supergroup answers when the bot was kicked / is not a member (see `kicked_from`)
BOT_KICKED = "Forbidden: bot was kicked from the supergroup chat"
BOT_NOT_MEMBER = "Forbidden: bot is not a member of the supergroup chat"
MEMBER_STATUSES = frozenset({"creator", "administrator", "member", "restricted", "left", "kicked"})
CHAT_ACTIONS = frozenset({
    "typing", "upload_photo", "record_video", "upload_video", "record_voice", "upload_voice",
    "upload_document", "choose_sticker", "find_location", "record_video_note", "upload_video_note",
})  # fmt: skip
OUTAGE_DESCRIPTIONS = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
HOLD_CHECK = 0.05  # seconds between checks whether the client of a held request (or answer) is gone
CLIENT_GONE = 499  # the status recorded for a request whose client left before the answer (nginx's)


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
    """The text Telegram would show (tags removed, entities decoded); ParseError with TDLib's words
    (sendMessage answers them as "Bad Request: can't parse entities: <words>").

    Follows TDLib's `parse_html`, which the Bot API runs: a `&` that starts no supported entity (only
    `&lt; &gt; &amp; &quot;` and numeric ones, the `;` optional) and a stray `>` are literal text; every
    `<` starts a tag, and a tag Telegram does not support is an error. Tag names are case-insensitive,
    `<span>` needs class="tg-spoiler", `<tg-emoji>` a numeric emoji-id. An `<a>` without href is
    accepted (Telegram links its text when that is a URL). Offsets in errors are UTF-8 byte offsets.
    """
    return _HtmlParser(text).parse()


@dataclass
class _OpenTag:
    name: str
    argument: str
    start: int  # characters shown before the tag


class _HtmlParser:
    """One pass over the text, as TDLib's parse_html; `at` answers NUL past the end, as a C string."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.visible: list[str] = []
        self.shown = 0  # characters in `visible`
        self.open: list[_OpenTag] = []
        self.surrogate = False

    def at(self, index: int) -> str:
        return self.text[index] if index < len(self.text) else "\0"

    def byte(self, index: int) -> int:
        return len(self.text[:index].encode("utf-8", "surrogatepass"))

    def parse(self) -> str:
        index = 0
        while index < len(self.text):
            char = self.text[index]
            if char == "&" and (decoded := self.entity(index)) is not None:
                code, index = decoded
                self.surrogate |= 0xD800 <= code <= 0xDFFF
                self.show(chr(code))
            elif char != "<":
                self.show(char)
                index += 1
            elif self.at(index + 1) == "/":
                index = self.end_tag(index)
            else:
                index = self.start_tag(index)
        if self.open:
            raise ParseError(f'Can\'t find end tag corresponding to start tag "{self.open[-1].name}"')
        if self.surrogate:
            raise ParseError("Text contains invalid Unicode characters after decoding HTML "
                             "entities, check for unmatched surrogate code units")  # fmt: skip
        return "".join(self.visible)

    def show(self, char: str) -> None:
        self.visible.append(char)
        self.shown += 1

    def entity(self, start: int) -> tuple[int, int] | None:
        """The code point of the entity at `start` and where it ends; None: the `&` is literal text."""
        end = start + 1
        if self.at(end) == "#":
            end += 1
            digits, base = (string.digits, 10)
            if self.at(end) == "x":
                end += 1
                digits, base = (string.hexdigits, 16)
            first = end
            while self.at(end) in digits:
                end += 1
            code = int(self.text[first:end], base) if end > first else 0
            if code == 0 or code >= 0x10FFFF or end - start >= 10:
                return None
        else:
            while self.at(end) in string.ascii_letters:
                end += 1
            if (named := NAMED_ENTITIES.get(self.text[start + 1 : end])) is None:
                return None
            code = ord(named)
        return code, end + 1 if self.at(end) == ";" else end

    def skip_spaces(self, index: int) -> int:
        while self.at(index) != "\0" and self.at(index) in _SPACES:
            index += 1
        return index

    def start_tag(self, begin: int) -> int:
        index = begin + 1
        while self.at(index) not in _SPACES and self.at(index) != ">":
            index += 1
        if self.at(index) == "\0":
            raise ParseError(f"Unclosed start tag at byte offset {self.byte(begin)}")
        name = _ascii_lower(self.text[begin + 1 : index])
        if name not in SUPPORTED_TAGS:
            raise ParseError(f'Unsupported start tag "{name}" at byte offset {self.byte(begin)}')
        argument = ""
        while self.at(index) != ">":
            index = self.skip_spaces(index)
            if self.at(index) == ">":
                break
            index, argument = self.attribute(name, begin, index, argument)
        if name == "span" and argument != "spoiler":
            raise ParseError(f'Tag "span" must have class "tg-spoiler" at byte offset '
                             f"{self.byte(begin)}")  # fmt: skip
        self.open.append(_OpenTag(name, argument, self.shown))
        return index + 1

    def attribute(self, tag: str, begin: int, index: int, argument: str) -> tuple[int, str]:
        """Read one attribute of the tag opened at `begin`; return where it ends and the tag's argument."""
        first = index
        while self.at(index) not in _ATTRIBUTE_NAME_ENDS:
            index += 1
        name = self.text[first:index]
        where = f'the tag "{tag}" at byte offset {self.byte(begin)}'
        if not name:
            raise ParseError(f"Empty attribute name in {where}")
        index = self.skip_spaces(index)
        if self.at(index) != "=":  # an attribute without a value (<blockquote expandable>)
            if self.at(index) == "\0":
                raise ParseError(f'Unclosed start tag "{tag}" at byte offset {self.byte(begin)}')
            return index, "1" if (tag, name) == ("blockquote", "expandable") else argument
        index = self.skip_spaces(index + 1)
        if self.at(index) == "\0":
            raise ParseError(f'Unclosed start tag "{tag}" at byte offset {self.byte(begin)}')
        if self.at(index) in "\"'":
            index, value = self.quoted(index)
        else:  # a name token: letters, digits, periods, hyphens; case-insensitive
            token = index
            while self.at(index) in _NAME_TOKEN:
                index += 1
            value = _ascii_lower(self.text[token:index])
            if self.at(index) not in _SPACES and self.at(index) != ">":
                raise ParseError(f"Unexpected end of name token at byte offset {self.byte(token)}")
        if self.at(index) == "\0":
            raise ParseError(f"Unclosed start tag at byte offset {self.byte(begin)}")
        return index, _tag_argument(tag, name, value, argument)

    def quoted(self, index: int) -> tuple[int, str]:
        quote = self.text[index]
        index += 1
        value: list[str] = []
        while self.at(index) != quote and self.at(index) != "\0":
            if self.at(index) == "&" and (decoded := self.entity(index)) is not None:
                code, index = decoded
                value.append(chr(code))
                continue
            value.append(self.text[index])
            index += 1
        if self.at(index) == quote:
            index += 1
        return index, "".join(value)

    def end_tag(self, begin: int) -> int:
        if not self.open:
            raise ParseError(f"Unexpected end tag at byte offset {self.byte(begin)}")
        index = begin + 2
        while self.at(index) not in _SPACES and self.at(index) != ">":
            index += 1
        name = _ascii_lower(self.text[begin + 2 : index])
        index = self.skip_spaces(index)
        if self.at(index) != ">":
            raise ParseError(f"Unclosed end tag at byte offset {self.byte(begin)}")
        tag = self.open.pop()
        if name and name != tag.name:
            raise ParseError(f"Unmatched end tag at byte offset {self.byte(begin)}, "
                             f'expected "</{tag.name}>", found "</{name}>"')  # fmt: skip
        if tag.name == "tg-emoji" and self.shown > tag.start and not _emoji_id(tag.argument):
            raise ParseError("Invalid custom emoji identifier specified")
        return index + 1


def _ascii_lower(text: str) -> str:
    return "".join(char.lower() if char.isascii() else char for char in text)


def _tag_argument(tag: str, attribute: str, value: str, argument: str) -> str:
    """What an attribute gives its tag (TDLib keeps one argument per tag); other attributes are ignored."""
    match (tag, attribute):
        case ("a", "href") | ("tg-emoji", "emoji-id") | ("tg-time", "format"):
            return value
        case ("code", "class") if value.startswith("language-"):
            return value.removeprefix("language-")
        case ("span", "class") if value.startswith("tg-"):
            return value.removeprefix("tg-")
        case ("blockquote", "expandable"):
            return "1"
    return argument


def _emoji_id(argument: str) -> bool:
    return re.fullmatch(r"-?\d+", argument) is not None and int(argument) != 0 and -(2**63) <= int(argument) < 2**63


def utf16_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Request:
    """One request the fake received.

    `status` is the HTTP status answered, or CLIENT_GONE (499) when the client left before the answer
    (the request was executed all the same unless the network was down, see `outage_timeouts`).
    `sent` is the message this request posted, if any.
    """

    at: float  # time.monotonic()
    method: str
    params: dict[str, Any]
    status: int = 200
    sent: Sent | None = None

    @property
    def chat_id(self) -> str:
        return str(self.params.get("chat_id", ""))


@dataclass
class Sent:
    """A message the fake accepted (Telegram shows it in the chat).

    `answer_lost`: the client was gone when the answer would have been written (it timed out or was
    killed), so it could not know the message arrived; a resend of it is a duplicate in the chat.
    """

    at: float
    chat_id: str
    text: str
    message_id: int
    answer_lost: bool = False
    thread_id: int | None = None  # the forum topic it was posted in
    reply_to: int | None = None  # the message it replies to (None: none, or the target was gone)
    silent: bool = False  # disable_notification
    date: int = 0
    deleted: bool = False  # taken away (`delete_message`): nothing can reply to it any more


class TelegramError(Exception):
    def __init__(self, code: int, description: str, **parameters: Any) -> None:
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters


RECORD = web.RequestKey("fake_telegram_record", Request)  # the Request record of an aiohttp request


@dataclass
class FakeTelegram:
    """The fake Bot API; set the public fields (or call the helpers) to inject faults."""

    token: str = "123456:TEST-token-abcdefghijklmnopqrstuvw"
    port: int = 0  # 0: a free port chosen at start and read back (then kept, so a restart reuses it)
    # faults, consumed one per sendMessage
    fail_429: int = 0
    retry_after: int = 2
    fail_500: int = 0
    # seconds before executing any request; a client that gives up meanwhile still gets it executed
    delay: float = 0.0
    slow_requests: int = 0  # the next N requests wait `slow_delay` more (any method)
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
    # the network down: every request is held unanswered; one whose client gives up never reached
    # Telegram (recorded as 499, nothing delivered); lifting the outage lets the held ones through
    outage_timeouts: bool = False
    # forum supergroups: chat id -> {topic id: "open" | "closed"} (see the module's docstring)
    forums: dict[str, dict[int, str]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._next_id = 1
        self._accepted: dict[str, list[float]] = {}  # chat id -> times of the messages accepted

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeTelegram has no port before start(): its port is chosen when it listens")
        return f"http://{LOCALHOST}:{self.port}"

    def sent_to(self, chat_id: int | str) -> list[Sent]:
        return [message for message in self.sent if message.chat_id == str(chat_id)]

    def revoke_rights(self, chat_id: int | str) -> None:
        """The bot stays in the chat but may not post (restricted): getChat still succeeds."""
        self.revoked.add(str(chat_id))

    def restore_rights(self, chat_id: int | str) -> None:
        self.revoked.discard(str(chat_id))

    def open_topic(self, chat_id: int | str, thread_id: int) -> None:
        """The chat is a forum with this topic, open (made, or reopened)."""
        self.forums.setdefault(str(chat_id), {})[thread_id] = TOPIC_OPEN

    def close_topic(self, chat_id: int | str, thread_id: int) -> None:
        self.forums.setdefault(str(chat_id), {})[thread_id] = TOPIC_IS_CLOSED

    def delete_topic(self, chat_id: int | str, thread_id: int) -> None:
        self.forums.setdefault(str(chat_id), {}).pop(thread_id, None)

    def delete_message(self, chat_id: int | str, message_id: int) -> None:
        for message in self.sent_to(chat_id):
            if message.message_id == message_id:
                message.deleted = True

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        return app

    async def start(self) -> Self:
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOCALHOST, self.port).start()
        self.port = int(self._runner.addresses[0][1])  # the port bound, when 0 was asked for
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
        record = Request(time.monotonic(), request.match_info["method"], {})
        request[RECORD] = record
        self.requests.append(record)
        try:
            record.params = await _params(request)
        except TelegramError as error:
            return self._error(record, error)
        if self.outage_timeouts and not await self._held(request):
            record.status = CLIENT_GONE  # the request never reached Telegram: nothing is delivered
            return web.Response(status=CLIENT_GONE)
        if self.outage_status:
            self.outage_answers += 1
            status = self.outage_status
            description = OUTAGE_DESCRIPTIONS.get(status, "Service Unavailable")
            return self._error(record, TelegramError(status, description))
        if delay := self._next_delay():
            await asyncio.sleep(delay)
        try:
            result = self._call(request.match_info["token"], record)
        except TelegramError as error:
            response = self._error(record, error)
        else:
            response = web.json_response({"ok": True, "result": result})
        if self._answer_lost(request):  # executed all the same: Telegram had the request
            return web.Response(status=CLIENT_GONE)
        return response

    def _next_delay(self) -> float:
        """Seconds the next request waits before it is executed (`delay`, plus `slow_delay` if slow)."""
        if self.slow_requests <= 0:
            return self.delay
        self.slow_requests -= 1
        return self.delay + self.slow_delay

    def _answer_lost(self, request: web.Request) -> bool:
        """True (and the request and its message so marked) if the client left before its answer."""
        if request.transport is not None and not request.transport.is_closing():
            return False
        record = request[RECORD]
        record.status = CLIENT_GONE
        if record.sent is not None:
            record.sent.answer_lost = True
        return True

    async def _hold_answer(self, request: web.Request, seconds: float) -> bool:
        """Hold an executed request's answer `seconds`; False (and marked lost) as soon as its client leaves."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._answer_lost(request):
                return False
            await asyncio.sleep(min(HOLD_CHECK, left))
        return not self._answer_lost(request)

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

    def _call(self, token: str, record: Request) -> Any:
        if token != self.token:
            raise TelegramError(401, UNAUTHORIZED)
        params = record.params
        match record.method.lower():
            case "getme":
                return self._bot_user()
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
                return self._send_message(record)
        raise TelegramError(404, METHOD_NOT_FOUND)

    def _bot_user(self, user_id: int | None = None) -> dict[str, Any]:
        bot_id = int(self.token.split(":")[0]) if user_id is None else user_id
        return {"id": bot_id, "is_bot": True, "first_name": "Fake", "username": "fake_bot"}

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
            raise TelegramError(400, MIGRATED, migrate_to_chat_id=self.migrations[chat_id])

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
        """ChatFullInfo: the chat's basics plus what PTB requires; permissions in (super)groups only."""
        chat = _chat_basics(chat_id)
        chat.update({"accent_color_id": 0, "max_reaction_count": 11,
                     "accepted_gift_types": {"unlimited_gifts": False, "limited_gifts": False,
                                             "unique_gifts": False, "premium_subscription": False,
                                             "gifts_from_channels": False}})  # fmt: skip
        if chat["type"] in ("group", "supergroup"):
            chat["permissions"] = _permissions(self.chat_can_send.get(chat_id, True))
        return chat

    def _chat_member(self, chat_id: str, user_id: int) -> dict[str, Any]:
        user = self._bot_user(user_id)  # only the bot's own membership is modelled
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

    def _send_message(self, record: Request) -> dict[str, Any]:
        params = record.params
        chat_id = self._chat(params)
        text = str(params.get("text", ""))
        if not text.strip():
            raise TelegramError(400, TEXT_EMPTY)
        visible = shown_text(text, params.get("parse_mode"))
        thread_id, (reply_to, without_reply), silent = _message_options(params)
        self._refusal(chat_id, text)
        self._check_topic(chat_id, thread_id)
        target = self._reply_target(chat_id, reply_to, without_reply)
        message_id, self._next_id = self._next_id, self._next_id + 1
        now = time.time()
        at = time.monotonic()
        record.sent = Sent(at, chat_id, text, message_id, thread_id=thread_id or None,
                           reply_to=target.message_id if target else None, silent=silent, date=int(now))  # fmt: skip
        self.sent.append(record.sent)
        accepted = self._accepted.setdefault(chat_id, [])
        accepted.append(at)
        del accepted[: -max(1, self.group_limit)]  # all that the limits look at
        message = {**self._message(chat_id, message_id, int(now)), "text": visible}
        if thread_id:
            message.update({"message_thread_id": thread_id, "is_topic_message": True})
        if target is not None:
            message["reply_to_message"] = self._message(chat_id, target.message_id, target.date)
        return message

    def _message(self, chat_id: str, message_id: int, date: int) -> dict[str, Any]:
        """A Message's basic fields: id, date, chat, and who sent it (the bot; in a channel, the channel)."""
        message: dict[str, Any] = {"message_id": message_id, "date": date, "chat": _chat_basics(chat_id)}
        if chat_type(chat_id) == "channel":
            message["sender_chat"] = message["chat"]  # a channel post has no "from"
        else:
            message["from"] = self._bot_user()
        return message

    def _check_topic(self, chat_id: str, thread_id: int) -> None:
        """A message into a forum topic: the topic must exist in this chat, and be open."""
        if not thread_id:
            return
        state = self.forums.get(chat_id, {}).get(thread_id)
        if state is None:
            raise TelegramError(400, THREAD_NOT_FOUND)
        if state == TOPIC_IS_CLOSED:
            raise TelegramError(400, TOPIC_CLOSED)

    def _reply_target(self, chat_id: str, reply_to: int, without_reply: bool) -> Sent | None:
        """The message replied to; None when there is none (asked for none, or gone and that is allowed)."""
        if not reply_to:
            return None
        for message in self.sent_to(chat_id):
            if message.message_id == reply_to and not message.deleted:
                return message
        if without_reply:
            return None
        raise TelegramError(400, REPLY_NOT_FOUND)


def shown_text(text: str, parse_mode: object) -> str:
    """The text as Telegram shows it under `parse_mode` (case-insensitive); TelegramError as it answers.

    HTML is parsed by Telegram's rules; Markdown and MarkdownV2 are accepted with the text kept as is
    (the notifier sends HTML; their own rules are not modelled).
    """
    mode = "" if parse_mode is None else str(parse_mode).lower()
    if mode not in PARSE_MODES:
        raise TelegramError(400, UNSUPPORTED_PARSE_MODE)
    visible = text
    if mode == "html":
        try:
            visible = parse_html(text)
        except ParseError as error:
            raise TelegramError(400, f"Bad Request: can't parse entities: {error}") from None
    if not visible.strip():
        raise TelegramError(400, TEXT_EMPTY)
    if utf16_length(visible) > MAX_TEXT:
        raise TelegramError(400, TOO_LONG)
    return visible


def _chat_number(chat_id: str) -> int:
    """The chat's numeric id; a channel's "@name" is resolved to a stable "-100..." id, as Telegram does."""
    if re.fullmatch(r"-?\d+", chat_id):
        return int(chat_id)
    return -(10**12 + zlib.crc32(chat_id.removeprefix("@").lower().encode()))


def _chat_basics(chat_id: str) -> dict[str, Any]:
    """The Chat object of a message: id, type, and the title (a private chat: the user's first name)."""
    kind = chat_type(chat_id)
    chat: dict[str, Any] = {"id": _chat_number(chat_id), "type": kind}
    if kind == "private":
        chat["first_name"] = "Todos"
    else:
        chat["title"] = "Todos"
    if kind == "channel" and chat_id.startswith("@"):
        chat["username"] = chat_id.removeprefix("@")
    return chat


def _message_options(params: dict[str, Any]) -> tuple[int, tuple[int, bool], bool]:
    """(message_thread_id, (the message replied to, allow_sending_without_reply), disable_notification) as
    the Bot API reads them: the flat parameters leniently (an integer by its leading digits, so "abc" is 0,
    no topic; a flag is true only for "true", "yes" or "1"), and reply_parameters strictly as the JSON
    object it must be (`_reply_parameters`). 0 means none."""
    reply = _reply_parameters(params["reply_parameters"]) if "reply_parameters" in params else (
        _message_id(params.get("reply_to_message_id")), _flag(params.get("allow_sending_without_reply")))  # fmt: skip
    return _message_id(params.get("message_thread_id")), reply, _flag(params.get("disable_notification"))


def _message_id(value: object) -> int:
    """A message id parameter as the Bot API reads it (td::to_integer: an optional '-' and the leading
    digits, anything else 0); a negative id is none."""
    match = re.match(r"-?\d*", "" if value is None else str(value))
    digits = match[0] if match else ""
    number = int(digits) if digits.lstrip("-") else 0
    return number if 0 < number < 2**31 else 0


def _flag(value: object) -> bool:
    return str(value or "").strip().lower() in {"true", "yes", "1"}


def _reply_parameters(value: object) -> tuple[int, bool]:
    """(message_id, allow_sending_without_reply) of a ReplyParameters object; TelegramError as Telegram
    answers a malformed one. An empty string or object: no reply."""
    if isinstance(value, str):
        if not value:
            return 0, False
        try:
            value = json.loads(value)
        except ValueError:
            raise TelegramError(400, REPLY_NOT_JSON) from None
    if not isinstance(value, dict):
        raise TelegramError(400, REPLY_NOT_OBJECT)
    if not value:
        return 0, False
    if "message_id" not in value:
        raise TelegramError(400, REPLY_NO_MESSAGE_ID)
    message_id = value["message_id"]
    if isinstance(message_id, bool) or not isinstance(message_id, int | float | str):
        raise TelegramError(400, REPLY_MESSAGE_ID_NOT_NUMBER)
    text = str(message_id)
    if not re.fullmatch(r"-?\d+", text) or not -(2**31) <= int(text) < 2**31:
        raise TelegramError(400, REPLY_MESSAGE_ID_INVALID)
    flag = value.get("allow_sending_without_reply", False)
    if not isinstance(flag, bool):
        raise TelegramError(400, REPLY_FLAG_NOT_BOOLEAN)
    return max(int(text), 0), flag


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
    """The parameters as the Bot API reads them, alike for a JSON and a form-encoded body.

    Every value is a string (a JSON number or boolean as its JSON text); one holding a JSON object or
    array is decoded (PTB JSON-encodes link_preview_options, reply_markup ...). URL query parameters
    fill in what the body does not give.
    """
    if request.content_type == "application/json":
        values = _json_object(await request.text())
    else:
        form = await request.post()
        values = {key: value for key, value in form.items() if isinstance(value, str)}
    params: dict[str, Any] = {key: _decoded(value) for key, value in values.items()}
    params.update({key: _decoded(value) for key, value in request.query.items() if key not in params})
    return params


def _json_object(body: str) -> dict[str, str]:
    """A JSON body's fields as strings; 400 as Telegram answers unless the body is an object (or empty)."""
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise TelegramError(400, JSON_OBJECT_EXPECTED)
    return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in parsed.items()}


def _decoded(value: str) -> Any:
    if value.startswith(("{", "[")):
        with contextlib.suppress(ValueError):
            return json.loads(value)
    return value


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
