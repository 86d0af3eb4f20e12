"""Telegram's rate limits with several replicas: shared pacing, shared 429 pauses, grouped messages.

The fake enforces Telegram's limits scaled down 15 times in time (1 message per 1/15 s per chat,
20 messages per 4 s per group) and the replicas are told the same limits.
"""

import asyncio
import itertools
import json
import time
import uuid

import pytest

from notifier.chats import ChatGate
from notifier.formatting import parse_message
from notifier.pacing import Pacer, PaceState
from notifier.settings import Rate
from streams import subjects
from streams.dlq import list_dead_letters
from streams.subjects import MSG_ID_HEADER, Change
from tests.fake_telegram import CHAT_NOT_FOUND
from tests.notifier.conftest import CHAT_ID, drained, make_todo, publish, wait_until

CHAT_INTERVAL, GROUP_LIMIT, GROUP_WINDOW = 1 / 15, 20, 4.0
SCALED = {"TELEGRAM_CHAT_RATE": "1/67ms", "TELEGRAM_GROUP_RATE": f"{GROUP_LIMIT}/{GROUP_WINDOW:g}s"}
OTHER_CHAT = -1005555555555


def limit_fake(fake):
    fake.chat_interval, fake.group_limit, fake.group_window = CHAT_INTERVAL, GROUP_LIMIT, GROUP_WINDOW


def events_in(messages):
    return [todo["id"] for message in messages for todo in parse_message(message.text)]


def sends(fake):
    return [request for request in fake.requests if request.method.lower() == "sendmessage"]


async def publish_burst(js, count, chat_tag=""):
    todos = [make_todo(f"burst {chat_tag}{n}") for n in range(count)]
    acks = [
        await js.publish_async(
            Change.CREATED.subject, json.dumps(todo).encode(), headers={MSG_ID_HEADER: str(uuid.uuid4())}
        )
        for todo in todos
    ]
    await asyncio.gather(*acks)
    return {todo["id"] for todo in todos}


def test_pace_log_keeps_both_limits_in_every_window():
    """Slots reserved back to back: 1 s apart at least, never more than 20 in any 60 s."""
    state, limits = PaceState(), (Rate(1, 1.0), Rate(20, 60.0))
    slots = [state.reserve(limits, now=1000.0) for _ in range(70)]
    assert slots[0] == 1000.0  # a quiet chat's first message goes at once
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(slots))
    assert max(sum(1 for s in slots if start <= s < start + 60) for start in slots) == 20
    assert slots[69] < 1000 + 3 * 60 + 30  # and no slower than that


async def test_replicas_reserve_distinct_slots_through_kv(js):
    """Three pacers racing on one KV key get slots that together keep the limit (compare-and-set)."""
    kv = await js.key_value(subjects.STATE_BUCKET)
    pacers = [Pacer(kv, ChatGate(), Rate(1, 0.02), Rate(5, 1.0)) for _ in range(3)]
    waits = await asyncio.gather(*(pacer.reserve(CHAT_ID) for pacer in pacers for _ in range(5)))
    assert len(waits) == 15
    state = PaceState.from_bytes((await kv.get(f"chat.{CHAT_ID}.pace")).value)
    assert len(state.sends) == 5  # the log keeps what the largest limit looks at
    # 15 slots under 5 per second: the last is at least 2 s after the first
    assert max(waits) >= 2.0
    assert max(waits) < 3.5


