"""What users of chat notifiers ask for, end to end: a forum topic, silent messages, one thread per todo,
late events that say so, and a log sink that reads like the chat; and the settings behind them."""

from __future__ import annotations

import json
import os
import signal
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.errors import KeyNotFoundError, NoKeysError

from notifier.formatting import LATE_MARK, parse_message
from notifier.settings import Settings, parse_duration
from streams import subjects
from streams.dlq import list_dead_letters
from streams.payload import format_timestamp
from streams.permissions import NOTIFIER
from streams.subjects import Change
from tests.notifier.conftest import CHAT_ID, drained, make_todo, publish, wait_until
from tests.services import as_identity

TOPIC = 7


def sends(fake):
    return [request for request in fake.requests if request.method.lower() == "sendmessage"]


async def not_ready(replica):
    return await replica.status("/readyz") == 503


async def announcement_recorded(js, todo, thread_id=None):
    """Wait until the replies bucket holds the announcement of `todo` (written after Telegram's ok, not awaited
    by the ack); return the message id recorded."""
    kv = await js.key_value(subjects.REPLIES_BUCKET)
    key = subjects.reply_key(CHAT_ID, thread_id, todo["id"])
    found: list[int] = []

    async def recorded():
        try:
            found.append(int((await kv.get(key)).value))
        except KeyNotFoundError:
            return False
        return True

    await wait_until(recorded, what=f"the announcement of {todo['task']!r} recorded")
    return found[-1]


# forum topics and silent messages


async def test_messages_go_into_the_forum_topic_silently(fake, js, replicas):
    """TELEGRAM_THREAD_ID and TELEGRAM_SILENT=true: every message lands in that topic, without a sound."""
    fake.open_topic(CHAT_ID, TOPIC)
    replica = replicas(fake, TELEGRAM_THREAD_ID=str(TOPIC), TELEGRAM_SILENT="true")
    await replica.wait_ready()
    for _ in range(3):
        await publish(js)
    await wait_until(lambda: len(fake.sent) == 3, what="three messages")
    assert [(message.thread_id, message.silent) for message in fake.sent] == [(TOPIC, True)] * 3
    for request in sends(fake):
        assert request.params["message_thread_id"] == str(TOPIC)
        assert request.params["disable_notification"] == "true"


async def test_by_default_messages_go_to_the_chat_with_a_sound(fake, js, replicas):
    """Neither setting: no message_thread_id, no disable_notification on the wire."""
    replica = replicas(fake)
    await replica.wait_ready()
    await publish(js)
    await wait_until(lambda: len(fake.sent) == 1)
    assert (fake.sent[0].thread_id, fake.sent[0].silent) == (None, False)
    assert not {"message_thread_id", "disable_notification"} & set(sends(fake)[0].params)


@pytest.mark.parametrize("lose", ["close", "delete"])
async def test_a_closed_or_deleted_topic_holds_the_events_until_it_is_back(fake, js, replicas, lose):
    """A topic closed (TOPIC_CLOSED) or deleted (message thread not found) under the notifier is a pause of
    the bot: not ready, the events wait (no dead letter, no delivery spent), tried again after each probe;
    once the topic is open again they all arrive, in it."""
    fake.open_topic(CHAT_ID, TOPIC)
    replica = replicas(fake, TELEGRAM_THREAD_ID=str(TOPIC))
    await replica.wait_ready()
    getattr(fake, f"{lose}_topic")(CHAT_ID, TOPIC)
    for _ in range(3):
        await publish(js)
    await wait_until(lambda: not_ready(replica), what="the pause")
    refused = lambda: [r for r in sends(fake) if r.status == 400]  # noqa: E731
    tries = len(refused())
    # no Bot API method reads a topic: each probe finds the bot's rights intact, then a send finds the topic
    await wait_until(lambda: len(refused()) > tries, 20, "another try of the topic after a probe")
    assert fake.sent == []
    assert await list_dead_letters(js) == []
    assert await replica.metric("notifier_paused") == 1
    info = await js.consumer_info(subjects.STREAM, subjects.CONSUMER)
    assert info.num_redelivered == 0
    assert "telegram.halted" in {line.get("event") for line in replica.log_lines()}
    fake.open_topic(CHAT_ID, TOPIC)
    await wait_until(lambda: len(fake.sent) == 3, 30, "delivery once the topic is open")
    assert {message.thread_id for message in fake.sent} == {TOPIC}
    await drained(js, replica)
    assert await list_dead_letters(js) == []
    assert await replica.status("/readyz") == 200


# one thread per todo


