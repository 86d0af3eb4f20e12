"""The fake Telegram Bot API itself: the wire format, Telegram's HTML rules and length limit, error shapes,
getChat/getChatMember, the bot's rights per chat, outages, and requests whose client gave up.

Each behaviour is checked over raw HTTP (the wire format) and through python-telegram-bot (what the
notifier parses), so a field PTB requires or an error it maps differently shows up here first.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from telegram import (
    Bot,
    ChatFullInfo,
    ChatMember,
    ChatMemberAdministrator,
    ChatMemberBanned,
    ChatMemberLeft,
    ChatMemberMember,
    ChatMemberRestricted,
    ReplyParameters,
)
from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, NetworkError, RetryAfter

from tests.chaos.telegram_faults import FaultyTelegram, HookedTelegram, refused_sends
from tests.fake_telegram import (
    BOT_KICKED,
    BOT_NOT_MEMBER,
    CHAT_ID_EMPTY,
    CHAT_NOT_FOUND,
    CLIENT_GONE,
    INVALID_USER_ID,
    JSON_OBJECT_EXPECTED,
    KICKED,
    METHOD_NOT_FOUND,
    MIGRATED,
    NEED_CHANNEL_ADMIN,
    NOT_ENOUGH_RIGHTS,
    REPLY_FLAG_NOT_BOOLEAN,
    REPLY_MESSAGE_ID_INVALID,
    REPLY_MESSAGE_ID_NOT_NUMBER,
    REPLY_NO_MESSAGE_ID,
    REPLY_NOT_FOUND,
    REPLY_NOT_JSON,
    REPLY_NOT_OBJECT,
    TEXT_EMPTY,
    THREAD_NOT_FOUND,
    TOO_LONG,
    TOPIC_CLOSED,
    UNAUTHORIZED,
    UNSUPPORTED_PARSE_MODE,
    WRONG_ACTION,
    FakeTelegram,
    ParseError,
    parse_html,
)
from tests.services import DB_PASSWORD, leaked_secrets

SUPERGROUP = -1001234567890
GROUP = -4242
PRIVATE = 777
CHANNEL = "@todo_channel"
TOKEN = "987654:FAKE-token-abcdefghijklmnopqrstuvw"
BOT_ID = 987654


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN) as server:
        yield server


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(fake.token, base_url=f"{fake.base_url}/bot") as client:  # initialize() calls getMe
        yield client


async def call(
    http: aiohttp.ClientSession, fake: FakeTelegram, method: str, *, as_json: bool = False, **params: Any
) -> tuple[int, dict[str, Any]]:
    """POST one Bot API method (form-encoded as PTB does, or JSON); return the HTTP status and the decoded body."""
    url = f"{fake.base_url}/bot{fake.token}/{method}"
    if as_json:
        request = http.post(url, json=params)
    else:
        request = http.post(url, data={key: form_value(value) for key, value in params.items()})
    async with request as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


def form_value(value: Any) -> str:
    """A parameter as PTB form-encodes it: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def assert_error(
    status: int, body: dict[str, Any], code: int, description: str, parameters: dict[str, Any] | None = None
) -> None:
    """Telegram's error shape: ok false, error_code equal to the HTTP status, parameters only when given."""
    assert status == code
    expected: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters is not None:
        expected["parameters"] = parameters
    assert body == expected


def ptb_message(description: str) -> str:
    """The message PTB's error carries for Telegram's description: "Bad Request: " dropped, then
    str.capitalize (the rest lowercased)."""
    return description.removeprefix("Bad Request: ").capitalize()


