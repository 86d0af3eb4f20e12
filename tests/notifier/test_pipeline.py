"""The replica in-process (notifier.replica.run) against real NATS and the fake Telegram: the delivery
path's promises under faults that are easiest to inject from inside (a failing KV write, a dying loop)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import nats.errors
import pytest
import pytest_asyncio

from notifier import replica as replica_module
from notifier.pipeline import Pipeline
from notifier.sent_log import SentLog
from notifier.settings import Settings
from streams import subjects, topology
from streams.dlq import list_dead_letters
from tests.fake_telegram import FakeTelegram, TelegramError
from tests.notifier.conftest import CHAT_ID, publish, wait_until
from tests.services import NatsServer, free_port


class Running:
    def __init__(self, task: asyncio.Task[int], stop: asyncio.Event) -> None:
        self.task, self.stop = task, stop

    async def exit_code(self, timeout: float = 20.0) -> int:
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)


@pytest_asyncio.fixture
async def start(nats_server: NatsServer, fake: FakeTelegram) -> AsyncIterator[Callable[..., Running]]:
    """Start `notifier.replica.run` in this event loop with the fake's settings plus `env`."""
    running: list[Running] = []

    def launch(telegram: FakeTelegram | None = None, **env: str) -> Running:
        telegram = telegram or fake
        settings = Settings.model_validate({
            "NATS_URL": nats_server.url, "TELEGRAM_ACCESS_TOKEN": telegram.token, "TELEGRAM_CHAT_ID": str(CHAT_ID),
            "TELEGRAM_API_BASE_URL": telegram.base_url, "NOTIFIER_PORT": str(free_port()),
            "NOTIFIER_HOST": "127.0.0.1", "TELEGRAM_CHAT_RATE": "off", "TELEGRAM_GROUP_RATE": "off",
            "NOTIFIER_PROBE_INTERVAL": "0.2", **env,
        })  # fmt: skip
        stop = asyncio.Event()
        started = Running(asyncio.create_task(replica_module.run(settings, stop)), stop)
        running.append(started)
        return started

    yield launch
    for started in running:
        started.stop.set()
    for started in running:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(started.task, 20)


async def consumer(js: Any) -> Any:
    return await js.consumer_info(subjects.STREAM, subjects.CONSUMER)


def calls(fake: FakeTelegram, method: str) -> int:
    """Requests of one Bot API method (lower case) the fake received so far."""
    return sum(request.method.lower() == method for request in fake.requests)


async def settled(js: Any) -> bool:
    info = await consumer(js)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_an_accepted_event_is_never_nakked_when_its_record_fails(fake, js, start, monkeypatch):
    """Telegram said ok, then the todos_sent record fails 3 times (NATS trouble): the event is kept and
    recorded once NATS takes it, then acked; never nak'ed (no redelivery), never sent twice."""
    calls = 0
    original = SentLog.sent

    async def flaky(self: SentLog, event_ids: Any) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise nats.errors.TimeoutError
        await original(self, event_ids)

    monkeypatch.setattr(SentLog, "sent", flaky)
    start()
    event_id = await publish(js)
    await wait_until(lambda: settled(js), 20, "the event acked")
    assert calls == 4
    assert len(fake.sent) == 1
    info = await consumer(js)
    assert info.delivered.consumer_seq == 1  # delivered once: never nak'ed
    assert info.delivered.stream_seq == 1
    kv = await js.key_value(subjects.SENT_BUCKET)
    assert (await kv.get(subjects.sent_key(event_id))).value == b"sent"


async def test_a_loop_that_dies_gives_back_what_it_held_and_exits_1(fake, js, start, monkeypatch):
    """A background loop raising while events are held: logged, events released at once (nak, not the
    ack wait), run() returns 1 so that Kubernetes restarts the replica."""
    original = Pipeline.tasks
    broken = asyncio.Event()

    async def boom() -> None:
        await broken.wait()
        raise RuntimeError("boom")

    def tasks(self: Pipeline) -> dict[str, Coroutine[Any, Any, None]]:
        return {**original(self), "boom": boom()}

    monkeypatch.setattr(Pipeline, "tasks", tasks)
    running = start()
    await wait_until(lambda: any(r.method.lower() == "getchatmember" for r in fake.requests), 10, "the start probe")
    fake.delay = 30.0  # sends hang: the events stay held
    for _ in range(3):
        await publish(js)
    await wait_until(lambda: sum(r.method.lower() == "sendmessage" for r in fake.requests) >= 3, 10, "three sends")
    broken.set()
    assert await running.exit_code(5) == 1
    info = await consumer(js)
    assert info.num_ack_pending + info.num_pending == 3
    # released with a nak: delivered again at once, long before the 5 s ack wait
    psub = await js.pull_subscribe_bind(durable=subjects.CONSUMER, stream=subjects.STREAM)
    try:
        msgs = await psub.fetch(3, timeout=2)
        assert [msg.metadata.num_delivered for msg in msgs] == [2, 2, 2]
        for msg in msgs:
            await msg.ack()
    finally:
        await psub.unsubscribe()


