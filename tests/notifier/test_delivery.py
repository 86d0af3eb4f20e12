"""Replicas deliver every event exactly once: formatting on the wire, sharing, crashes, SIGTERM, dedupe."""

import json
import signal
import time
import uuid

from notifier.formatting import MAY_REPEAT_NOTE, parse_message
from notifier.sent_log import SentLog
from streams import subjects
from streams.subjects import Change
from tests.chaos.telegram_faults import FaultyTelegram
from tests.notifier.conftest import CHAT_ID, drained, make_todo, publish, wait_until


def sent_ids(fake):
    return [parse_message(message.text)[0]["id"] for message in fake.sent]


async def test_each_kind_arrives_as_the_contract_message(fake, js, replicas):
    """created/updated/deleted: headline, exact payload, HTML parse mode, link previews off; nasty text intact."""
    replica = replicas(fake)
    await replica.wait_ready()
    nasty = make_todo("<b>&amp; \"quoted\" 'single' </pre> 🚀👩‍👩‍👧 < > & done"[:140])
    todos = {Change.CREATED: make_todo(), Change.UPDATED: nasty, Change.DELETED: make_todo()}
    for change, todo in todos.items():
        await publish(js, change, todo)
    await wait_until(lambda: len(fake.sent) == 3)
    by_headline = {message.text.splitlines()[0]: message for message in fake.sent}
    assert set(by_headline) == {"📝 Todo created", "✏️ Todo updated", "🗑 Todo deleted"}
    assert parse_message(by_headline["✏️ Todo updated"].text) == [nasty]
    assert parse_message(by_headline["📝 Todo created"].text) == [todos[Change.CREATED]]
    for request in (r for r in fake.requests if r.method.lower() == "sendmessage"):
        assert request.params["parse_mode"] == "HTML"
        assert request.params["link_preview_options"] == {"is_disabled": True}
        assert request.chat_id == str(CHAT_ID)


async def test_three_replicas_share_300_events_each_sent_once(fake, js, replicas):
    """Every event is sent exactly once, and every replica sends some."""
    fake.delay = 0.01
    group = [replicas(fake, NOTIFIER_CONCURRENCY="8") for _ in range(3)]
    for replica in group:
        await replica.wait_ready()
    for _ in range(300):
        await publish(js)
    await wait_until(lambda: len(fake.sent) >= 300, 60, "300 messages")
    await drained(js, *group)
    ids = sent_ids(fake)
    assert len(ids) == 300
    assert len(set(ids)) == 300
    per_replica = [await replica.metric("notifier_events_sent_total") for replica in group]
    assert sum(per_replica) == 300
    assert all(count > 0 for count in per_replica), per_replica


async def test_sigkill_while_holding_events_another_replica_sends_them(fake, js, replicas):
    """A replica killed mid-send loses nothing: once the ack wait has run out, another one sends its events.
    (That a slow send stays with its replica while it lives: test_handover.)"""
    first = replicas(fake)
    await first.wait_ready()
    fake.slow_requests, fake.slow_delay = 5, 60.0
    for _ in range(5):
        await publish(js)
    sends = lambda: [r for r in fake.requests if r.method.lower() == "sendmessage"]  # noqa: E731
    await wait_until(lambda: len(sends()) == 5, what="5 slow requests")
    second = replicas(fake)
    await second.wait_ready()
    assert await second.metric("notifier_events_received_total") == 0  # the first replica holds them
    first.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await wait_until(lambda: len(fake.sent) == 5, 15, "redelivery")
    await drained(js, second)
    assert all(message.at > killed_at for message in fake.sent)  # sent by the second replica, after the kill
    assert await second.metric("notifier_events_received_total") == 5
    assert len(fake.sent) == 5
    assert len(set(sent_ids(fake))) == 5


async def test_already_sent_event_is_not_sent_again(fake, js, replicas):
    """An event recorded as sent (crash between Telegram's ok and the ack) is acked without a message."""
    replica = replicas(fake)
    await replica.wait_ready()
    sent_before_crash = str(uuid.uuid4())
    await SentLog(await js.key_value(subjects.SENT_BUCKET), js).sent([sent_before_crash])
    await publish(js, event_id=sent_before_crash)
    first = await publish(js)
    await wait_until(lambda: len(fake.sent) == 1)
    # the same event again under a new Nats-Msg-Id, as a replay would carry it
    await js.publish(Change.CREATED.subject, json.dumps(make_todo()).encode(), headers={
        subjects.MSG_ID_HEADER: str(uuid.uuid4()), subjects.EVENT_ID_HEADER: first,
    })  # fmt: skip
    await wait_until(lambda: replica.metric("notifier_duplicates_suppressed_total"), what="duplicate counted")
    await wait_until(async_equals(replica, "notifier_duplicates_suppressed_total", 2), what="two duplicates")
    assert len(fake.sent) == 1


