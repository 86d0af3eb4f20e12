"""How a replica takes events from the shared consumer: what is stored in one batch, else one event at once.

The source asks for what is stored with a `no_wait` request and otherwise for a single message
(`JetStreamSource._pull`). nats-py's fetch(batch) instead sends, when nothing is stored, a request the
server may keep open until a second message comes: inside the running notifier, at 100 events/s, one
fetch in ten (one in two with three replicas) handed its first event over only with the next, 50 ms
later. That did not reproduce with these bare sources, so the tail itself is measured by `just bench`
(end to end at 1, 2 and 3 replicas); these tests pin the source's behaviour, with the request's expiry
(60 s) far beyond the test's patience so that a fetch waiting for more cannot pass late.
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from notifier import jetstream
from notifier.jetstream import JetStreamSource
from streams import subjects
from tests.notifier.conftest import publish, wait_until

PATIENCE = 10.0  # the test's; the request expires after 60 s


@pytest.fixture
def source(nc: Client, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch) -> JetStreamSource:
    monkeypatch.setattr(jetstream, "FETCH_TIMEOUT", 60.0)
    return JetStreamSource(nc, js)


async def test_a_lone_event_is_handed_over_without_waiting_for_another(source: JetStreamSource, js: JetStreamContext):
    fetching = asyncio.create_task(source.fetch(128))  # binds; nothing stored: a request for one message waits

    async def waiting() -> bool:
        return (await js.consumer_info(subjects.STREAM, subjects.CONSUMER)).num_waiting > 0

    await wait_until(waiting, PATIENCE, "the pull request at the server")
    event_id = await publish(js)
    msgs = await asyncio.wait_for(fetching, PATIENCE)
    assert [msg.headers["Nats-Msg-Id"] for msg in msgs if msg.headers] == [event_id]


async def test_what_is_stored_comes_in_one_batch(source: JetStreamSource, js: JetStreamContext):
    ids = [await publish(js) for _ in range(30)]
    assert len(await asyncio.wait_for(source.fetch(1), PATIENCE)) == 1  # binds and takes the first
    msgs = await asyncio.wait_for(source.fetch(128), PATIENCE)
    assert [msg.headers["Nats-Msg-Id"] for msg in msgs if msg.headers] == ids[1:]
    info = await js.consumer_info(subjects.STREAM, subjects.CONSUMER)
    assert (info.num_pending, info.num_ack_pending) == (0, 30)


async def test_each_event_reaches_one_of_three_replicas_before_the_next_is_published(
    nats_server: Any, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
):
    """Three replicas fetching from the one consumer, events published one at a time: each is handed
    over while no other event exists that could end a lingering request."""
    monkeypatch.setattr(jetstream, "FETCH_TIMEOUT", 60.0)
    clients = [await nats.connect(nats_server.url) for _ in range(3)]
    fetched: asyncio.Queue[str] = asyncio.Queue()

    async def replica(nc: Client) -> None:
        source = JetStreamSource(nc, nc.jetstream())
        while True:
            for msg in await source.fetch(128):
                await msg.ack()
                await fetched.put(msg.headers["Nats-Msg-Id"] if msg.headers else "")

    loops = [asyncio.create_task(replica(nc)) for nc in clients]
    try:

        async def all_waiting() -> bool:
            return (await js.consumer_info(subjects.STREAM, subjects.CONSUMER)).num_waiting >= 3

        await wait_until(all_waiting, PATIENCE, "three pull requests at the server")
        for _ in range(30):
            event_id = await publish(js)
            assert await asyncio.wait_for(fetched.get(), PATIENCE) == event_id
    finally:
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for nc in clients:
            await nc.close()
