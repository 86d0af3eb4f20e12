"""The JetStream topology as code: created once, then left alone; updated in place when it drifts."""

from __future__ import annotations

import nats
from nats.js.api import AckPolicy, RetentionPolicy, StorageType

from streams import subjects, topology
from tests.services import NatsServer


async def test_bootstrap_twice_changes_nothing_the_second_time(nats_server: NatsServer) -> None:
    """First run creates all five objects, the second reports them unchanged and leaves configs equal."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    first = await topology.bootstrap(js)
    before = (await js.stream_info(subjects.STREAM)).config.as_dict()
    consumer_before = (await js.consumer_info(subjects.STREAM, subjects.CONSUMER)).config.as_dict()
    second = await topology.bootstrap(js)
    after = (await js.stream_info(subjects.STREAM)).config.as_dict()
    consumer_after = (await js.consumer_info(subjects.STREAM, subjects.CONSUMER)).config.as_dict()
    await nc.close()

    assert [a.outcome for a in first] == ["created"] * 5
    assert [a.outcome for a in second] == ["unchanged"] * 5
    assert before == after
    assert consumer_before == consumer_after


async def test_stream_and_consumer_follow_the_contract(nats_server: NatsServer) -> None:
    """TODOS: todos.*, file storage, limits, 7 days, 2 min duplicates; durable explicit-ack pull consumer."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await topology.bootstrap(js)
    stream = (await js.stream_info("TODOS")).config
    consumer = await js.consumer_info("TODOS", "todos_broadcasters")
    dlq = (await js.stream_info("TODOS_DLQ")).config
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
    assert sorted(dlq.subjects or []) == sorted([subjects.MAX_DELIVERIES_ADVISORY, subjects.TERMINATED_ADVISORY])


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