async def test_changes_reply_to_the_announcement_even_from_another_replica(fake, js, replicas, nats_server):
    """The creation's message id is shared through KV: a replica that never saw the creation replies to it
    with the update and the deletion. Both replicas run as the `notifier` NATS user, so its permissions on
    the replies bucket are exercised too."""
    as_notifier = {"NATS_URL": as_identity(nats_server.url, NOTIFIER)}
    first = replicas(fake, **as_notifier)
    await first.wait_ready()
    todo = make_todo("threaded")
    await publish(js, Change.CREATED, todo)
    await wait_until(lambda: len(fake.sent) == 1, what="the announcement")
    [announcement] = fake.sent
    assert announcement.reply_to is None
    assert "reply_parameters" not in sends(fake)[0].params
    assert await announcement_recorded(js, todo) == announcement.message_id
    first.signal(signal.SIGTERM)
    assert await first.wait_exit() == 0

    second = replicas(fake, **as_notifier)
    await second.wait_ready()
    done = {**todo, "done": True}
    await publish(js, Change.UPDATED, done)
    await wait_until(lambda: len(fake.sent) == 2, what="the update")
    await publish(js, Change.DELETED, done)
    await wait_until(lambda: len(fake.sent) == 3, what="the deletion")
    await publish(js, Change.UPDATED, make_todo("never announced here"))
    await wait_until(lambda: len(fake.sent) == 4, what="an update without an announcement")
    assert [message.reply_to for message in fake.sent] == [None, announcement.message_id,
                                                          announcement.message_id, None]  # fmt: skip
    assert sends(fake)[1].params["reply_parameters"] == {
        "message_id": announcement.message_id,
        "allow_sending_without_reply": True,
    }
    await drained(js, second)


async def test_a_deleted_announcement_does_not_fail_the_reply(fake, js, replicas):
    """The announcement was deleted from the chat: the update is still sent (without the reply), not refused."""
    replica = replicas(fake)
    await replica.wait_ready()
    todo = make_todo("announcement deleted")
    await publish(js, Change.CREATED, todo)
    await wait_until(lambda: len(fake.sent) == 1)
    message_id = await announcement_recorded(js, todo)
    fake.delete_message(CHAT_ID, message_id)
    await publish(js, Change.UPDATED, {**todo, "done": True})
    await wait_until(lambda: len(fake.sent) == 2, what="the update, sent anyway")
    assert fake.sent[1].reply_to is None
    assert [request.status for request in sends(fake)] == [200, 200]
    assert sends(fake)[1].params["reply_parameters"]["message_id"] == message_id
    await drained(js, replica)
    assert await list_dead_letters(js) == []


async def test_a_grouped_message_announces_each_creation_and_replies_to_nothing(fake, js, replicas):
    """Paced: a backlog of three creations goes as one message, recorded as the announcement of each; a
    later update alone replies to it; two changes grouped in one message reply to nothing (the message
    belongs to no single todo's thread)."""
    todos = [make_todo(f"grouped {n}") for n in range(3)]
    for todo in todos:  # a backlog before the replica starts: one message for the three
        await publish(js, Change.CREATED, todo)
    replica = replicas(fake, TELEGRAM_CHAT_RATE="1/2s", TELEGRAM_GROUP_RATE="off")
    await wait_until(lambda: len(fake.sent) == 1, 20, "the grouped announcement")
    [grouped] = fake.sent
    assert parse_message(grouped.text) == todos
    assert grouped.reply_to is None
    for todo in todos:
        assert await announcement_recorded(js, todo) == grouped.message_id
    await publish(js, Change.UPDATED, {**todos[1], "done": True})
    await wait_until(lambda: len(fake.sent) == 2, 20, "the update")
    assert fake.sent[1].reply_to == grouped.message_id
    # both queued long before the chat's next slot (2 s after the update): they share one message
    await publish(js, Change.DELETED, todos[0])
    await publish(js, Change.DELETED, todos[2])
    await wait_until(lambda: len(fake.sent) == 3, 20, "the two deletions")
    assert parse_message(fake.sent[2].text) == [todos[0], todos[2]]
    assert fake.sent[2].reply_to is None
    assert "reply_parameters" not in sends(fake)[2].params
    await drained(js, replica)


