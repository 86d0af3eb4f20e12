"""Who holds an event: in_progress() keeps it with the replica sending it, the nak on SIGTERM hands it to
another replica at once, and a NATS restart under paced replicas sends nothing twice."""

import asyncio
import re
import signal
from collections import Counter

from notifier.formatting import MAY_REPEAT_NOTE, parse_message
from streams import subjects, topology
from tests.notifier.conftest import drained, make_todo, publish, wait_until

_BLOCK = re.compile(r'<pre><code class="language-json">.*?</code></pre>', re.DOTALL)


def copies(messages):
    """(todo id, flagged) for every event block of every message; flagged: its headline says it may repeat."""
    found = []
    for message in messages:
        position = 0
        for match in _BLOCK.finditer(message.text):
            [todo] = parse_message(match.group(0))
            found.append((todo["id"], MAY_REPEAT_NOTE in message.text[position : match.start()]))
            position = match.end()
    return found


def sends(fake):
    return [request for request in fake.requests if request.method.lower() == "sendmessage"]


async def set_ack_wait(js, seconds):
    """The consumer's ack wait as an operator would change it; replicas read it when they bind."""
    config = topology.consumer_config()
    config.ack_wait = seconds
    await js.add_consumer(subjects.STREAM, config)


async def publish_todos(js, count, tag):
    todos = [make_todo(f"{tag} {n}") for n in range(count)]
    for todo in todos:
        await publish(js, todo=todo)
    return sorted(todo["id"] for todo in todos)


async def received(replica):
    return await replica.metric("notifier_events_received_total")


async def sigterm_hands_over(js, fake, paced, successor, expected, *, held, ack_wait):
    """SIGTERM the paced replica holding `held` events: the successor sends every one of them within a third of
    the ack wait (only a nak explains that), the paced one exits 0, and each released event was delivered
    exactly once more, to the successor (none expired)."""
    paced.signal(signal.SIGTERM)
    total = len(expected)
    await wait_until(lambda: len(copies(fake.sent)) >= total, ack_wait / 3, "the released events at the successor")
    assert await paced.wait_exit() == 0
    info = await drained(js, successor)
    assert sorted(todo_id for todo_id, _ in copies(fake.sent)) == expected
    assert await received(successor) == held
    assert info.delivered.consumer_seq == total + held


async def test_a_send_slower_than_the_ack_wait_stays_with_its_replica(fake, js, replicas):
    """Telegram answers after two ack waits (the client waits longer): in_progress() keeps the event held,
    so JetStream gives it to neither replica again: one delivery, one sendMessage, one message."""
    ack_wait = 2.0
    await set_ack_wait(js, ack_wait)
    pair = [replicas(fake, TELEGRAM_TIMEOUT="30") for _ in range(2)]
    await asyncio.gather(*(replica.wait_ready() for replica in pair))
    fake.slow_requests, fake.slow_delay = 1, 2 * ack_wait  # past the start probes: the next is the send
    [event_id] = await publish_todos(js, 1, "slow")
    await wait_until(lambda: fake.sent, 20, "the slow message")
    info = await drained(js, *pair)
    assert info.delivered.consumer_seq == 1, "the event was delivered again while its send was under way"
    assert len(sends(fake)) == 1
    assert copies(fake.sent) == [(event_id, False)]
    assert sorted([await received(replica) for replica in pair]) == [0, 1]