async def test_burst_of_1000_grouped_at_least_10x_one_per_event(fake, js, replicas):
    """1,000 events in a burst, 3 replicas, group limit 20 per window: all delivered once, few 429s,
    at least 10x the events per window of one message per event measured in the same run."""
    limit_fake(fake)
    group = [replicas(fake, **SCALED) for _ in range(3)]
    await asyncio.gather(*(replica.wait_ready() for replica in group))
    expected = await publish_burst(js, 1000)
    started = time.monotonic()
    await wait_until(lambda: len(events_in(fake.sent_to(CHAT_ID))) >= 1000, 60, "1,000 events")
    grouped_took = time.monotonic() - started
    await drained(js, *group)
    delivered = events_in(fake.sent_to(CHAT_ID))
    assert sorted(delivered) == sorted(expected)  # none lost, none twice
    messages = fake.sent_to(CHAT_ID)
    grouped_429 = fake.rate_limited
    grouped_rate = 1000 / grouped_took * GROUP_WINDOW
    per_message = [await replica.metric("notifier_events_per_message_sum") for replica in group]
    assert sum(per_message) == 1000
    assert all(count > 0 for count in per_message), per_message  # every replica sent some
    for replica in group:
        replica.stop()

    # the same fake, another chat: one message per event, over a fixed time slice
    fake.rate_limited = 0
    single = [
        replicas(fake, **SCALED, NOTIFIER_MAX_EVENTS_PER_MESSAGE="1", TELEGRAM_CHAT_ID=str(OTHER_CHAT))
        for _ in range(2)
    ]
    await asyncio.gather(*(replica.wait_ready() for replica in single))
    await publish_burst(js, 200, "single ")
    await wait_until(lambda: fake.sent_to(OTHER_CHAT), 20, "first single message")
    first = fake.sent_to(OTHER_CHAT)[0].at
    slice_seconds = GROUP_WINDOW + 0.5
    await asyncio.sleep(first + slice_seconds - time.monotonic())  # the measuring window itself
    in_slice = [m for m in fake.sent_to(OTHER_CHAT) if m.at <= first + slice_seconds]
    assert all(len(parse_message(m.text)) == 1 for m in in_slice)
    single_rate = len(events_in(in_slice)) / slice_seconds * GROUP_WINDOW
    print(
        f"\ngrouped: {grouped_rate:.0f} events per {GROUP_WINDOW:g} s window ({len(messages)} messages, "
        f"{1000 / len(messages):.1f} events/message, {grouped_took:.1f} s, {grouped_429} 429s); "
        f"one per event: {single_rate:.0f} events per window ({fake.rate_limited} 429s); "
        f"ratio {grouped_rate / single_rate:.1f}x"
    )
    assert grouped_429 <= 3
    assert fake.rate_limited <= 3
    assert grouped_rate >= 10 * single_rate


async def test_a_429_holds_every_replica_until_retry_after(fake, js, replicas):
    """After one replica meets a 429 (retry_after=2), no replica sends to the chat for 2 s."""
    limit_fake(fake)
    fake.fail_429, fake.retry_after = 1, 2
    pair = [replicas(fake, **SCALED) for _ in range(2)]
    await asyncio.gather(*(replica.wait_ready() for replica in pair))
    expected = await publish_burst(js, 60)
    await wait_until(lambda: len(events_in(fake.sent)) >= 60, 30, "60 events")
    limited = next(r for r in fake.requests if r.status == 429)
    after = [r for r in sends(fake) if r is not limited and r.at >= limited.at]
    assert min(r.at for r in after) - limited.at >= 2.0
    await drained(js, *pair)
    assert sorted(events_in(fake.sent)) == sorted(expected)
    received = [await replica.metric("notifier_events_received_total") for replica in pair]
    assert all(count > 0 for count in received), received  # both held events through the pause
    assert sum([await replica.metric("notifier_telegram_429_total") for replica in pair]) == 1


async def test_light_load_one_event_one_message_at_once(fake, js, replicas):
    """With Telegram's real limits, a lone event goes out as its own message, the next one a slot later.
    (That a quiet chat's first slot is now: test_pace_log_keeps_both_limits_in_every_window.)"""
    replica = replicas(fake, TELEGRAM_CHAT_RATE="1/1s", TELEGRAM_GROUP_RATE="20/60s")
    await replica.wait_ready()
    for n in range(2):
        todo = make_todo(f"lone {n}")
        await publish(js, todo=todo)
        await wait_until(lambda n=n: len(fake.sent) == n + 1, 10, "the message")
        message = fake.sent[-1]
        assert parse_message(message.text) == [todo]
        assert message.text.splitlines()[0] == "📝 Todo created"  # no summary line
    assert fake.sent[1].at - fake.sent[0].at >= 1.0  # paced: one message per second to the chat
    assert await replica.metric("notifier_events_per_message_count") == 2
    assert await replica.metric("notifier_events_per_message_sum") == 2