async def test_a_failing_replies_bucket_never_holds_or_loses_an_event(fake, js, replicas):
    """The replies bucket deleted under a running replica: the lookup finds nothing and the record fails, and
    every event is still sent once (the update without its reply) and acked; nothing waits or dies."""
    replica = replicas(fake)
    await replica.wait_ready()
    todo = make_todo("bucket gone")
    await publish(js, Change.CREATED, todo)
    await wait_until(lambda: len(fake.sent) == 1)
    await announcement_recorded(js, todo)
    await js.delete_key_value(subjects.REPLIES_BUCKET)
    await publish(js, Change.UPDATED, {**todo, "done": True})
    await publish(js, Change.CREATED, make_todo("announced, not recorded"))
    await wait_until(lambda: len(fake.sent) == 3, what="both events, sent anyway")
    await drained(js, replica)
    assert len(fake.sent) == 3
    assert [message.reply_to for message in fake.sent] == [None, None, None]
    failed = lambda: [line for line in replica.log_lines() if line.get("event") == "replies.record_failed"]  # noqa: E731
    await wait_until(failed, what="the record's failure, logged")
    assert await list_dead_letters(js) == []


async def test_replies_can_be_turned_off(fake, js, replicas):
    """TELEGRAM_REPLIES=false: no reply_parameters, and nothing written to the replies bucket."""
    replica = replicas(fake, TELEGRAM_REPLIES="false")
    await replica.wait_ready()
    todo = make_todo("no thread")
    await publish(js, Change.CREATED, todo)
    await wait_until(lambda: len(fake.sent) == 1)
    await publish(js, Change.UPDATED, {**todo, "done": True})
    await wait_until(lambda: len(fake.sent) == 2)
    await drained(js, replica)
    assert [message.reply_to for message in fake.sent] == [None, None]
    assert all("reply_parameters" not in request.params for request in sends(fake))
    with pytest.raises(NoKeysError):
        await (await js.key_value(subjects.REPLIES_BUCKET)).keys()


# late events


async def test_a_late_event_says_when_its_change_happened(fake, js, replicas):
    """An update made 3 h 2 min ago carries a line with the time of the change and how late it is; a fresh
    one does not; a deletion is timed by the stream (its payload is the todo as it was before), so a
    deletion of a todo last changed long ago is not late."""
    replica = replicas(fake)  # NOTIFIER_LATE_AFTER: 5 minutes by default
    await replica.wait_ready()
    long_ago = datetime.now(UTC) - timedelta(hours=3, minutes=2)
    stale = {**make_todo("changed long ago"), "createdAt": format_timestamp(long_ago),
             "updatedAt": format_timestamp(long_ago)}  # fmt: skip
    fresh = make_todo("changed just now")
    await publish(js, Change.UPDATED, stale)
    await publish(js, Change.CREATED, fresh)
    await publish(js, Change.DELETED, stale)
    await wait_until(lambda: len(fake.sent) == 3, what="three messages")
    by_headline = {message.text.splitlines()[0]: message.text for message in fake.sent}
    late = by_headline["✏️ Todo updated"]
    assert late.splitlines()[1] == f"{LATE_MARK} 3 h 2 min late: changed {long_ago:%Y-%m-%d %H:%M:%S} UTC"
    assert parse_message(late) == [stale]
    assert LATE_MARK not in by_headline["📝 Todo created"]
    assert LATE_MARK not in by_headline["🗑 Todo deleted"]


async def test_late_after_can_be_raised_or_turned_off(fake, js, replicas):
    """NOTIFIER_LATE_AFTER=4h: 3 hours is not late; =off: nothing ever is."""
    day_ago = format_timestamp(datetime.now(UTC) - timedelta(days=1))
    three_hours_ago = format_timestamp(datetime.now(UTC) - timedelta(hours=3))
    replica = replicas(fake, NOTIFIER_LATE_AFTER="4h")
    await replica.wait_ready()
    await publish(js, Change.UPDATED, {**make_todo("3 h"), "updatedAt": three_hours_ago})
    await publish(js, Change.UPDATED, {**make_todo("1 d"), "updatedAt": day_ago})
    await wait_until(lambda: len(fake.sent) == 2)
    late = {parse_message(m.text)[0]["task"]: LATE_MARK in m.text for m in fake.sent}
    assert late == {"3 h": False, "1 d": True}
    replica.signal(signal.SIGTERM)
    await replica.wait_exit()
    off = replicas(fake, NOTIFIER_LATE_AFTER="off")
    await off.wait_ready()
    await publish(js, Change.UPDATED, {**make_todo("1 d, off"), "updatedAt": day_ago})
    await wait_until(lambda: len(fake.sent) == 3)
    assert LATE_MARK not in fake.sent[2].text


# the log sink


