"""A fake Telegram Bot API server speaking the real wire format, for tests, chaos runs and benchmarks.

POST (form-encoded or JSON) to /bot<token>/<method>; answers {"ok": true, "result": ...} or
{"ok": false, "error_code": N, "description": ..., "parameters": {...}} with HTTP status N.
Implemented: getMe, getChat, sendMessage (checks Telegram HTML and the 4096 limit after entity
parsing). Faults are programmed on `FakeTelegram` (429s, 500s, delays, chat errors, poison markers,
migrations); every request is recorded with its time. Rules that decide per request live in
`_refusal`, among them Telegram's rate limits when set (`chat_interval`, `group_limit` per
`group_window`, scaled down in time for tests): a sendMessage over them gets a 429 with retry_after.

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


class ParseError(ValueError):
    pass


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
            record.status = error.code
            body: dict[str, Any] = {"ok": False, "error_code": error.code, "description": error.description}
            if error.parameters:
                body["parameters"] = error.parameters
            return web.json_response(body, status=error.code)
        return web.json_response({"ok": True, "result": result})

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
                chat_id = self._chat(params)
                return {"id": _chat_number(chat_id), "type": "supergroup", "title": "Todos",
                        "accent_color_id": 0, "max_reaction_count": 11,
                        "accepted_gift_types": {"unlimited_gifts": False, "limited_gifts": False,
                                                "unique_gifts": False, "premium_subscription": False,
                                                "gifts_from_channels": False}}  # fmt: skip
            case "sendmessage":
                return self._send_message(params)
        raise TelegramError(404, "Not Found: method not found")

    def _chat(self, params: dict[str, Any]) -> str:
        chat_id = str(params.get("chat_id", "")).strip()
        if not chat_id:
            raise TelegramError(400, "Bad Request: chat_id is empty")
        if chat_id in self.chat_errors:
            description = self.chat_errors[chat_id]
            raise TelegramError(403 if description.startswith("Forbidden") else 400, description)
        return chat_id

    def _refusal(self, chat_id: str, text: str) -> None:
        """Faults and limits that refuse a sendMessage before it is accepted (a rate limiter goes here)."""
        if chat_id in self.migrations:
            raise TelegramError(400, "Bad Request: group chat was upgraded to a supergroup chat",
                                migrate_to_chat_id=self.migrations[chat_id])  # fmt: skip
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
            "chat": {"id": _chat_number(chat_id), "type": "supergroup"},
            "text": visible,
        }


def _chat_number(chat_id: str) -> int | str:
    return int(chat_id) if re.fullmatch(r"-?\d+", chat_id) else chat_id


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
