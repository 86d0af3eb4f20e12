"""The failure policy end to end: 429, 5xx and timeouts, a lost chat, poison messages, chat migration."""

from nats.js.errors import KeyNotFoundError

from notifier.formatting import MAY_REPEAT_NOTE, parse_message
from streams import subjects
from streams.dlq import list_dead_letters, replay
from streams.subjects import migration_key
from tests.fake_telegram import CHAT_NOT_FOUND, CLIENT_GONE, KICKED
from tests.notifier.conftest import CHAT_ID, drained, make_todo, publish, wait_until


def sends(fake):
    return [request for request in fake.requests if request.method.lower() == "sendmessage"]


async def test_retry_after_is_honoured_then_delivered(fake, js, replicas):
    """After a 429 with retry_after=2 no request reaches the chat for 2 s; then everything arrives."""
    fake.fail_429, fake.retry_after = 1, 2
    replica = replicas(fake)
    await replica.wait_ready()
    await publish(js)
    await wait_until(lambda: any(r.status == 429 for r in fake.requests), what="the 429")
    for _ in range(3):
        await publish(js)
    await wait_until(lambda: len(fake.sent) == 4, 20, "4 messages")
    limited = next(r for r in fake.requests if r.status == 429)
    after = [r for r in sends(fake) if r is not limited and r.at >= limited.at]
    assert after, "nothing sent after the 429"
    assert min(r.at for r in after) - limited.at >= 2.0
    assert await replica.metric("notifier_telegram_429_total") == 1
    assert len({parse_message(m.text)[0]["id"] for m in fake.sent}) == 4


async def test_server_errors_and_timeouts_are_retried(fake, js, replicas):
    """Two 500s and one answer slower than TELEGRAM_TIMEOUT: the event arrives. The request the client
    gave up on still reaches the chat (as Telegram delivers it), so the event shows twice: that copy is
    marked answer_lost, and the resend says it may repeat."""
    replica = replicas(fake, TELEGRAM_TIMEOUT="1")
    await replica.wait_ready()
    fake.fail_500 = 2
    # the first send is executed 6 s late: long after the two retries that take the 500s (at ~1.5 and ~2.5 s)
    fake.slow_requests, fake.slow_delay = 1, 6.0
    todo = make_todo()
    await publish(js, todo=todo)
    await wait_until(lambda: len(fake.sent) == 2, 30, "the resend and the late first copy")
    statuses = [r.status for r in sends(fake)]
    assert statuses.count(500) == 2
    assert CLIENT_GONE in statuses  # the request the client gave up on
    [late] = [m for m in fake.sent if m.answer_lost]
    [resend] = [m for m in fake.sent if not m.answer_lost]
    assert MAY_REPEAT_NOTE not in late.text
    assert MAY_REPEAT_NOTE in resend.text
    assert parse_message(late.text) == parse_message(resend.text) == [todo]
    # two naks; the third transient failure in a row is an outage: held, probed, sent after the probe
    assert await replica.metric("notifier_events_retried_total") == 2
    events = [line.get("event") for line in replica.log_lines()]
    assert "telegram.halted" in events
    assert "telegram.resumed" in events
    await drained(js, replica)
    assert len(fake.sent) == 2


async def test_chat_not_found_pauses_instead_of_dead_lettering(fake, js, replicas):
    """A bot-level error stops consuming (readyz 503), dead-letters nothing, and resumes once fixed."""
    replica = replicas(fake)
    await replica.wait_ready()
    fake.chat_errors[str(CHAT_ID)] = CHAT_NOT_FOUND  # found by a send (a replica starting so pauses at once)
    for _ in range(5):
        await publish(js)
    await wait_until(lambda: _not_ready(replica), what="pause")
    probes = lambda: sum(r.method.lower() == "getchat" for r in fake.requests)  # noqa: E731
    rounds = probes()
    await wait_until(lambda: probes() >= rounds + 3, 20, "three probe rounds")
    assert fake.sent == []
    assert await list_dead_letters(js) == []
    assert (await js.stream_info(subjects.STREAM)).state.messages == 5
    assert await replica.metric("notifier_paused") == 1
    del fake.chat_errors[str(CHAT_ID)]
    await wait_until(lambda: len(fake.sent) == 5, 20, "delivery after the fix")
    assert await replica.status("/readyz") == 200
    assert await list_dead_letters(js) == []


async def _not_ready(replica):
    return await replica.status("/readyz") == 503


