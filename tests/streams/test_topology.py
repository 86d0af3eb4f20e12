"""The JetStream topology as code: created once, then left alone; updated in place when it drifts."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, DeliverPolicy, DiscardPolicy, RetentionPolicy, StorageType

from streams import subjects, topology
from tests.services import NatsServer

ROOT = Path(__file__).resolve().parents[2]


async def test_bootstrap_twice_changes_nothing_the_second_time(nats_server: NatsServer) -> None:
    """First run creates all six objects, the second reports them unchanged and leaves configs equal."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    first = await topology.bootstrap(js)
    before = (await js.stream_info(subjects.STREAM)).config.as_dict()
    consumer_before = (await js.consumer_info(subjects.STREAM, subjects.CONSUMER)).config.as_dict()
    second = await topology.bootstrap(js)
    after = (await js.stream_info(subjects.STREAM)).config.as_dict()
    consumer_after = (await js.consumer_info(subjects.STREAM, subjects.CONSUMER)).config.as_dict()
    await nc.close()

    assert [a.outcome for a in first] == ["created"] * 6
    assert [a.outcome for a in second] == ["unchanged"] * 6
    assert before == after
    assert consumer_before == consumer_after


async def assert_server_follows_topology(js: JetStreamContext) -> None:
    """What the server holds after bootstrap equals the constants of `topology`, read now (so tests can patch them)."""
    stream = (await js.stream_info(subjects.STREAM)).config
    consumer = (await js.consumer_info(subjects.STREAM, subjects.CONSUMER)).config
    dlq = (await js.stream_info(subjects.DLQ_STREAM)).config
    sent = (await js.stream_info(topology.kv_stream_name(subjects.SENT_BUCKET))).config
    state = (await js.stream_info(topology.kv_stream_name(subjects.STATE_BUCKET))).config
    replies = (await js.stream_info(topology.kv_stream_name(subjects.REPLIES_BUCKET))).config
    sent_status = await (await js.key_value(subjects.SENT_BUCKET)).status()

    assert consumer.ack_wait == topology.ACK_WAIT
    assert consumer.max_deliver == topology.MAX_DELIVER
    assert consumer.ack_policy == AckPolicy.EXPLICIT
    assert consumer.max_ack_pending == topology.MAX_ACK_PENDING
    assert stream.max_age == topology.STREAM_MAX_AGE
    assert stream.duplicate_window == topology.DUPLICATE_WINDOW
    assert stream.storage == StorageType.FILE
    assert sent.max_age == topology.SENT_TTL
    assert sent_status.ttl == topology.SENT_TTL
    assert sent.max_msgs_per_subject == 1
    assert state.max_age == 0  # chat state never expires
    assert state.max_msgs_per_subject == 1
    assert replies.max_age == topology.STREAM_MAX_AGE  # an announcement is kept as long as the events
    assert replies.max_msgs_per_subject == 1
    assert dlq.max_age == topology.DLQ_MAX_AGE
    assert sorted(dlq.subjects or []) == sorted([subjects.MAX_DELIVERIES_ADVISORY, subjects.TERMINATED_ADVISORY])