async def test_last_delivery_is_terminated_with_the_reason(fake, js, start):
    """max_deliver=2 and Telegram failing: the 2nd delivery is terminated and the dead letter says why."""
    config = topology.consumer_config()
    config.max_deliver = 2
    await js.add_consumer(subjects.STREAM, config)
    fake.fail_500 = 10
    start()
    event_id = await publish(js)
    await wait_until(lambda: list_dead_letters(js), 20, "a dead letter")
    [letter] = await list_dead_letters(js)
    assert letter.event_id == event_id
    assert letter.reason.startswith("gave up after 2 deliveries: NetworkError")
    assert fake.sent == []


class LeakyTelegram(FakeTelegram):
    """Refuses every message with a description that quotes the bot's token."""

    def _refusal(self, chat_id: str, text: str) -> None:
        raise TelegramError(400, f"Bad Request: can't parse entities in request to bot{self.token}")


async def test_dead_letter_reasons_are_redacted(js, start):
    async with LeakyTelegram() as leaky:
        from streams.logs import register_secret  # noqa: PLC0415 (as notifier.__main__ does at start)

        register_secret(leaky.token)
        start(leaky)
        await publish(js)
        await wait_until(lambda: list_dead_letters(js), 20, "a dead letter")
        [letter] = await list_dead_letters(js)
    assert "can't parse entities" in letter.reason.lower()
    assert leaky.token.lower() not in letter.reason.lower()  # PTB lowercases what follows the first letter
    assert "[REDACTED]" in letter.reason


async def test_a_bot_without_rights_holds_its_events_and_spends_no_delivery(fake, js, start):
    """Rights revoked: the sends fail once, the events are held (no nak), the probe (getChatMember)
    keeps saying no; rights back: every event is sent once, none redelivered or dead-lettered."""
    start()
    await wait_until(lambda: calls(fake, "getchatmember"), 10, "the start probe")  # the rights go after it
    fake.revoke_rights(str(CHAT_ID))
    ids = [await publish(js) for _ in range(20)]
    await wait_until(lambda: sum(r.method.lower() == "getchatmember" for r in fake.requests) >= 5, 20, "probes")
    refused = [r for r in fake.requests if r.method.lower() == "sendmessage"]
    assert 1 <= len(refused) <= 20  # each event tried once at most, never again while the bot may not post
    probes = calls(fake, "getchatmember")
    await wait_until(lambda: calls(fake, "getchatmember") >= probes + 3, 20, "three more probe rounds")
    assert calls(fake, "sendmessage") == len(refused)
    fake.restore_rights(str(CHAT_ID))
    await wait_until(lambda: len(fake.sent) == 20, 20, "the held events sent")
    await wait_until(lambda: settled(js), 10, "all acked")
    info = await consumer(js)
    assert info.delivered.consumer_seq == 20  # each delivered once: held, never nak'ed
    assert await list_dead_letters(js) == []
    assert len(ids) == 20


async def test_a_long_outage_holds_the_events_instead_of_dead_lettering(fake, js, start):
    """Telegram answering 503 to everything for a while (many times the retry delays): a few naks, then
    an outage: held and probed with backoff; all sent once when Telegram is back, nothing dead-lettered."""
    config = topology.consumer_config()
    config.max_deliver = 4  # an outage that spent deliveries would dead-letter within seconds
    await js.add_consumer(subjects.STREAM, config)
    fake.outage_status = 503
    start(NOTIFIER_RETRY_MAX_DELAY="0.2")
    for _ in range(10):
        await publish(js)
    # fifteen probe rounds (0.2 s apart, as long as the longest retry delay): the outage outlasts the retries
    await wait_until(lambda: calls(fake, "getchat") >= 15, 20, "fifteen probes in the outage")
    sends_in_outage = sum(r.method.lower() == "sendmessage" for r in fake.requests)
    assert sends_in_outage <= 12, sends_in_outage  # not retried over and over
    fake.outage_status = 0
    await wait_until(lambda: len(fake.sent) == 10, 20, "every event after the outage")
    await wait_until(lambda: settled(js), 10, "all acked")
    assert await list_dead_letters(js) == []