async def test_kicked_bot_pauses_too(fake, js, replicas):
    replica = replicas(fake)
    await replica.wait_ready()
    fake.chat_errors[str(CHAT_ID)] = KICKED
    await publish(js)
    await wait_until(lambda: _not_ready(replica), what="pause")
    assert "bot was kicked" in replica.log()
    del fake.chat_errors[str(CHAT_ID)]
    await wait_until(lambda: len(fake.sent) == 1, 20, "delivery after the fix")


async def test_poison_message_is_dead_lettered_and_replayed_once_fixed(fake, js, replicas):
    """A message Telegram rejects lands in the DLQ with the reason; replay delivers it once."""
    fake.poison_markers.append("POISON")
    replica = replicas(fake)
    await replica.wait_ready()
    poison = make_todo("POISON pill")
    poison_id = await publish(js, todo=poison)
    await publish(js)
    await wait_until(lambda: len(fake.sent) == 1, what="the healthy event")
    await wait_until(lambda: list_dead_letters(js), what="a dead letter")
    [letter] = await list_dead_letters(js)
    assert letter.event_id == poison_id
    assert letter.subject == "todos.created"
    assert letter.deliveries == 1
    assert "can't parse entities" in letter.reason.lower()
    assert letter.payload
    assert parse_message(f'<pre><code class="language-json">{letter.payload.decode()}</code></pre>')
    assert await replica.metric("notifier_events_dead_lettered_total") == 1

    fake.poison_markers.clear()
    replayed = await replay(js, None)
    assert [r.dlq_seq for r in replayed] == [letter.dlq_seq]
    await wait_until(lambda: len(fake.sent) == 2, what="the replayed event")
    assert parse_message(fake.sent[-1].text) == [poison]
    assert await list_dead_letters(js) == []
    assert await replay(js, None) == []
    await drained(js, replica)
    assert len(fake.sent) == 2


async def test_malformed_payload_is_dead_lettered(fake, js, replicas):
    replica = replicas(fake)
    await replica.wait_ready()
    await publish(js, data=b"this is not json")
    await wait_until(lambda: list_dead_letters(js), what="a dead letter")
    [letter] = await list_dead_letters(js)
    assert "malformed" in letter.reason
    assert letter.payload == b"this is not json"
    assert fake.sent == []


async def test_chat_migration_is_followed_and_shared(fake, js, replicas):
    """ChatMigrated: resent to the new chat, stored in KV, later events (any replica) go there directly."""
    new_chat = -1009999999999
    fake.migrations[str(CHAT_ID)] = new_chat
    first = replicas(fake)
    await first.wait_ready()
    await publish(js)
    await wait_until(lambda: len(fake.sent_to(new_chat)) == 1, what="resend to the new chat")
    state = await js.key_value(subjects.STATE_BUCKET)
    entry = await state.get(migration_key(CHAT_ID))
    assert int(entry.value) == new_chat
    assert "TELEGRAM_CHAT_ID" in first.log()
    first.signal(2)
    assert await first.wait_exit() == 0
    second = replicas(fake)
    await second.wait_ready()
    for _ in range(2):
        await publish(js)
    await wait_until(lambda: len(fake.sent_to(new_chat)) == 3, what="later events")
    assert len([r for r in sends(fake) if r.chat_id == str(CHAT_ID)]) == 1


async def test_no_migration_key_before_any_migration(js):
    state = await js.key_value(subjects.STATE_BUCKET)
    try:
        await state.get(migration_key(CHAT_ID))
    except KeyNotFoundError:
        return
    raise AssertionError("unexpected migration key")


async def test_a_replica_starting_without_its_chat_is_not_ready_and_takes_nothing(fake, js, replicas):
    """Chat not found at start: /readyz 503 from the first probe on, no event fetched (none spends a
    delivery), all sent once the chat is found."""
    fake.chat_errors[str(CHAT_ID)] = CHAT_NOT_FOUND
    await publish(js)
    replica = replicas(fake)
    await wait_until(lambda: sum(r.method.lower() == "getchat" for r in fake.requests) >= 2, 20, "probes")
    assert await replica.status("/readyz") == 503
    info = await js.consumer_info(subjects.STREAM, subjects.CONSUMER)
    assert info.delivered.consumer_seq == 0
    del fake.chat_errors[str(CHAT_ID)]
    await wait_until(lambda: len(fake.sent) == 1, 20, "delivery once the chat is found")
    await replica.wait_ready()
