"""Least privilege on NATS: each identity of streams.permissions tried on every action against a real
nats-server that runs the permissions (tests/services.py), and the README's table checked against it.

An action is *allowed* when the server carried it out or JetStream answered it (even "not found"), and
*refused* when the server reported a permissions violation for it. Anything else fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import APIError

from streams import subjects, topology
from streams.permissions import IDENTITIES, NOTIFIER, STREAMS, WEB, inbox_prefix
from tests.services import NatsServer, as_identity

README = Path(__file__).resolve().parents[2] / "README.md"
ALLOWED, REFUSED = "allowed", "refused"
PATIENCE = 5.0  # an answer or a violation comes within milliseconds; this only bounds a hang

Step = Callable[[Client, JetStreamContext, str], Awaitable[object]]


@dataclass(frozen=True)
class Action:
    name: str
    step: Step


async def _publish_event(nc: Client, js: JetStreamContext, user: str) -> object:
    return await js.publish(subjects.Change.CREATED.subject, b"{}", headers={subjects.MSG_ID_HEADER: f"perm-{user}"})


async def _stream_info(nc: Client, js: JetStreamContext, user: str) -> object:
    return await js.stream_info(subjects.STREAM)


async def _delete_stream(nc: Client, js: JetStreamContext, user: str) -> object:
    return await nc.request(f"$JS.API.STREAM.DELETE.{subjects.STREAM}", b"", timeout=PATIENCE)


async def _change_stream(nc: Client, js: JetStreamContext, user: str) -> object:
    config = (await _as_harness(lambda h: h.jetstream().stream_info(subjects.STREAM))).config
    config.description = "changed"
    return await js.update_stream(config)


async def _purge_stream(nc: Client, js: JetStreamContext, user: str) -> object:
    return await js.purge_stream(subjects.STREAM)


async def _kv_get(nc: Client, js: JetStreamContext, user: str) -> object:
    return await js._api_request(  # the request kv.get sends, without nats-py's bucket lookup first
        f"$JS.API.DIRECT.GET.{topology.kv_stream_name(subjects.SENT_BUCKET)}.$KV.{subjects.SENT_BUCKET}.x",
        b"",
        timeout=PATIENCE,
    )


async def _kv_put(nc: Client, js: JetStreamContext, user: str) -> object:
    return await js.publish(f"$KV.{subjects.SENT_BUCKET}.perm-{user}", b"sent")


async def _fetch(nc: Client, js: JetStreamContext, user: str) -> object:
    return await _fetch_one(js)


async def _ack(nc: Client, js: JetStreamContext, user: str) -> object:
    # the harness fetches (so only the ack is this identity's), this identity acks on the reply subject
    [msg] = await _as_harness(lambda h: _fetch_one(h.jetstream()))
    assert msg.reply
    await nc.publish(msg.reply, b"+ACK")
    return await nc.flush(timeout=PATIENCE)


async def _fetch_one(js: JetStreamContext) -> list[nats.aio.msg.Msg]:
    sub = await js.pull_subscribe_bind(durable=subjects.CONSUMER, stream=subjects.STREAM)
    try:
        return await sub.fetch(1, timeout=PATIENCE)
    finally:
        await sub.unsubscribe()


async def _consumer_info(nc: Client, js: JetStreamContext, user: str) -> object:
    return await js.consumer_info(subjects.STREAM, subjects.CONSUMER)


async def _other_consumer(nc: Client, js: JetStreamContext, user: str) -> object:
    return await nc.request(
        f"$JS.API.CONSUMER.CREATE.{subjects.STREAM}.snoop",
        json.dumps({"stream_name": subjects.STREAM, "config": {"durable_name": "snoop"}}).encode(),
        timeout=PATIENCE,
    )


async def _dead_letters(nc: Client, js: JetStreamContext, user: str) -> object:
    return await nc.request(
        f"$JS.API.STREAM.MSG.GET.{subjects.DLQ_STREAM}", json.dumps({"seq": 1}).encode(), timeout=PATIENCE
    )


async def _subscribe_events(nc: Client, js: JetStreamContext, user: str) -> object:
    await nc.subscribe(f"{subjects.SUBJECT_PREFIX}.>")
    return await nc.flush(timeout=PATIENCE)


async def _others_replies(nc: Client, js: JetStreamContext, user: str) -> object:
    other = WEB if user != WEB else NOTIFIER
    await nc.subscribe(f"{inbox_prefix(other)}.>")
    return await nc.flush(timeout=PATIENCE)


async def _bootstrap(nc: Client, js: JetStreamContext, user: str) -> object:
    # something to create: with everything in place, bootstrap only reads
    await _as_harness(lambda h: h.jetstream().delete_stream(subjects.DLQ_STREAM))
    return await topology.bootstrap(js)


ACTIONS = [
    Action("publish an event (`todos.created`, acked by the stream)", _publish_event),
    Action("read the `TODOS` stream's info", _stream_info),
    Action("delete the `TODOS` stream (`$JS.API.STREAM.DELETE.TODOS`)", _delete_stream),
    Action("change the `TODOS` stream's configuration", _change_stream),
    Action("purge the `TODOS` stream", _purge_stream),
    Action("read a `todos_sent` record", _kv_get),
    Action("write a `todos_sent` record", _kv_put),
    Action("fetch from `todos_broadcasters`", _fetch),
    Action("ack a message of `todos_broadcasters`", _ack),
    Action("read `todos_broadcasters`' info", _consumer_info),
    Action("create another consumer on `TODOS`", _other_consumer),
    Action("read the dead letters (`TODOS_DLQ`)", _dead_letters),
    Action("subscribe to `todos.>` (core)", _subscribe_events),
    Action("read another identity's replies (`_INBOX.<other>.>`)", _others_replies),
    Action("bootstrap a missing part of the topology (`python -m streams bootstrap`)", _bootstrap),
]

A, R = ALLOWED, REFUSED
EXPECTED = {  # action -> (web, notifier, streams)
    ACTIONS[0].name: (A, R, A),
    ACTIONS[1].name: (R, A, A),
    ACTIONS[2].name: (R, R, A),
    ACTIONS[3].name: (R, R, A),
    ACTIONS[4].name: (R, R, A),
    ACTIONS[5].name: (R, A, A),
    ACTIONS[6].name: (R, A, A),
    ACTIONS[7].name: (R, A, A),
    ACTIONS[8].name: (R, A, R),
    ACTIONS[9].name: (R, A, A),
    ACTIONS[10].name: (R, R, A),
    ACTIONS[11].name: (R, R, A),
    ACTIONS[12].name: (A, A, A),
    ACTIONS[13].name: (R, R, R),
    ACTIONS[14].name: (R, R, A),
}
USERS = (WEB, NOTIFIER, STREAMS)

_server: list[NatsServer] = []


async def _as_harness(work: Callable[[Client], Awaitable[object]]) -> object:
    harness = await nats.connect(_server[0].url)
    try:
        return await work(harness)
    finally:
        await harness.close()


async def _prepare() -> None:
    """The topology as bootstrap leaves it, with one event waiting for the consumer (the harness's doing)."""

    async def prepare(harness: Client) -> None:
        js = harness.jetstream()
        if await _has_snoop(js):
            await js.delete_consumer(subjects.STREAM, "snoop")
        await topology.bootstrap(js)
        await js.publish(subjects.Change.UPDATED.subject, b"{}")

    await _as_harness(prepare)


async def _has_snoop(js: JetStreamContext) -> bool:
    try:
        await js.consumer_info(subjects.STREAM, "snoop")
    except Exception:
        return False
    return True


async def attempt(user: str, action: Action) -> str:
    """Connect as `user` and try `action`: ALLOWED or REFUSED."""
    await _prepare()
    violations: list[str] = []

    async def on_error(error: Exception) -> None:
        if "permissions violation" in str(error).lower():
            violations.append(str(error))

    nc = await nats.connect(
        as_identity(_server[0].url, user), inbox_prefix=inbox_prefix(user), error_cb=on_error, allow_reconnect=False
    )
    try:
        task = asyncio.ensure_future(action.step(nc, nc.jetstream(timeout=PATIENCE), user))
        async with asyncio.timeout(PATIENCE * 2):
            while not task.done() and not violations:
                await asyncio.sleep(0.005)
        if violations:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return REFUSED
        with contextlib.suppress(APIError):  # JetStream answered (the request was let through): "not found"...
            task.result()
        return ALLOWED
    finally:
        await nc.close()


def render(results: dict[str, tuple[str, ...]]) -> str:
    lines = [f"| action | {' | '.join(f'`{user}`' for user in USERS)} |", "|---|" + "---|" * len(USERS)]
    lines += [f"| {name} | {' | '.join(cells)} |" for name, cells in results.items()]
    return "\n".join(lines)


@pytest.mark.timeout(120)
async def test_each_identity_may_do_its_job_and_nothing_else(nats_server: NatsServer) -> None:
    _server[:] = [nats_server]
    results = {action.name: tuple([await attempt(user, action) for user in USERS]) for action in ACTIONS}
    table = render(results)
    print(table)
    assert results == EXPECTED, table
    assert table in README.read_text(), "the README's table of NATS permissions is not this one:\n" + table


def test_every_identity_has_a_row_of_the_table() -> None:
    assert tuple(identity.user for identity in IDENTITIES) == USERS


@pytest.mark.timeout(60)
async def test_a_notifier_watch_of_its_bucket_runs_past_a_flow_control_window(nats_server: NatsServer) -> None:
    """`kv.watch` (how a replica follows the shared pauses) is an ordered consumer with flow control: the
    `notifier` user must answer `$JS.FC...`, or the watch stops after about 2 MB of updates, for good."""
    harness = await nats.connect(nats_server.url)
    notifier = await nats.connect(as_identity(nats_server.url, NOTIFIER), inbox_prefix=inbox_prefix(NOTIFIER))
    try:
        await topology.bootstrap(harness.jetstream())
        writes, value = 3000, b"x" * 1024  # 3 MB, past the server's flow-control window
        watcher = await (await notifier.jetstream().key_value(subjects.STATE_BUCKET)).watch("chat.*.pace")
        seen = 0

        async def watch() -> None:
            nonlocal seen
            async for entry in watcher:
                if entry is not None and entry.value:
                    seen += 1
                    if seen == writes:
                        return

        reader = asyncio.ensure_future(watch())
        kv = await harness.jetstream().key_value(subjects.STATE_BUCKET)
        for n in range(writes):
            await kv.put(f"chat.{n % 7}.pace", value)
        async with asyncio.timeout(30):
            await reader
        assert seen == writes
        await watcher.stop()
    finally:
        await notifier.close()
        await harness.close()