@pytest.mark.parametrize("status", ["left", "kicked"])
async def test_the_probe_reads_the_bots_membership(fake, js, start, status):
    """A bot that left the chat: getChat still answers, the probe does not take that as a yes."""
    fake.member_status[str(CHAT_ID)] = status
    start()
    await publish(js)
    await wait_until(lambda: sum(r.method.lower() == "getchatmember" for r in fake.requests) >= 3, 20, "probes")
    assert fake.sent == []
    fake.member_status[str(CHAT_ID)] = "administrator"
    await wait_until(lambda: len(fake.sent) == 1, 20, "sent once the bot is back")


async def test_sendmessage_failing_alone_is_an_outage_too(fake, js, start):
    """Probes answer but every sendMessage gets a 500 (a partial outage): after the first naks, each resume
    that fails again halts at once, so no delivery is spent per probe cycle and nothing dies."""
    config = topology.consumer_config()
    config.max_deliver = 5
    await js.add_consumer(subjects.STREAM, config)
    fake.fail_500 = 1_000_000  # sendMessage only; getChat and getChatMember answer
    start(NOTIFIER_RETRY_MAX_DELAY="0.2")
    for _ in range(3):
        await publish(js)
    # twenty cycles of probe (answered), resume, send (500), halt: a delivery spent per cycle would be 20
    await wait_until(lambda: calls(fake, "getchatmember") >= 1 + 20, 30, "twenty probe cycles")
    assert await list_dead_letters(js) == []
    info = await consumer(js)
    assert info.delivered.consumer_seq <= 3 + 2, info  # the two naks before the outage was declared
    fake.fail_500 = 0
    await wait_until(lambda: len(fake.sent) == 3, 20, "every event once the sends work")
    await wait_until(lambda: settled(js), 10, "all acked")
    assert await list_dead_letters(js) == []


class UnknownRefusal(FakeTelegram):
    """A chat setting refuses every message with wording the policy table does not know."""

    refusing: bool = True

    def _refusal(self, chat_id: str, text: str) -> None:
        if self.refusing:
            raise TelegramError(400, "Bad Request: CHAT_SEND_PLAIN_FORBIDDEN")
        super()._refusal(chat_id, text)


async def test_an_unknown_refusal_the_probe_confirms_holds_the_backlog(js, start):
    """A 400 in words the table does not know would dead-letter each event; the probe (the bot restricted)
    shows it is the bot, not the message: held, then all sent when the bot may post again."""
    async with UnknownRefusal() as fake:
        start(fake)
        await wait_until(lambda: calls(fake, "getchatmember"), 10, "the start probe")  # it finds the bot allowed
        fake.member_status[str(CHAT_ID)] = "restricted"
        for _ in range(5):
            await publish(js)
        await wait_until(lambda: calls(fake, "sendmessage") >= 1, 10, "a send")
        probes = calls(fake, "getchatmember")
        await wait_until(lambda: calls(fake, "getchatmember") >= probes + 3, 20, "three probe rounds")
        assert await list_dead_letters(js) == []
        fake.refusing = False
        fake.member_status[str(CHAT_ID)] = "administrator"
        await wait_until(lambda: len(fake.sent) == 5, 20, "every event after the bot got its rights back")
    await wait_until(lambda: settled(js), 10, "all acked")
    assert await list_dead_letters(js) == []


async def test_a_bot_that_may_not_post_at_start_takes_nothing(fake, js, start):
    """Kicked before the replica starts: the first probe says so, nothing is fetched (no delivery spent at
    each restart of a misconfigured replica), and the events go out once the bot is back."""
    fake.member_status[str(CHAT_ID)] = "kicked"
    for _ in range(3):
        await publish(js)
    start()
    await wait_until(lambda: sum(r.method.lower() == "getchatmember" for r in fake.requests) >= 3, 20, "probes")
    info = await consumer(js)
    assert info.delivered.consumer_seq == 0
    assert [r for r in fake.requests if r.method.lower() == "sendmessage"] == []
    fake.member_status[str(CHAT_ID)] = "administrator"
    await wait_until(lambda: len(fake.sent) == 3, 20, "sent once the bot is back")