async def test_poison_event_in_a_group_dies_alone(fake, js, replicas):
    """A group Telegram refuses is split: only the poison event is dead-lettered, the rest delivered once."""
    limit_fake(fake)
    fake.poison_markers.append("POISON")
    fake.slow_requests, fake.slow_delay = 1, 0.5  # the first message is slow: the others queue up
    replica = replicas(fake, **SCALED)
    await replica.wait_ready()
    healthy = [await publish(js, todo=make_todo(f"fine {n}")) for n in range(9)]
    poison_id = await publish(js, todo=make_todo("POISON pill"))
    await wait_until(lambda: list_dead_letters(js), 20, "a dead letter")
    await wait_until(lambda: len(events_in(fake.sent)) >= 9, 20, "the healthy events")
    refused = [r for r in sends(fake) if r.status == 400]
    assert any(len(parse_message(r.params["text"])) > 1 for r in refused), "no group was refused"
    [letter] = await list_dead_letters(js)
    assert letter.event_id == poison_id
    assert "can't parse entities" in letter.reason.lower()
    await drained(js, replica)
    delivered = [todo["task"] for m in fake.sent for todo in parse_message(m.text)]
    assert sorted(delivered) == sorted(f"fine {n}" for n in range(9))
    assert len(healthy) == 9
    assert await replica.metric("notifier_events_dead_lettered_total") == 1


@pytest.mark.parametrize("value", ["1/1s", "20/60s", "off"])
def test_rates_parse(value):
    from notifier.settings import parse_rate  # noqa: PLC0415

    rate = parse_rate(value)
    assert (rate is None) == (value == "off")
    if rate is not None:
        assert str(rate) == value


async def test_paced_chat_follows_a_migration(fake, js, replicas):
    """A grouped message met by ChatMigrated is resent to the new chat; nothing lost or doubled."""
    new_chat = -1009999999999
    limit_fake(fake)
    fake.migrations[str(CHAT_ID)] = new_chat
    replica = replicas(fake, **SCALED)
    await replica.wait_ready()
    expected = await publish_burst(js, 40)
    await wait_until(lambda: len(events_in(fake.sent_to(new_chat))) >= 40, 20, "40 events in the new chat")
    await drained(js, replica)
    assert sorted(events_in(fake.sent)) == sorted(expected)
    assert "TELEGRAM_CHAT_ID" in replica.log()


async def test_paced_chat_not_found_pauses_then_resumes(fake, js, replicas):
    """Bot-level error on the paced path: not ready, nothing dead-lettered, all delivered once fixed."""
    replica = replicas(fake, **SCALED)
    await replica.wait_ready()
    fake.chat_errors[str(CHAT_ID)] = CHAT_NOT_FOUND
    expected = await publish_burst(js, 10)

    async def not_ready():
        return await replica.status("/readyz") == 503

    await wait_until(not_ready, what="pause")
    assert await list_dead_letters(js) == []
    del fake.chat_errors[str(CHAT_ID)]
    await wait_until(lambda: len(events_in(fake.sent)) >= 10, 20, "delivery after the fix")
    await drained(js, replica)
    assert sorted(events_in(fake.sent)) == sorted(expected)
    assert await list_dead_letters(js) == []


async def test_after_a_429_no_unpaced_replica_sends_before_retry_after(fake, js, replicas):
    """Three unpaced replicas in a burst: one meets a 429 (retry_after=2). Only requests already on their
    way may arrive after it; none starts later until retry_after has passed (the pause is shared)."""
    fake.fail_429, fake.retry_after = 1, 2
    trio = [replicas(fake, NOTIFIER_CONCURRENCY="2") for _ in range(3)]
    await asyncio.gather(*(replica.wait_ready() for replica in trio))
    expected = await publish_burst(js, 90)
    await wait_until(lambda: len(events_in(fake.sent)) >= 90, 40, "90 events")
    limited = next(r for r in fake.requests if r.status == 429)
    # the pause reaches the other replicas through KV within milliseconds; allow a loaded machine 0.25 s
    early = [r.at - limited.at for r in sends(fake) if limited.at + 0.25 < r.at < limited.at + 2.0]
    assert early == [], f"sendMessage {early} s after the 429"
    on_the_way = [r for r in sends(fake) if r is not limited and limited.at <= r.at <= limited.at + 0.25]
    assert len(on_the_way) <= 12  # what 3 replicas x 2 senders had started, twice at most
    await drained(js, *trio)
    assert sorted(events_in(fake.sent)) == sorted(expected)