async def test_log_sink_in_a_console_log_reads_like_the_chat(js, replicas):
    """NOTIFIER_SINK=log, LOG_FORMAT=console (what `just up` shows without Telegram): the message below its
    log line as Telegram would show it: no tags, entities unescaped, the JSON on its own lines."""
    replica = replicas(None, NOTIFIER_SINK="log", LOG_FORMAT="console")
    await replica.wait_ready()
    todo = make_todo('<b>bold</b> & "quoted" </pre>')
    await publish(js, todo=todo)
    await wait_until(lambda: "telegram.would_send" in replica.log(), what="the logged message")
    lines = replica.log().splitlines()
    start = next(n for n, line in enumerate(lines) if "telegram.would_send" in line)
    body = []
    for line in lines[start + 1 :]:
        body.append(line)
        if line == "    }":  # the end of the payload's JSON
            break
    assert body[0] == "    📝 Todo created"
    assert json.loads("\n".join(body[1:])) == todo
    assert '      "task": "<b>bold</b> & \\"quoted\\" </pre>",' in body  # the task as the chat shows it
    for markup in ("<pre>", "<code", "&amp;", "&quot;", "&lt;"):
        assert markup not in replica.log()


# settings


def env_settings(monkeypatch, **env: str) -> Settings:
    for key in list(os.environ):
        if key.startswith(("TELEGRAM_", "NOTIFIER_", "NATS_")) or key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("NOTIFIER_SINK", "log")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings.from_env()


def test_defaults(monkeypatch):
    settings = env_settings(monkeypatch)
    assert (settings.telegram_thread_id, settings.telegram_silent, settings.telegram_replies) == (None, False, True)
    assert settings.notifier_late_after == 300
    assert settings.telegram_proxy is None


@pytest.mark.parametrize(("text", "seconds"), [
    ("300", 300), ("90s", 90), ("5m", 300), ("5min", 300), ("1.5h", 5400), ("500ms", 0.5), (" 2 h ", 7200),
    ("0", 0), ("off", 0),
])  # fmt: skip
def test_late_after_takes_seconds_or_a_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("variable", "value"), [
    ("TELEGRAM_THREAD_ID", "general"), ("TELEGRAM_THREAD_ID", "0"), ("TELEGRAM_THREAD_ID", "-7"),
    ("TELEGRAM_THREAD_ID", "7.5"), ("TELEGRAM_THREAD_ID", "4294967296"),
    ("TELEGRAM_SILENT", "maybe"), ("TELEGRAM_REPLIES", "sometimes"),
    ("NOTIFIER_LATE_AFTER", "soon"), ("NOTIFIER_LATE_AFTER", "-5m"),
    ("HTTPS_PROXY", "socks5://proxy:1080"), ("HTTP_PROXY", "proxy:3128"), ("HTTPS_PROXY", "http://:3128"),
])  # fmt: skip
def test_bad_values_stop_the_notifier_naming_the_variable(monkeypatch, variable, value):
    with pytest.raises(SystemExit) as stopped:
        env_settings(monkeypatch, **{variable: value})
    message = str(stopped.value.code)
    assert variable in message
    assert "\n" not in message


def test_good_values(monkeypatch):
    settings = env_settings(monkeypatch, TELEGRAM_THREAD_ID=" 42 ", TELEGRAM_SILENT="yes", TELEGRAM_REPLIES="0",
                            NOTIFIER_LATE_AFTER="10m")  # fmt: skip
    assert (settings.telegram_thread_id, settings.telegram_silent, settings.telegram_replies) == (42, True, False)
    assert settings.notifier_late_after == 600
    assert env_settings(monkeypatch, TELEGRAM_THREAD_ID="").telegram_thread_id is None


@pytest.mark.parametrize(("base", "env", "proxy"), [
    ("https://api.telegram.org", {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
    ("https://api.telegram.org", {"HTTP_PROXY": "http://p:3128"}, None),  # the scheme of the Bot API decides
    ("http://127.0.0.1:8090", {"HTTP_PROXY": "http://p:3128", "HTTPS_PROXY": "http://q:3128"}, "http://p:3128"),
    ("https://api.telegram.org", {"HTTPS_PROXY": "https://p:3129", "NO_PROXY": ".telegram.org"}, None),
    ("https://api.telegram.org", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "*"}, None),
    ("https://api.telegram.org", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "telegram.org:8443"}, "http://p:3128"),
    ("https://api.telegram.org", {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "xtelegram.org"}, "http://p:3128"),
    ("https://api.telegram.org", {"https_proxy": "http://p:3128"}, "http://p:3128"),  # either letter case
])  # fmt: skip
def test_the_proxy_is_chosen_as_curl_chooses_it(monkeypatch, base, env, proxy):
    assert env_settings(monkeypatch, TELEGRAM_API_BASE_URL=base, **env).telegram_proxy == proxy
