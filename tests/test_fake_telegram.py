"""The fake Telegram Bot API itself: getChatMember, sendChatAction, the bot's rights per chat and outages.

Each behaviour is checked over raw HTTP (the wire format) and through python-telegram-bot (what the
notifier parses), so a field PTB requires or an error it maps differently shows up here first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
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
)
from telegram.error import BadRequest, Forbidden, NetworkError

from tests.fake_telegram import (
    BOT_KICKED,
    BOT_NOT_MEMBER,
    CHAT_ID_EMPTY,
    CHAT_NOT_FOUND,
    INVALID_USER_ID,
    KICKED,
    NOT_ENOUGH_RIGHTS,
    WRONG_ACTION,
    FakeTelegram,
)

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
    """POST one Bot API method (form-encoded, or JSON); return the HTTP status and the decoded body."""
    url = f"{fake.base_url}/bot{fake.token}/{method}"
    if as_json:
        request = http.post(url, json=params)
    else:
        request = http.post(url, data={key: str(value) for key, value in params.items()})
    async with request as response:
        body: dict[str, Any] = await response.json()
        return response.status, body


def assert_error(status: int, body: dict[str, Any], code: int, description: str) -> None:
    assert status == code
    assert body == {"ok": False, "error_code": code, "description": description}


def ptb_message(description: str) -> str:
    """The message PTB's error carries for Telegram's description: "Bad Request: " dropped, capitalized."""
    message = description.removeprefix("Bad Request: ")
    return message[:1].upper() + message[1:]


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