async def test_stream_and_consumer_follow_the_contract(nats_server: NatsServer) -> None:
    """TODOS: todos.*, file storage, limits, 7 days, 2 min duplicates; durable explicit-ack pull consumer."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await topology.bootstrap(js)
    stream = (await js.stream_info("TODOS")).config
    consumer = await js.consumer_info("TODOS", "todos_broadcasters")
    try:
        await assert_server_follows_topology(js)
    finally:
        await nc.close()

    assert stream.subjects == ["todos.*"]
    assert stream.storage == StorageType.FILE
    assert stream.retention == RetentionPolicy.LIMITS
    assert stream.max_age == 7 * 24 * 3600
    assert stream.duplicate_window == 120
    assert consumer.config.durable_name == "todos_broadcasters"
    assert consumer.config.deliver_subject is None  # pull
    assert consumer.config.ack_policy is not None
    assert consumer.config.ack_policy == AckPolicy.EXPLICIT
    # the constants the server was just checked against, pinned to the contract's values
    assert topology.ACK_WAIT == 5
    assert topology.MAX_DELIVER == 30
    assert topology.MAX_ACK_PENDING == 10_000
    assert topology.DLQ_MAX_AGE == 30 * 24 * 3600
    # sent ids outlive every event the stream can still deliver
    assert topology.SENT_TTL == topology.STREAM_MAX_AGE + 24 * 3600
    assert topology.SENT_TTL > topology.STREAM_MAX_AGE


async def test_the_server_holds_the_values_the_readme_promises(nats_server: NatsServer) -> None:
    """After bootstrap the server holds, as literal values, what the README says and topology.py defines:
    the consumer's ack wait 5 s, 30 deliveries, explicit acks; todos_sent keeps ids 8 days, TODOS events 7,
    2 minutes of duplicates; chat state never expires; the dead letters are a limits stream on disk, kept
    30 days, bounded by age alone. A change to any of them, in the code or in the README alone, fails here."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        await topology.bootstrap(js)
        stream = (await js.stream_info(subjects.STREAM)).config
        consumer = (await js.consumer_info(subjects.STREAM, subjects.CONSUMER)).config
        dlq = (await js.stream_info(subjects.DLQ_STREAM)).config
        sent = await (await js.key_value(subjects.SENT_BUCKET)).status()
        state = await (await js.key_value(subjects.STATE_BUCKET)).status()
        sent_stream = (await js.stream_info(topology.kv_stream_name(subjects.SENT_BUCKET))).config
        state_stream = (await js.stream_info(topology.kv_stream_name(subjects.STATE_BUCKET))).config
        replies = await (await js.key_value(subjects.REPLIES_BUCKET)).status()
    finally:
        await nc.close()
    day = 24 * 3600

    assert (consumer.ack_wait, consumer.max_deliver, consumer.ack_policy) == (5, 30, AckPolicy.EXPLICIT)
    assert (consumer.deliver_policy, consumer.filter_subject) == (DeliverPolicy.ALL, "todos.*")
    assert consumer.max_ack_pending == 10_000
    assert (stream.retention, stream.storage, stream.discard) == (
        RetentionPolicy.LIMITS,
        StorageType.FILE,
        DiscardPolicy.OLD,
    )
    assert (stream.max_age, stream.duplicate_window) == (7 * day, 120)
    assert (stream.max_msgs, stream.max_bytes, stream.max_msgs_per_subject) == (-1, -1, -1)
    assert (sent.ttl, sent_stream.max_msgs_per_subject) == (8 * day, 1)
    assert (state.ttl, state_stream.max_msgs_per_subject) == (0, 1)
    assert replies.ttl == 7 * day
    assert (dlq.retention, dlq.storage, dlq.discard) == (RetentionPolicy.LIMITS, StorageType.FILE, DiscardPolicy.OLD)
    assert dlq.max_age == 30 * day
    assert (dlq.max_msgs, dlq.max_bytes, dlq.max_msgs_per_subject) == (-1, -1, -1)
    assert sorted(dlq.subjects or []) == [
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.TODOS.todos_broadcasters",
        "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.TODOS.todos_broadcasters",
    ]

    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    said = {
        "ack wait": re.findall(r"ack wait (\d+) s\b", readme),
        "deliveries": re.findall(r"\b(\d+) deliveries", readme),
        "sent ttl": re.findall(r"it keeps an event (\d+) days, longer than the stream keeps it \((\d+)\)", readme),
        "duplicate window": re.findall(r"(\d+)-minute duplicate window", readme),
    }
    assert said == {
        "ack wait": [str(int(consumer.ack_wait or 0))] * len(said["ack wait"]),
        "deliveries": [str(consumer.max_deliver)] * len(said["deliveries"]),
        "sent ttl": [(str(int(sent.ttl or 0) // day), str(int(stream.max_age or 0) // day))],
        "duplicate window": [str(int(stream.duplicate_window or 0) // 60)] * len(said["duplicate window"]),
    }
    assert all(said.values()), f"the README no longer states some of these: {said}"


async def test_every_constant_reaches_the_server(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """With each constant set to a value neither the server's default nor the real one, the server holds it.

    So each assertion of assert_server_follows_topology fails if bootstrap stops passing its constant.
    """
    monkeypatch.setattr(topology, "ACK_WAIT", 7.0)
    monkeypatch.setattr(topology, "MAX_DELIVER", 11)
    monkeypatch.setattr(topology, "MAX_ACK_PENDING", 123)
    monkeypatch.setattr(topology, "STREAM_MAX_AGE", 3 * topology.DAY)
    monkeypatch.setattr(topology, "DUPLICATE_WINDOW", 45.0)
    monkeypatch.setattr(topology, "DLQ_MAX_AGE", 5 * topology.DAY)
    monkeypatch.setattr(topology, "SENT_TTL", 4 * topology.DAY)
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        await topology.bootstrap(js)
        await assert_server_follows_topology(js)
    finally:
        await nc.close()


async def test_sent_bucket_with_the_old_ttl_is_updated_in_place(nats_server: NatsServer) -> None:
    """todos_sent made with the old 2-day TTL gets SENT_TTL, keeps its keys and the rest of its config."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    old = await js.create_key_value(bucket=subjects.SENT_BUCKET, ttl=2 * topology.DAY, history=1)
    await old.put("event-1", b"sent")
    name = topology.kv_stream_name(subjects.SENT_BUCKET)
    before = (await js.stream_info(name)).config
    first = await topology.bootstrap(js)
    after = (await js.stream_info(name)).config
    status = await (await js.key_value(subjects.SENT_BUCKET)).status()
    kept = await (await js.key_value(subjects.SENT_BUCKET)).get("event-1")
    second = await topology.bootstrap(js)
    await nc.close()

    assert before.max_age == 2 * topology.DAY
    assert str(first[3]) == "kv todos_sent: updated (ttl)"
    assert first[3] == topology.Action("kv", subjects.SENT_BUCKET, "updated", ("ttl",))
    assert after.max_age == topology.SENT_TTL
    assert status.ttl == topology.SENT_TTL
    assert kept.value == b"sent"
    # everything but the TTL is as the bucket was made
    assert after.num_replicas == before.num_replicas
    assert after.max_msgs_per_subject == before.max_msgs_per_subject == 1
    assert after.duplicate_window == before.duplicate_window
    assert after.discard == before.discard == DiscardPolicy.NEW
    assert after.allow_rollup_hdrs is True
    assert after.deny_delete is True
    assert after.subjects == before.subjects
    assert second[3] == topology.Action("kv", subjects.SENT_BUCKET, "unchanged")
    assert [a.outcome for a in second] == ["unchanged"] * 6


async def test_kv_history_drift_is_put_back(nats_server: NatsServer) -> None:
    """A bucket whose history was raised by hand is put back to 1, the report says history only."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.create_key_value(bucket=subjects.STATE_BUCKET, history=5)
    actions = await topology.bootstrap(js)
    state = (await js.stream_info(topology.kv_stream_name(subjects.STATE_BUCKET))).config
    await nc.close()

    assert actions[4] == topology.Action("kv", subjects.STATE_BUCKET, "updated", ("history",))
    assert state.max_msgs_per_subject == 1
    assert state.max_age == 0


async def test_concurrent_bootstraps_agree(nats_server: NatsServer) -> None:
    """Several bootstraps at once (fresh server, then a drifted KV TTL) all succeed and leave the contract."""
    connections = [await nats.connect(nats_server.url) for _ in range(3)]
    try:
        fresh = await asyncio.gather(*(topology.bootstrap(nc.jetstream()) for nc in connections))
        js = connections[0].jetstream()
        drifted = (await js.stream_info(topology.kv_stream_name(subjects.SENT_BUCKET))).config
        drifted.max_age = 2 * topology.DAY
        await js.update_stream(drifted)
        repaired = await asyncio.gather(*(topology.bootstrap(nc.jetstream()) for nc in connections))
        await assert_server_follows_topology(js)
        after = await topology.bootstrap(js)
    finally:
        for nc in connections:
            await nc.close()

    assert all(len(actions) == 6 for actions in fresh)
    assert all(actions[3].outcome in {"updated", "unchanged"} for actions in repaired)
    assert any(actions[3].outcome == "updated" for actions in repaired)
    assert [a.outcome for a in after] == ["unchanged"] * 6


async def test_drifted_config_is_updated_in_place(nats_server: NatsServer) -> None:
    """A stream whose max_age was changed by hand is put back, and the report names the field."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await topology.bootstrap(js)
    drifted = topology.stream_config()
    drifted.max_age = 3600
    await js.update_stream(drifted)
    actions = await topology.bootstrap(js)
    restored = (await js.stream_info("TODOS")).config
    await nc.close()

    assert str(actions[0]) == "stream TODOS: updated (max_age)"
    assert restored.max_age == topology.STREAM_MAX_AGE