async def test_sigterm_hands_a_paced_backlog_to_a_running_replica_at_once(fake, js, replicas):
    """A paced replica holding 14 events for the group's next window (2 messages per 60 s) gets SIGTERM:
    it naks them, and the replica running beside it (idle: the paced one had taken every event) sends
    each once, well within a third of the ack wait (30 s here), which therefore cannot have let them go."""
    ack_wait = 30.0
    await set_ack_wait(js, ack_wait)
    expected = await publish_todos(js, 16, "paced")
    # 16 events fill its capacity (2 x NOTIFIER_CONCURRENCY): taken in one fetch, and no pull request is
    # left waiting on the server for the released events to fall into
    paced = replicas(fake, TELEGRAM_CHAT_RATE="1/1s", TELEGRAM_GROUP_RATE="2/60s",
                     NOTIFIER_MAX_EVENTS_PER_MESSAGE="1", NOTIFIER_CONCURRENCY="8")  # fmt: skip
    await paced.wait_ready()
    await wait_until(lambda: len(fake.sent) == 2, 10, "the window's two messages")
    successor = replicas(fake)  # unpaced
    await successor.wait_ready()
    info = await js.consumer_info(subjects.STREAM, subjects.CONSUMER)
    assert (info.num_pending, info.num_ack_pending) == (0, 14)  # the rest wait for the group's window...
    assert await paced.metric("notifier_events_in_flight") == 14  # ...held by the paced replica
    assert await received(successor) == 0
    await sigterm_hands_over(js, fake, paced, successor, expected, held=14, ack_wait=ack_wait)


async def test_sigterm_while_a_pull_request_is_open_hands_everything_over(fake, js, replicas):
    """As above, but the paced replica still has room, so a pull request of its own is open at the server
    when SIGTERM comes: it must end that subscription before its nak, or the released events fall back
    into its own pull request and wait there for the ack wait (30 s) after it exited."""
    ack_wait = 30.0
    await set_ack_wait(js, ack_wait)
    paced = replicas(fake, TELEGRAM_CHAT_RATE="1/1s", TELEGRAM_GROUP_RATE="2/60s", NOTIFIER_MAX_EVENTS_PER_MESSAGE="1")
    await paced.wait_ready()
    expected = await publish_todos(js, 30, "open pull")
    await wait_until(lambda: len(fake.sent) == 2, 10, "the window's two messages")
    successor = replicas(fake)  # unpaced
    await successor.wait_ready()
    assert await paced.metric("notifier_events_in_flight") == 28
    await sigterm_hands_over(js, fake, paced, successor, expected, held=28, ack_wait=ack_wait)


async def test_a_nats_restart_under_paced_replicas_sends_nothing_twice(fake, js, nc, nats_server, replicas):
    """Three paced replicas grouping a backlog (one message per 0.25 s to the chat, up to 20 events in it)
    when nats-server restarts (1 s down, file storage kept) with a message under way: its events are
    recorded and acked once NATS is back, the other held ones are let go and delivered again, and every
    event reaches the chat exactly once."""
    await set_ack_wait(js, 2.0)  # what is let go comes back sooner; keep-alives every 0.4 s
    trio = [replicas(fake, TELEGRAM_CHAT_RATE="1/250ms") for _ in range(3)]
    await asyncio.gather(*(replica.wait_ready() for replica in trio))
    fake.delay = 0.5  # Telegram takes its time: NATS goes while a message is under way
    expected = await publish_todos(js, 200, "restart")
    await wait_until(lambda: fake.sent and len(sends(fake)) > len(fake.sent), 20, "a message under way")
    await asyncio.to_thread(nats_server.stop)  # Telegram accepts it while NATS is down
    before = len(copies(fake.sent))
    await asyncio.sleep(1.0)  # the outage under test
    await asyncio.to_thread(nats_server.start)
    assert before < 200, "the backlog was sent before the restart"
    await wait_until(lambda: nc.is_connected, 20, "the test's connection back")
    await wait_until(lambda: len(copies(fake.sent)) >= 200, 40, "every event")
    await drained(js, *trio)
    delivered = copies(fake.sent)
    counts = Counter(todo_id for todo_id, _ in delivered)
    unflagged = Counter(todo_id for todo_id, flagged in delivered if not flagged)
    assert sorted(counts) == expected  # none lost
    assert [todo_id for todo_id, n in unflagged.items() if n > 1] == [], "sent twice without a word"
    assert [todo_id for todo_id, n in counts.items() if n > 1] == [], "sent twice (flagged: Telegram lost no answer)"
    assert max(len(parse_message(message.text)) for message in fake.sent) > 1, "the replicas did not group"