def async_equals(replica, name, value):
    async def check():
        return await replica.metric(name) == value

    return check


async def test_sigterm_during_a_burst_loses_nothing(fake, js, replicas):
    """SIGTERM mid-burst: exit 0 in bounded time; after a restart every event is delivered exactly once."""
    fake.delay = 0.05
    first = replicas(fake, NOTIFIER_CONCURRENCY="4")
    await first.wait_ready()
    for _ in range(100):
        await publish(js)
    await wait_until(lambda: len(fake.sent) >= 10, what="burst under way")
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(20) == 0  # README: within 15 s
    assert len(fake.sent) < 100  # it stopped, rather than finishing the burst
    assert any(line.get("event") == "notifier.stopped" for line in first.log_lines())
    second = replicas(fake)
    await second.wait_ready()
    await wait_until(lambda: len(fake.sent) >= 100, 30, "all 100 messages")
    await drained(js, second)
    assert sorted(sent_ids(fake)) == sorted(set(sent_ids(fake)))
    assert len(fake.sent) == 100


async def test_token_never_logged_even_at_debug(fake, js, replicas):
    """With LOG_LEVEL=debug, through sends and failures, the token is in no log line."""
    fake.fail_500 = 1
    replica = replicas(fake, LOG_LEVEL="debug")
    await replica.wait_ready()
    await publish(js)
    await wait_until(lambda: len(fake.sent) == 1)
    replica.signal(signal.SIGTERM)
    assert await replica.wait_exit() == 0
    log = replica.log()
    assert "telegram.send_failed" in log  # the failure was logged...
    assert fake.token not in log  # ...without the token
    assert fake.token.split(":")[1] not in log


async def test_deleted_consumer_is_recreated(fake, js, replicas):
    """The consumer deleted under a running replica comes back; later events still arrive."""
    replica = replicas(fake)
    await replica.wait_ready()
    await js.delete_consumer(subjects.STREAM, subjects.CONSUMER)
    await wait_until(
        lambda: any(line.get("event") == "consumer.lost" for line in replica.log_lines()), what="loss seen"
    )
    await replica.wait_ready()
    await publish(js)
    await wait_until(lambda: len(fake.sent) == 1)


async def test_log_sink_needs_no_telegram(js, replicas):
    """NOTIFIER_SINK=log: no Telegram settings, the message is logged and the event acked."""
    replica = replicas(None, NOTIFIER_SINK="log")
    await replica.wait_ready()
    todo = make_todo("logged")
    await publish(js, todo=todo)

    def logged():
        return [line for line in replica.log_lines() if line.get("event") == "telegram.would_send"]

    await wait_until(logged, what="the logged message")
    assert parse_message(logged()[0]["text"]) == [todo]

    async def acked():
        info = await js.consumer_info(subjects.STREAM, subjects.CONSUMER)
        return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq == 1

    await wait_until(acked, what="the event acked")


async def test_a_grouped_message_repeated_after_a_crash_says_it_may_repeat(js, replicas):
    """SIGKILL while Telegram answers a grouped message: Telegram has it, nobody read the ok. The next
    replica sends the events again (the Bot API has no idempotency key) and says, for each, that it may
    repeat an earlier message; a first send carries no such line."""
    todos = [make_todo(f"grouped {n}") for n in range(4)]
    for todo in todos:  # a backlog before the replica starts: one message for all four
        await publish(js, todo=todo)
    async with FaultyTelegram(answer_delay=60.0) as slow:
        env = {"TELEGRAM_CHAT_RATE": "1/1s", "TELEGRAM_GROUP_RATE": "off", "TELEGRAM_TIMEOUT": "120"}
        first = replicas(slow, **env)
        await wait_until(lambda: len(slow.sent) == 1, 20, "the grouped message accepted")
        assert parse_message(slow.sent[0].text) == todos
        first.signal(signal.SIGKILL)
        slow.answer_delay = 0.0
        second = replicas(slow, **env)
        await second.wait_ready()
        await wait_until(lambda: len(slow.sent) >= 2, 20, "the events sent again")
        await drained(js, second)
    [original, *repeats] = slow.sent
    assert [todo for m in repeats for todo in parse_message(m.text)] == todos
    for message in repeats:  # every event sent again carries the line, before its block
        assert message.text.count(MAY_REPEAT_NOTE) == len(parse_message(message.text))
    assert MAY_REPEAT_NOTE not in original.text