async def wait_for(condition: Callable[[], object], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# getChatMember / getChat / sendChatAction with default rights


async def test_default_member_is_an_administrator_over_http(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, fake, "getchatmember", chat_id=SUPERGROUP, user_id=BOT_ID)
    assert status == 200
    assert body["ok"] is True
    member = body["result"]
    assert member["status"] == "administrator"
    assert member["user"] == {"id": BOT_ID, "is_bot": True, "first_name": "Fake", "username": "fake_bot"}
    assert member["can_be_edited"] is False
    assert member["is_anonymous"] is False
    assert member["can_manage_chat"] is True
    assert member["can_pin_messages"] is True
    assert "can_post_messages" not in member  # channel-only, as in the real API
    assert fake.requests[-1].method == "getchatmember"
    assert fake.requests[-1].status == 200


async def test_channel_administrator_may_post_messages(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, fake, "getChatMember", as_json=True, chat_id=CHANNEL, user_id=BOT_ID)
    assert status == 200
    assert body["result"]["status"] == "administrator"
    assert body["result"]["can_post_messages"] is True
    assert body["result"]["can_edit_messages"] is True


async def test_bot_id_comes_from_the_token(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    _, me = await call(http, fake, "getMe")
    assert me["result"]["id"] == BOT_ID


async def test_default_administrator_through_ptb(fake: FakeTelegram, bot: Bot) -> None:
    member = await bot.get_chat_member(SUPERGROUP, BOT_ID)
    assert isinstance(member, ChatMemberAdministrator)
    assert member.user.id == BOT_ID
    assert member.user.is_bot
    assert member.can_manage_chat
    assert await bot.send_chat_action(SUPERGROUP, "typing") is True
    chat = await bot.get_chat(SUPERGROUP)
    assert isinstance(chat, ChatFullInfo)
    assert chat.type == "supergroup"
    assert chat.permissions is not None
    assert chat.permissions.can_send_messages is True
    await bot.send_message(SUPERGROUP, "hello")
    assert [message.text for message in fake.sent_to(SUPERGROUP)] == ["hello"]


async def test_private_chat_member_parses(bot: Bot) -> None:
    member = await bot.get_chat_member(PRIVATE, BOT_ID)
    assert isinstance(member, ChatMemberMember)
    assert await bot.send_chat_action(PRIVATE, "typing") is True


async def test_chat_types_and_permissions(fake: FakeTelegram, bot: Bot) -> None:
    fake.chat_can_send[str(GROUP)] = False
    group = await bot.get_chat(GROUP)
    assert group.type == "group"
    assert group.permissions is not None
    assert group.permissions.can_send_messages is False
    private = await bot.get_chat(PRIVATE)
    assert private.type == "private"
    assert private.permissions is None
    channel = await bot.get_chat(CHANNEL)
    assert channel.type == "channel"
    assert channel.username == CHANNEL.removeprefix("@")
    assert channel.permissions is None


# rights revoked and restored


async def test_revoked_rights_getchat_succeeds_but_sending_fails(
    fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot
) -> None:
    fake.revoke_rights(SUPERGROUP)

    chat = await bot.get_chat(SUPERGROUP)  # the trap: the chat is visible
    assert chat.id == SUPERGROUP
    member = await bot.get_chat_member(SUPERGROUP, BOT_ID)
    assert isinstance(member, ChatMemberRestricted)
    assert member.is_member is True
    assert member.can_send_messages is False

    with pytest.raises(BadRequest) as raised:
        await bot.send_message(SUPERGROUP, "hello")
    assert raised.value.message == ptb_message(NOT_ENOUGH_RIGHTS)
    with pytest.raises(BadRequest) as raised:
        await bot.send_chat_action(SUPERGROUP, "typing")
    assert raised.value.message == ptb_message(NOT_ENOUGH_RIGHTS)
    status, body = await call(http, fake, "sendmessage", chat_id=SUPERGROUP, text="hello")
    assert_error(status, body, 400, NOT_ENOUGH_RIGHTS)
    assert fake.sent == []
    assert [r.status for r in fake.requests if r.method.lower() in ("sendmessage", "sendchataction")] == [400] * 3

    fake.restore_rights(SUPERGROUP)
    await bot.send_message(SUPERGROUP, "hello again")
    assert [message.text for message in fake.sent_to(SUPERGROUP)] == ["hello again"]
    assert isinstance(await bot.get_chat_member(SUPERGROUP, BOT_ID), ChatMemberAdministrator)


async def test_revoking_one_chat_leaves_the_others(fake: FakeTelegram, bot: Bot) -> None:
    fake.revoke_rights(str(SUPERGROUP))
    await bot.send_message(GROUP, "fine")
    assert len(fake.sent_to(GROUP)) == 1


@pytest.mark.parametrize(
    "case", [("kicked", BOT_KICKED, ChatMemberBanned), ("left", BOT_NOT_MEMBER, ChatMemberLeft)], ids=["kicked", "left"]
)
async def test_kicked_or_left_bot_is_forbidden(
    fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot, case: tuple[str, str, type[ChatMember]]
) -> None:
    status, description, member_type = case
    fake.member_status[str(SUPERGROUP)] = status
    member = await bot.get_chat_member(SUPERGROUP, BOT_ID)
    assert isinstance(member, member_type)
    assert member.status == status

    http_status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="hello")
    assert_error(http_status, body, 403, description)
    with pytest.raises(Forbidden) as raised:
        await bot.send_message(SUPERGROUP, "hello")
    assert raised.value.message == description
    with pytest.raises(Forbidden):
        await bot.send_chat_action(SUPERGROUP, "typing")
    assert fake.sent == []
    assert (await bot.get_chat(SUPERGROUP)).id == SUPERGROUP


async def test_kicked_from_a_basic_group_names_the_group(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    fake.member_status[str(GROUP)] = "kicked"
    status, body = await call(http, fake, "sendmessage", chat_id=GROUP, text="hello")
    assert_error(status, body, 403, KICKED)  # "group chat", as the existing constant


async def test_kicked_member_has_until_date(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    fake.member_status[str(SUPERGROUP)] = "kicked"
    _, body = await call(http, fake, "getchatmember", chat_id=SUPERGROUP, user_id=BOT_ID)
    assert body["result"]["until_date"] == 0


async def test_member_without_default_send_permission(
    fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot
) -> None:
    fake.member_status[str(SUPERGROUP)] = "member"
    fake.chat_can_send[str(SUPERGROUP)] = False
    assert isinstance(await bot.get_chat_member(SUPERGROUP, BOT_ID), ChatMemberMember)
    status, body = await call(http, fake, "sendmessage", chat_id=SUPERGROUP, text="hello")
    assert_error(status, body, 400, NOT_ENOUGH_RIGHTS)
    fake.chat_can_send[str(SUPERGROUP)] = True
    await bot.send_message(SUPERGROUP, "now")
    assert len(fake.sent) == 1


async def test_administrator_ignores_default_permissions(fake: FakeTelegram, bot: Bot) -> None:
    fake.chat_can_send[str(SUPERGROUP)] = False
    await bot.send_message(SUPERGROUP, "admins may")
    assert len(fake.sent) == 1


async def test_restricted_member_send_right(fake: FakeTelegram, bot: Bot) -> None:
    fake.member_status[str(SUPERGROUP)] = "restricted"
    member = await bot.get_chat_member(SUPERGROUP, BOT_ID)
    assert isinstance(member, ChatMemberRestricted)
    assert member.can_send_messages is False
    with pytest.raises(BadRequest) as raised:
        await bot.send_message(SUPERGROUP, "muted")
    assert raised.value.message == ptb_message(NOT_ENOUGH_RIGHTS)
    fake.restricted_can_send[str(SUPERGROUP)] = True
    member = await bot.get_chat_member(SUPERGROUP, BOT_ID)
    assert isinstance(member, ChatMemberRestricted)
    assert member.can_send_messages is True
    await bot.send_message(SUPERGROUP, "allowed")
    assert [message.text for message in fake.sent] == ["allowed"]


async def test_chat_errors_apply_to_getchatmember_and_sendchataction(
    fake: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    fake.chat_errors[str(SUPERGROUP)] = KICKED
    fake.chat_errors[str(GROUP)] = CHAT_NOT_FOUND
    status, body = await call(http, fake, "getchatmember", chat_id=SUPERGROUP, user_id=BOT_ID)
    assert_error(status, body, 403, KICKED)
    status, body = await call(http, fake, "getchatmember", chat_id=GROUP, user_id=BOT_ID)
    assert_error(status, body, 400, CHAT_NOT_FOUND)
    status, body = await call(http, fake, "sendchataction", chat_id=SUPERGROUP, action="typing")
    assert_error(status, body, 403, KICKED)
    assert [r.status for r in fake.requests] == [403, 400, 403]


async def test_chat_action_consumes_no_injected_fault(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_429 = 1
    assert await bot.send_chat_action(SUPERGROUP, "typing") is True
    assert fake.fail_429 == 1


# bad parameters


async def test_bad_action(fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot) -> None:
    status, body = await call(http, fake, "sendchataction", chat_id=SUPERGROUP, action="dancing")
    assert_error(status, body, 400, WRONG_ACTION)
    status, body = await call(http, fake, "sendchataction", chat_id=SUPERGROUP)
    assert_error(status, body, 400, WRONG_ACTION)
    with pytest.raises(BadRequest) as raised:
        await bot.send_chat_action(SUPERGROUP, "dancing")
    assert raised.value.message == ptb_message(WRONG_ACTION)
    assert fake.requests[-1].status == 400


async def test_missing_or_bad_user_id(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, fake, "getchatmember", chat_id=SUPERGROUP)
    assert_error(status, body, 400, INVALID_USER_ID)
    status, body = await call(http, fake, "getchatmember", chat_id=SUPERGROUP, user_id="abc")
    assert_error(status, body, 400, INVALID_USER_ID)
    status, body = await call(http, fake, "getchatmember", as_json=True, chat_id=SUPERGROUP, user_id=True)
    assert_error(status, body, 400, INVALID_USER_ID)
    status, body = await call(http, fake, "getchatmember", user_id=BOT_ID)
    assert_error(status, body, 400, CHAT_ID_EMPTY)
    assert [r.status for r in fake.requests] == [400] * 4


# outages


METHODS: list[tuple[str, dict[str, Any]]] = [
    ("getMe", {}),
    ("getChat", {"chat_id": SUPERGROUP}),
    ("getChatMember", {"chat_id": SUPERGROUP, "user_id": BOT_ID}),
    ("sendChatAction", {"chat_id": SUPERGROUP, "action": "typing"}),
    ("sendMessage", {"chat_id": SUPERGROUP, "text": "hello"}),
    ("nosuchmethod", {}),
]


@pytest.mark.parametrize(("code", "description"), [(503, "Service Unavailable"), (502, "Bad Gateway")])
async def test_outage_answers_every_method_over_http(
    fake: FakeTelegram, http: aiohttp.ClientSession, code: int, description: str
) -> None:
    fake.outage_status = code
    for method, params in METHODS:
        status, body = await call(http, fake, method, **params)
        assert_error(status, body, code, description)
    assert fake.sent == []
    assert fake.outage_answers == len(METHODS)
    assert [r.status for r in fake.requests] == [code] * len(METHODS)

    fake.outage_status = 0
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="back")
    assert status == 200
    assert body["ok"] is True
    assert len(fake.sent) == 1
    assert fake.outage_answers == len(METHODS)


async def test_outage_through_ptb_is_a_network_error(fake: FakeTelegram, bot: Bot) -> None:
    fake.outage_status = 503
    calls = [
        bot.get_me(),
        bot.get_chat(SUPERGROUP),
        bot.get_chat_member(SUPERGROUP, BOT_ID),
        bot.send_chat_action(SUPERGROUP, "typing"),
        bot.send_message(SUPERGROUP, "hello"),
    ]
    for coroutine in calls:
        with pytest.raises(NetworkError, match="Service Unavailable") as raised:
            await coroutine
        assert not isinstance(raised.value, (BadRequest, Forbidden))
    assert fake.sent == []
    assert fake.outage_answers == len(calls)


async def test_outage_wins_over_a_revoked_or_kicked_chat(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    fake.revoke_rights(SUPERGROUP)
    fake.member_status[str(GROUP)] = "kicked"
    fake.outage_status = 503
    for chat_id in (SUPERGROUP, GROUP):
        status, body = await call(http, fake, "sendmessage", chat_id=chat_id, text="x")
        assert_error(status, body, 503, "Service Unavailable")


async def test_blackholed_network_times_out_and_records_499(fake: FakeTelegram) -> None:
    fake.outage_timeouts = True
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await call(session, fake, "sendMessage", chat_id=SUPERGROUP, text="lost")
        assert time.monotonic() - started < 2.0
    await wait_for(lambda: fake.requests and fake.requests[-1].status == 499)
    assert fake.sent == []
    assert fake.outage_answers == 0
    assert len(fake.requests) == 1


async def test_blackholed_request_goes_through_when_the_network_comes_back(
    fake: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    fake.outage_timeouts = True
    pending = asyncio.ensure_future(call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="late"))
    await wait_for(lambda: len(fake.requests) == 1)
    await asyncio.sleep(0.2)
    assert not pending.done()
    assert fake.sent == []
    fake.outage_timeouts = False
    status, body = await asyncio.wait_for(pending, 2.0)
    assert status == 200
    assert body["ok"] is True
    assert [message.text for message in fake.sent] == ["late"]
    assert fake.requests[0].status == 200


# the port


async def test_port_zero_is_chosen_at_start_and_kept_for_a_restart() -> None:
    fake = FakeTelegram(token=TOKEN)
    assert fake.port == 0
    with pytest.raises(RuntimeError, match="before start"):
        _ = fake.base_url
    async with fake, FakeTelegram(token=TOKEN) as other, aiohttp.ClientSession() as http:
        assert fake.port != 0
        assert other.port not in (0, fake.port)
        assert fake.base_url == f"http://127.0.0.1:{fake.port}"
        status, body = await call(http, fake, "getMe")
        assert (status, body["result"]["id"]) == (200, BOT_ID)
    port = fake.port
    async with fake, aiohttp.ClientSession() as http:
        assert fake.port == port
        status, _ = await call(http, fake, "getMe")
        assert status == 200


# JSON and form-encoded bodies


SEND: dict[str, Any] = {
    "chat_id": SUPERGROUP,
    "text": "<b>a &amp; b</b> &nbsp;",
    "parse_mode": "HTML",
    "link_preview_options": {"is_disabled": True},
    "disable_notification": True,
}


async def test_json_and_form_bodies_give_the_same_parameters_and_answer(
    fake: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    form_status, form_body = await call(http, fake, "sendMessage", **SEND)
    json_status, json_body = await call(http, fake, "sendMessage", as_json=True, **SEND)
    assert form_status == json_status == 200
    assert form_body["result"]["text"] == json_body["result"]["text"] == "a & b &nbsp;"
    for body in (form_body, json_body):
        del body["result"]["message_id"], body["result"]["date"]
    assert form_body == json_body
    form_request, json_request = fake.requests
    assert form_request.params == json_request.params
    assert form_request.params["link_preview_options"] == {"is_disabled": True}
    assert form_request.chat_id == str(SUPERGROUP)
    assert [message.text for message in fake.sent] == [SEND["text"]] * 2


@pytest.mark.parametrize(
    ("params", "code", "description"),
    [
        ({"chat_id": SUPERGROUP}, 400, TEXT_EMPTY),
        ({"text": "x"}, 400, CHAT_ID_EMPTY),
        ({"chat_id": SUPERGROUP, "text": "x", "parse_mode": "XML"}, 400, UNSUPPORTED_PARSE_MODE),
        ({"chat_id": SUPERGROUP, "text": "<br>", "parse_mode": "html"}, 400,
         'Bad Request: can\'t parse entities: Unsupported start tag "br" at byte offset 0'),
    ],
)  # fmt: skip
async def test_json_and_form_bodies_give_the_same_errors(
    fake: FakeTelegram, http: aiohttp.ClientSession, params: dict[str, Any], code: int, description: str
) -> None:
    for as_json in (False, True):
        status, body = await call(http, fake, "sendMessage", as_json=as_json, **params)
        assert_error(status, body, code, description)
    assert fake.requests[0].params == fake.requests[1].params


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "42", "null", "{not json"])
async def test_a_json_body_that_is_not_an_object_is_a_bad_request(
    fake: FakeTelegram, http: aiohttp.ClientSession, body: str
) -> None:
    url = f"{fake.base_url}/bot{fake.token}/sendMessage"
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        assert_error(response.status, await response.json(), 400, JSON_OBJECT_EXPECTED)
    assert fake.sent == []
    assert fake.requests[-1].status == 400


async def test_an_empty_json_body_has_no_parameters(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    url = f"{fake.base_url}/bot{fake.token}/sendMessage"
    async with http.post(url, data="", headers={"Content-Type": "application/json"}) as response:
        assert_error(response.status, await response.json(), 400, CHAT_ID_EMPTY)


# error shapes


async def test_retry_after_shape(
    fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTB_TIMEDELTA", "1")  # retry_after as a timedelta, as the notifier sets it
    fake.fail_429, fake.retry_after = 2, 3
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="x")
    assert_error(status, body, 429, "Too Many Requests: retry after 3", {"retry_after": 3})
    with pytest.raises(RetryAfter) as raised:
        await bot.send_message(SUPERGROUP, "x")
    assert raised.value.retry_after == timedelta(seconds=3)


async def test_migration_shape(fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot) -> None:
    fake.migrations[str(GROUP)] = SUPERGROUP
    status, body = await call(http, fake, "sendMessage", chat_id=GROUP, text="x")
    assert_error(status, body, 400, MIGRATED, {"migrate_to_chat_id": SUPERGROUP})
    with pytest.raises(ChatMigrated) as raised:
        await bot.send_message(GROUP, "x")
    assert raised.value.new_chat_id == SUPERGROUP
    assert fake.sent == []


async def test_server_error_shape(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    fake.fail_500 = 1
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="x")
    assert_error(status, body, 500, "Internal Server Error")


async def test_wrong_token_is_401_for_every_method(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    for method, params in METHODS:
        async with http.post(f"{fake.base_url}/bot1:wrong/{method}", data=params) as response:
            assert_error(response.status, await response.json(), 401, UNAUTHORIZED)
    assert fake.sent == []
    with pytest.raises(InvalidToken):  # PTB's initialize() calls getMe
        async with Bot("1:wrong", base_url=f"{fake.base_url}/bot"):
            pass


async def test_unknown_method_is_404(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, fake, "sendTelepathy", chat_id=SUPERGROUP)
    assert_error(status, body, 404, METHOD_NOT_FOUND)


# the 4096 limit, counted in UTF-16 code units after entity parsing


@pytest.mark.parametrize(
    ("text", "parse_mode", "accepted"),
    [
        ("&amp;" * 4096, "HTML", True),  # 20480 characters sent, 4096 shown
        ("&amp;" * 4097, "HTML", False),
        ("<b>" + "x" * 4096 + "</b>", "HTML", True),  # tags count for nothing
        ("<b>" + "x" * 4097 + "</b>", "HTML", False),
        ("x" * 4096, None, True),
        ("x" * 4097, None, False),
        ("😀" * 2048, None, True),  # an emoji outside the BMP is 2 UTF-16 code units
        ("😀" * 2048 + "x", None, False),
        ("&#128512;" * 2048, "HTML", True),
        ("&#128512;" * 2048 + "x", "HTML", False),
        ("é" * 4096, None, True),  # 2 bytes in UTF-8, 1 unit in UTF-16
    ],
    ids=[
        "4096 entities", "4097 entities", "4096 in tags", "4097 in tags", "4096 plain", "4097 plain",
        "2048 emoji", "2048 emoji + 1", "2048 emoji entities", "2048 emoji entities + 1", "4096 two-byte",
    ],
)  # fmt: skip
async def test_length_limit_after_entity_parsing(
    fake: FakeTelegram, http: aiohttp.ClientSession, text: str, parse_mode: str | None, accepted: bool
) -> None:
    params: dict[str, Any] = {"chat_id": SUPERGROUP, "text": text}
    if parse_mode is not None:
        params["parse_mode"] = parse_mode
    status, body = await call(http, fake, "sendMessage", as_json=True, **params)
    if accepted:
        assert status == 200
        assert len(body["result"]["text"].encode("utf-16-le")) == 2 * 4096
        assert len(fake.sent) == 1
    else:
        assert_error(status, body, 400, TOO_LONG)
        assert fake.sent == []


# Telegram's HTML rules (https://core.telegram.org/bots/api#html-style, as TDLib's parse_html runs them)


SURROGATES = (
    "Text contains invalid Unicode characters after decoding HTML entities, check for unmatched surrogate code units"
)
ACCEPTED_HTML = [
    ("a & b", "a & b"),  # a stray & is text
    ("a > b", "a > b"),  # so is a stray >
    ("x &nbsp; y", "x &nbsp; y"),  # a named entity Telegram does not know stays as written
    ("&foo; &apos; &copy;", "&foo; &apos; &copy;"),
    ("&ampx", "&ampx"),
    ("&lt;&gt;&amp;&quot;", '<>&"'),  # the only named entities decoded
    ("&amp &lt", "& <"),  # the semicolon is optional
    ("&#65;&#x42;&#128512;", "AB😀"),  # numeric entities, decimal and hex
    ("&#X41; &#0; &#x110000;", "&#X41; &#0; &#x110000;"),  # not valid numeric entities: text
    ("<B>bold</b> <I>it</I >", "bold it"),  # tag names are case-insensitive
    ("<b>x</>", "x"),  # an empty end tag closes the last one
    ('<span class="tg-spoiler">s</span> <span class=tg-spoiler>t</span>', "s t"),
    ("<tg-spoiler>s</tg-spoiler>", "s"),
    ('<a href="https://example.com/?a=1&amp;b=2">link</a>', "link"),
    ("<a>https://example.com</a>", "https://example.com"),  # no href: Telegram links the text if it is a URL
    ('<tg-emoji emoji-id="5368324170671202286">👍</tg-emoji>', "👍"),
    ('<pre><code class="language-python">print(1 &lt; 2)</code></pre>', "print(1 < 2)"),
    ("<pre>x</pre><code>y</code>", "xy"),
    ("<blockquote expandable>q</blockquote>", "q"),  # an attribute without a value
    ("<u>u</u><ins>i</ins><s>s</s><strike>k</strike><del>d</del><em>e</em><strong>g</strong>", "uiskdeg"),
    ("<b class=\"ignored\" data-x='y'>x</b>", "x"),  # other attributes are ignored
]
REFUSED_HTML = [
    ("a < b", 'Unsupported start tag "" at byte offset 2'),  # a stray <
    ("1 <2 apples", 'Unsupported start tag "2" at byte offset 2'),
    ("1<2", "Unclosed start tag at byte offset 1"),
    ("<br>", 'Unsupported start tag "br" at byte offset 0'),
    ("<script>x</script>", 'Unsupported start tag "script" at byte offset 0'),
    ("é<p>x</p>", 'Unsupported start tag "p" at byte offset 2'),  # offsets are UTF-8 bytes
    ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
    ('<span class="spoiler">x</span>', 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
    ("<tg-emoji>x</tg-emoji>", "Invalid custom emoji identifier specified"),
    ('<tg-emoji emoji-id="abc">x</tg-emoji>', "Invalid custom emoji identifier specified"),
    ("<b>x", 'Can\'t find end tag corresponding to start tag "b"'),
    ("x</b>", "Unexpected end tag at byte offset 1"),
    ("<b><i>x</b></i>", 'Unmatched end tag at byte offset 7, expected "</i>", found "</b>"'),
    ("<a href=x?y>l</a>", "Unexpected end of name token at byte offset 8"),
    ('<a href="x>l</a>', "Unclosed start tag at byte offset 0"),
    ("<b x/>y</b>", 'Empty attribute name in the tag "b" at byte offset 0'),
    ("<b", "Unclosed start tag at byte offset 0"),
    ("<b>x</b", "Unclosed end tag at byte offset 4"),
    ("&#xD83D;", SURROGATES),
]  # fmt: skip


@pytest.mark.parametrize(("text", "shown"), ACCEPTED_HTML)
def test_html_telegram_accepts(text: str, shown: str) -> None:
    assert parse_html(text) == shown


@pytest.mark.parametrize(("text", "reason"), REFUSED_HTML)
def test_html_telegram_refuses(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as raised:
        parse_html(text)
    assert str(raised.value) == reason


@pytest.mark.parametrize(("text", "shown"), ACCEPTED_HTML[:6])
async def test_html_accepted_over_http(fake: FakeTelegram, http: aiohttp.ClientSession, text: str, shown: str) -> None:
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text=text, parse_mode="HTML")
    assert status == 200
    assert body["result"]["text"] == shown
    assert [message.text for message in fake.sent] == [text]  # what was sent, as sent


@pytest.mark.parametrize(("text", "reason"), REFUSED_HTML[:6])
async def test_html_refused_over_http_and_through_ptb(
    fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot, text: str, reason: str
) -> None:
    description = f"Bad Request: can't parse entities: {reason}"
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text=text, parse_mode="HTML")
    assert_error(status, body, 400, description)
    with pytest.raises(BadRequest) as raised:
        await bot.send_message(SUPERGROUP, text, parse_mode="HTML")
    assert raised.value.message == ptb_message(description)
    assert fake.sent == []


async def test_text_empty_after_parsing(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="<b> </b>", parse_mode="HTML")
    assert_error(status, body, 400, TEXT_EMPTY)


# parse_mode


@pytest.mark.parametrize("parse_mode", ["HTML", "html", "Html", "hTmL"])
async def test_parse_mode_is_case_insensitive(fake: FakeTelegram, http: aiohttp.ClientSession, parse_mode: str) -> None:
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="<b>x</b>", parse_mode=parse_mode)
    assert status == 200
    assert body["result"]["text"] == "x"


@pytest.mark.parametrize("parse_mode", ["", "None", "MarkdownV2", "markdown"])
async def test_other_parse_modes_keep_the_text(
    fake: FakeTelegram, http: aiohttp.ClientSession, parse_mode: str
) -> None:
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="<br> x", parse_mode=parse_mode)
    assert status == 200
    assert body["result"]["text"] == "<br> x"  # not parsed as HTML (Markdown's own rules are not modelled)


@pytest.mark.parametrize("parse_mode", ["XML", "htm", "HTML5"])
async def test_unknown_parse_mode_is_refused(
    fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot, parse_mode: str
) -> None:
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="x", parse_mode=parse_mode)
    assert_error(status, body, 400, UNSUPPORTED_PARSE_MODE)
    with pytest.raises(BadRequest, match="Unsupported parse_mode"):
        await bot.send_message(SUPERGROUP, "x", parse_mode=parse_mode)
    assert fake.sent == []


async def test_json_null_parse_mode_is_refused(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    """Telegram reads a JSON null as the text "null": a client that sends parse_mode null gets a 400."""
    status, body = await call(http, fake, "sendMessage", as_json=True, chat_id=SUPERGROUP, text="x", parse_mode=None)
    assert_error(status, body, 400, UNSUPPORTED_PARSE_MODE)


# getChat and getChatMember per chat type


@pytest.mark.parametrize(
    ("chat_id", "kind"), [(PRIVATE, "private"), (GROUP, "group"), (SUPERGROUP, "supergroup"), (CHANNEL, "channel")]
)
async def test_get_chat_answers_the_type_and_its_name_fields(
    fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot, chat_id: int | str, kind: str
) -> None:
    status, body = await call(http, fake, "getChat", chat_id=chat_id)
    assert status == 200
    chat = body["result"]
    assert chat["type"] == kind
    assert isinstance(chat["id"], int)
    if kind == "private":
        assert "first_name" in chat
        assert "title" not in chat
    else:
        assert "title" in chat
        assert "first_name" not in chat
    assert ("permissions" in chat) == (kind in ("group", "supergroup"))
    full = await bot.get_chat(chat_id)
    assert full.type == kind
    assert full.id == chat["id"]


async def test_a_channel_name_resolves_to_a_stable_supergroup_like_id(fake: FakeTelegram, bot: Bot) -> None:
    first, second = await bot.get_chat(CHANNEL), await bot.get_chat(CHANNEL.upper())
    assert first.id == second.id
    assert str(first.id).startswith("-100")
    assert first.username == CHANNEL.removeprefix("@")


async def test_channel_member_may_not_post_but_sees_the_chat(
    fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot
) -> None:
    fake.member_status[CHANNEL] = "member"
    assert (await bot.get_chat(CHANNEL)).type == "channel"
    member = await bot.get_chat_member(CHANNEL, BOT_ID)
    assert isinstance(member, ChatMemberMember)
    _, body = await call(http, fake, "getChatMember", chat_id=CHANNEL, user_id=BOT_ID)
    assert "can_post_messages" not in body["result"]
    status, body = await call(http, fake, "sendMessage", chat_id=CHANNEL, text="x")
    assert_error(status, body, 400, NEED_CHANNEL_ADMIN)
    fake.member_status[CHANNEL] = "administrator"
    _, body = await call(http, fake, "getChatMember", chat_id=CHANNEL, user_id=BOT_ID)
    assert body["result"]["can_post_messages"] is True
    message = await bot.send_message(CHANNEL, "posted")
    assert message.chat.type == "channel"
    assert message.sender_chat is not None
    assert message.from_user is None  # a channel post has no sender user


async def test_sent_message_names_the_chat_and_the_bot(bot: Bot) -> None:
    message = await bot.send_message(GROUP, "<i>hi</i> &amp; bye", parse_mode="html")
    assert message.text == "hi & bye"
    assert (message.chat.id, message.chat.type, message.chat.title) == (GROUP, "group", "Todos")
    assert message.from_user is not None
    assert message.from_user.id == BOT_ID
    private = await bot.send_message(PRIVATE, "hi")
    assert (private.chat.type, private.chat.first_name, private.chat.title) == ("private", "Todos", None)


# forum topics, replies and silent messages: read as the Bot API reads them


TOPIC = 7


async def test_a_message_into_an_open_forum_topic(fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot) -> None:
    fake.open_topic(SUPERGROUP, TOPIC)
    for as_json in (False, True):
        status, body = await call(http, fake, "sendMessage", as_json=as_json, chat_id=SUPERGROUP, text="in topic",
                                  message_thread_id=TOPIC)  # fmt: skip
        assert status == 200
        assert (body["result"]["message_thread_id"], body["result"]["is_topic_message"]) == (TOPIC, True)
    message = await bot.send_message(SUPERGROUP, "through PTB", message_thread_id=TOPIC)
    assert (message.message_thread_id, message.is_topic_message) == (TOPIC, True)
    assert [m.thread_id for m in fake.sent] == [TOPIC] * 3
    plain = await bot.send_message(SUPERGROUP, "the chat itself (General)")
    assert plain.message_thread_id is None
    assert fake.sent[-1].thread_id is None


@pytest.mark.parametrize(
    ("lose", "description"),
    [("close", TOPIC_CLOSED), ("delete", THREAD_NOT_FOUND), ("never made", THREAD_NOT_FOUND),
     ("not a forum", THREAD_NOT_FOUND)],
)  # fmt: skip
async def test_a_topic_that_is_not_open_refuses_the_message(
    fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot, lose: str, description: str
) -> None:
    """Closed: TOPIC_CLOSED (the bot is an administrator without can_manage_topics); deleted, never made, or
    a chat that is no forum: "message thread not found". A message without a topic still goes."""
    chat = GROUP if lose == "not a forum" else SUPERGROUP
    fake.open_topic(SUPERGROUP, TOPIC + 1)  # a forum, with another topic
    if lose in ("close", "delete"):
        fake.open_topic(SUPERGROUP, TOPIC)
        getattr(fake, f"{lose}_topic")(SUPERGROUP, TOPIC)
    status, body = await call(http, fake, "sendMessage", chat_id=chat, text="x", message_thread_id=TOPIC)
    assert_error(status, body, 400, description)
    with pytest.raises(BadRequest) as raised:
        await bot.send_message(chat, "x", message_thread_id=TOPIC)
    assert raised.value.message == ptb_message(description)
    assert fake.sent == []
    await bot.send_message(chat, "no topic")
    assert len(fake.sent) == 1


@pytest.mark.parametrize(("value", "thread_id"), [
    (TOPIC, TOPIC), (str(TOPIC), TOPIC), (f"{TOPIC}abc", TOPIC), ("abc", None), ("-7", None), ("0", None),
    ("", None), (None, None),
])  # fmt: skip
async def test_message_thread_id_is_read_by_its_leading_digits(
    fake: FakeTelegram, http: aiohttp.ClientSession, value: Any, thread_id: int | None
) -> None:
    """As the Bot API reads an integer parameter (td::to_integer): the leading digits, else 0, which is no
    topic (the chat itself); never a 400. So the notifier's settings, not the fake, reject a bad topic id."""
    fake.open_topic(SUPERGROUP, TOPIC)
    for as_json in (False, True):
        status, _ = await call(http, fake, "sendMessage", as_json=as_json, chat_id=SUPERGROUP, text="x",
                               message_thread_id=value)  # fmt: skip
        assert status == 200
    assert [m.thread_id for m in fake.sent] == [thread_id] * 2


@pytest.mark.parametrize(("value", "silent"), [
    (True, True), ("true", True), ("TRUE", True), ("yes", True), ("1", True), (1, True),
    (False, False), ("false", False), ("maybe", False), ("", False), (0, False), (None, False),
])  # fmt: skip
async def test_disable_notification_is_true_only_for_true_yes_or_1(
    fake: FakeTelegram, http: aiohttp.ClientSession, value: Any, silent: bool
) -> None:
    """As the Bot API reads a flag: "true", "yes" or "1" in any letter case; anything else is false, not a 400."""
    for as_json in (False, True):
        status, _ = await call(http, fake, "sendMessage", as_json=as_json, chat_id=SUPERGROUP, text="x",
                               disable_notification=value)  # fmt: skip
        assert status == 200
    assert [m.silent for m in fake.sent] == [silent] * 2


async def test_a_reply_to_a_message_of_the_chat(fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot) -> None:
    """reply_parameters as a JSON object in a form field, as an object in a JSON body, and through PTB."""
    first = await bot.send_message(SUPERGROUP, "announcement")
    reply = {"message_id": first.message_id, "allow_sending_without_reply": True}
    for as_json in (False, True):
        status, body = await call(http, fake, "sendMessage", as_json=as_json, chat_id=SUPERGROUP, text="reply",
                                  reply_parameters=reply)  # fmt: skip
        assert status == 200
        assert body["result"]["reply_to_message"]["message_id"] == first.message_id
        assert body["result"]["reply_to_message"]["chat"]["id"] == SUPERGROUP
    message = await bot.send_message(SUPERGROUP, "reply", reply_parameters=ReplyParameters(first.message_id))
    assert message.reply_to_message is not None
    assert message.reply_to_message.message_id == first.message_id
    assert [m.reply_to for m in fake.sent] == [None, first.message_id, first.message_id, first.message_id]


@pytest.mark.parametrize("missing", ["deleted", "never sent", "in another chat"])
async def test_a_reply_to_a_missing_message_goes_without_it_only_if_allowed(
    fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot, missing: str
) -> None:
    other = await bot.send_message(GROUP if missing == "in another chat" else SUPERGROUP, "target")
    target = other.message_id + 100 if missing == "never sent" else other.message_id
    if missing == "deleted":
        fake.delete_message(SUPERGROUP, target)
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="x",
                              reply_parameters={"message_id": target})  # fmt: skip
    assert_error(status, body, 400, REPLY_NOT_FOUND)
    allowed = {"message_id": target, "allow_sending_without_reply": True}
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="x", reply_parameters=allowed)
    assert status == 200
    assert "reply_to_message" not in body["result"]
    assert fake.sent[-1].reply_to is None
    message = await bot.send_message(
        SUPERGROUP, "x", reply_parameters=ReplyParameters(target, allow_sending_without_reply=True)
    )
    assert message.reply_to_message is None


@pytest.mark.parametrize(("value", "description"), [
    ("abc", REPLY_NOT_JSON),
    ("{not json", REPLY_NOT_JSON),
    (5, REPLY_NOT_OBJECT),
    ([1], REPLY_NOT_OBJECT),
    (None, REPLY_NOT_OBJECT),  # JSON null, as a client that writes every optional field sends it
    ({"allow_sending_without_reply": True}, REPLY_NO_MESSAGE_ID),
    ({"message_id": True}, REPLY_MESSAGE_ID_NOT_NUMBER),
    ({"message_id": None}, REPLY_MESSAGE_ID_NOT_NUMBER),
    ({"message_id": {}}, REPLY_MESSAGE_ID_NOT_NUMBER),
    ({"message_id": "abc"}, REPLY_MESSAGE_ID_INVALID),
    ({"message_id": 1.5}, REPLY_MESSAGE_ID_INVALID),
    ({"message_id": 1, "allow_sending_without_reply": "yes"}, REPLY_FLAG_NOT_BOOLEAN),
    ({"message_id": 1, "allow_sending_without_reply": 1}, REPLY_FLAG_NOT_BOOLEAN),
])  # fmt: skip
async def test_malformed_reply_parameters_are_refused_in_telegrams_words(
    fake: FakeTelegram, http: aiohttp.ClientSession, value: Any, description: str
) -> None:
    """reply_parameters must be a JSON object with an integer message_id and a boolean flag (read strictly, unlike
    the flat parameters): the same 400 for a form and a JSON body, and nothing sent."""
    for as_json in (False, True):
        status, body = await call(http, fake, "sendMessage", as_json=as_json, chat_id=SUPERGROUP, text="x",
                                  reply_parameters=value)  # fmt: skip
        assert_error(status, body, 400, description)
    assert fake.sent == []


@pytest.mark.parametrize("value", ["", {}, {"message_id": -3}, {"message_id": "0"}])
async def test_empty_reply_parameters_are_no_reply(fake: FakeTelegram, http: aiohttp.ClientSession, value: Any) -> None:
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="x", reply_parameters=value)
    assert status == 200
    assert "reply_to_message" not in body["result"]


async def test_a_message_id_may_be_a_json_string(fake: FakeTelegram, http: aiohttp.ClientSession, bot: Bot) -> None:
    first = await bot.send_message(SUPERGROUP, "announcement")
    reply = {"message_id": str(first.message_id)}
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="x", reply_parameters=reply)
    assert status == 200
    assert body["result"]["reply_to_message"]["message_id"] == first.message_id


