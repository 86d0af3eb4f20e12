"""The JetStream topology as code: what `python -m streams bootstrap` makes exist.

Stream TODOS holds every event for 7 days; the one durable pull consumer todos_broadcasters is
shared by all notifier replicas (each event goes to one replica); TODOS_DLQ captures the
consumer's MAX_DELIVERIES and MSG_TERMINATED advisories, which point back into TODOS; three KV
buckets hold what notifiers share (sent event ids for de-duplication, chat state, the message that
announced each todo, which its later changes reply to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from streams import subjects

DAY = 24 * 60 * 60
STREAM_MAX_AGE = 7 * DAY
DUPLICATE_WINDOW = 120.0
# short, so a replica that dies holding events gives them up quickly; slow sends call in_progress()
ACK_WAIT = 5.0
# enough for long Telegram outages: the notifier spaces redeliveries with nak(delay) growing to 60 s
MAX_DELIVER = 30
MAX_ACK_PENDING = 10_000
DLQ_MAX_AGE = 30 * DAY
# todos_sent must remember an event id as long as TODOS can still deliver that event: if the consumer is
# ever recreated (deliver_policy=all) or a dead letter is replayed, every event still in the stream comes
# again, and only an id still in todos_sent keeps it from reaching Telegram twice. So the TTL covers the
# stream's whole retention, plus a day for events redelivered late (nak delays, outages, a slow replay).
SENT_TTL = STREAM_MAX_AGE + DAY


def stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.STREAM,
        description="Every change of a todo, published by the API's outbox relay",
        subjects=[subjects.SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=STREAM_MAX_AGE,
        duplicate_window=DUPLICATE_WINDOW,
        num_replicas=replicas,
    )


def consumer_config() -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.CONSUMER,
        description="Shared by every notifier replica: each event is sent by one of them",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        max_deliver=MAX_DELIVER,
        max_ack_pending=MAX_ACK_PENDING,
        filter_subject=subjects.SUBJECTS,
    )


def dlq_stream_config(replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=subjects.DLQ_STREAM,
        description="Dead letters of todos_broadcasters: advisories pointing at events in TODOS",
        subjects=[subjects.MAX_DELIVERIES_ADVISORY, subjects.TERMINATED_ADVISORY],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=DLQ_MAX_AGE,
        num_replicas=replicas,
    )


def kv_configs(replicas: int = 1) -> list[KeyValueConfig]:
    return [
        KeyValueConfig(
            bucket=subjects.SENT_BUCKET,
            ttl=SENT_TTL,
            history=1,
            replicas=replicas,
            description="Event ids Telegram confirmed, so a redelivery is not sent twice",
        ),
        KeyValueConfig(
            bucket=subjects.STATE_BUCKET,
            history=1,
            replicas=replicas,
            description="State every notifier shares: migrated chat ids, rate-limit pauses",
        ),
        # a todo's announcement is worth replying to as long as the stream can still deliver its changes;
        # read at call time, like every constant here, so a changed retention reaches the bucket too
        KeyValueConfig(
            bucket=subjects.REPLIES_BUCKET,
            ttl=STREAM_MAX_AGE,
            history=1,
            replicas=replicas,
            description="Message id announcing each todo, per chat: its updates and deletion reply to it",
        ),
    ]


@dataclass(frozen=True)
class Action:
    """One line of bootstrap's report."""

    kind: str
    name: str
    outcome: str  # created | updated | unchanged
    changed: tuple[str, ...] = ()

    def __str__(self) -> str:
        detail = f" ({', '.join(self.changed)})" if self.changed else ""
        return f"{self.kind} {self.name}: {self.outcome}{detail}"


def _differences(wanted: Any, current: Any) -> tuple[str, ...]:
    """Fields set in `wanted` whose value differs in `current` (fields left to the server's default are ignored)."""
    have = current.as_dict()
    changed = []
    for key, value in wanted.as_dict().items():
        if key in {"name", "durable_name"} or value in (None, 0):
            continue
        other = have.get(key)
        if isinstance(value, list) and isinstance(other, list):
            same = sorted(map(str, other)) == sorted(map(str, value))
        else:
            same = value == other
        if not same:
            changed.append(key)
    return tuple(changed)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> Action:
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return Action("stream", config.name, "created")
    changed = _differences(config, info.config)
    if not changed:
        return Action("stream", config.name, "unchanged")
    await js.update_stream(config)
    return Action("stream", config.name, "updated", changed)


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> Action:
    assert config.durable_name is not None
    try:
        info = await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        await js.add_consumer(stream, config)
        return Action("consumer", f"{stream}/{config.durable_name}", "created")
    changed = _differences(config, info.config)
    if not changed:
        return Action("consumer", f"{stream}/{config.durable_name}", "unchanged")
    # add_consumer with the same durable updates its editable fields in place
    await js.add_consumer(stream, config)
    return Action("consumer", f"{stream}/{config.durable_name}", "updated", changed)


def kv_stream_name(bucket: str) -> str:
    """The stream that holds a KV bucket."""
    return f"KV_{bucket}"


async def ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> Action:
    """Create the bucket, or put its TTL and history back in place (replicas are raised, never lowered).

    A bucket is the stream KV_<bucket>: its max_age is the TTL, max_msgs_per_subject the history,
    num_replicas the replicas. The rest of the stream's config (set by whoever created it) is kept.
    """
    name = kv_stream_name(config.bucket)
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        # two bootstraps racing here both create the same config: the server accepts an identical create
        await js.create_key_value(config)
        return Action("kv", config.bucket, "created")
    current = info.config
    ttl = float(config.ttl or 0)
    changed = []
    if float(current.max_age or 0) != ttl:
        changed.append("ttl")
        current.max_age = ttl
        if ttl and current.duplicate_window and current.duplicate_window > ttl:
            # the server refuses a duplicate window longer than max_age (create_key_value caps it the same way)
            current.duplicate_window = ttl
    if current.max_msgs_per_subject != config.history:
        changed.append("history")
        current.max_msgs_per_subject = config.history
    if (current.num_replicas or 1) < config.replicas:
        changed.append("replicas")
        current.num_replicas = config.replicas
    if not changed:
        return Action("kv", config.bucket, "unchanged")
    await js.update_stream(current)
    return Action("kv", config.bucket, "updated", tuple(changed))


async def bootstrap(js: JetStreamContext, replicas: int = 1) -> list[Action]:
    """Create or update everything JetStream needs; safe to run any number of times, concurrently."""
    actions = [
        await ensure_stream(js, stream_config(replicas)),
        await ensure_stream(js, dlq_stream_config(replicas)),
        await ensure_consumer(js, subjects.STREAM, consumer_config()),
    ]
    actions += [await ensure_kv(js, kv) for kv in kv_configs(replicas)]
    return actions