# a client that gives up: Telegram has the request, the message is posted, only the answer is lost


async def timed_out_call(fake: FakeTelegram, method: str, timeout: float = 0.3, **params: Any) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        with pytest.raises(asyncio.TimeoutError):
            await call(session, fake, method, **params)


async def test_a_client_timeout_still_delivers_with_the_answer_lost(
    fake: FakeTelegram, http: aiohttp.ClientSession
) -> None:
    fake.slow_requests, fake.slow_delay = 1, 1.0
    await timed_out_call(fake, "sendMessage", chat_id=SUPERGROUP, text="slow")
    assert fake.sent == []  # not yet: Telegram is still working on it
    await wait_for(lambda: fake.sent)
    [message] = fake.sent
    assert (message.text, message.answer_lost) == ("slow", True)
    await wait_for(lambda: fake.requests[0].status == CLIENT_GONE)
    assert fake.requests[0].sent is message
    assert refused_sends(fake.requests) == []  # the client gave up; Telegram refused nothing

    status, _ = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="quick")
    assert status == 200
    assert [(m.text, m.answer_lost) for m in fake.sent] == [("slow", True), ("quick", False)]
    assert fake.requests[1].sent is fake.sent[1]


async def test_a_client_timeout_on_a_refused_send_delivers_nothing(fake: FakeTelegram) -> None:
    fake.delay = 0.6
    fake.revoke_rights(SUPERGROUP)
    await timed_out_call(fake, "sendMessage", chat_id=SUPERGROUP, text="no rights")
    await wait_for(lambda: fake.requests[0].status == CLIENT_GONE)
    assert fake.sent == []
    assert fake.requests[0].sent is None


async def test_a_client_that_waits_long_enough_is_answered(fake: FakeTelegram, http: aiohttp.ClientSession) -> None:
    fake.delay = 0.2
    status, body = await call(http, fake, "sendMessage", chat_id=SUPERGROUP, text="patient")
    assert status == 200
    assert body["result"]["text"] == "patient"
    assert fake.sent[0].answer_lost is False
    assert fake.requests[0].status == 200


async def test_faulty_telegram_slow_answer_marks_the_answer_lost() -> None:
    async with FaultyTelegram(token=TOKEN, share_slow=1.0, slow_delay=0.8) as faulty:
        await timed_out_call(faulty, "sendMessage", chat_id=SUPERGROUP, text="slow")
        assert len(faulty.sent) == 1  # accepted at once, answered late
        await wait_for(lambda: faulty.sent[0].answer_lost)
        assert faulty.slow_ids == {faulty.sent[0].message_id}
        assert faulty.requests[0].status == CLIENT_GONE
        assert refused_sends(faulty.requests) == []


async def test_faulty_telegram_answer_delay_within_the_timeout_loses_nothing() -> None:
    async with FaultyTelegram(token=TOKEN, answer_delay=0.1) as faulty, aiohttp.ClientSession() as http:
        status, _ = await call(http, faulty, "sendMessage", chat_id=SUPERGROUP, text="on time")
        await timed_out_call(faulty, "sendMessage", timeout=0.05, chat_id=SUPERGROUP, text="late")
        await wait_for(lambda: faulty.requests[-1].status == CLIENT_GONE)
    assert status == 200
    assert [(m.text, m.answer_lost) for m in faulty.sent] == [("on time", False), ("late", True)]


async def test_hooked_telegram_marks_the_answer_lost_when_the_client_left_during_the_hook() -> None:
    async def slow_hook() -> None:
        await asyncio.sleep(0.6)

    async with HookedTelegram(token=TOKEN) as hooked:
        hooked.before_answering(1, slow_hook)
        await timed_out_call(hooked, "sendMessage", chat_id=SUPERGROUP, text="hooked")
        await wait_for(lambda: 1 in hooked.hooked)
        await wait_for(lambda: hooked.requests[0].status == CLIENT_GONE)
    assert [(m.text, m.answer_lost) for m in hooked.sent] == [("hooked", True)]


def test_the_log_scan_of_the_suite_finds_a_leaked_secret() -> None:
    """The session-end check of tests/conftest.py is only as good as this: a secret in any *.log is found.
    (Outside pytest's temporary directory, which that check scans.)"""
    with tempfile.TemporaryDirectory() as root:
        _find_a_leak_in(Path(root))


def _find_a_leak_in(tmp_path: Path) -> None:
    (tmp_path / "deep" / "down").mkdir(parents=True)
    (tmp_path / "deep" / "down" / "web.log").write_text(f"connecting to postgres://postgres:{DB_PASSWORD}@x/db\n")
    (tmp_path / "notifier.log").write_text("nothing to see\n")
    assert leaked_secrets(tmp_path) == [f"the database password in {tmp_path / 'deep' / 'down' / 'web.log'}"]
