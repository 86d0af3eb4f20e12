"""`python -m streams tail` as an operator runs it: as the `streams` user, its output read through a pipe."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext

from streams import subjects, topology
from streams.payload import Todo
from streams.permissions import STREAMS
from tests.services import NatsServer, as_identity, refusing_port

LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (?P<subject>todos\.\w+) (?P<id>[0-9a-f-]{36}) (?P<task>\".*\")"
)
PATIENCE = 20.0


class Tail:
    """`python -m streams tail ARGS` running, its stdout and stderr pipes read as lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def ready(self) -> None:
        """Wait until the subscription is in place (the line on stderr), so events published now are seen."""
        assert self.process.stderr is not None
        line = await asyncio.wait_for(self.process.stderr.readline(), PATIENCE)
        assert line.startswith(b"following todos.> on stream TODOS"), line

    async def lines(self, count: int) -> list[str]:
        assert self.process.stdout is not None
        read = [await asyncio.wait_for(self.process.stdout.readline(), PATIENCE) for _ in range(count)]
        return [line.decode().removesuffix("\n") for line in read]

    async def nothing_more(self, seconds: float = 0.5) -> None:
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), seconds)
        except TimeoutError:
            return
        pytest.fail(f"unexpected line: {line!r}")

    async def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """Send `sig`; the exit code and whatever stderr said after the ready line."""
        self.process.send_signal(sig)
        assert self.process.stderr is not None
        _, err = await asyncio.wait_for(self.process.communicate(), PATIENCE)
        return self.process.returncode if self.process.returncode is not None else -1, err.decode()


Start = Callable[..., Awaitable[Tail]]


@pytest.fixture
async def start_tail(nats_server: NatsServer) -> AsyncIterator[Start]:
    """Start `python -m streams tail` as the `streams` user and wait until it follows; killed after the test."""
    started: list[Tail] = []

    async def start(*args: str, stdout: int = asyncio.subprocess.PIPE) -> Tail:
        env = {**os.environ, "NATS_URL": as_identity(nats_server.url, STREAMS)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams", "tail", *args, env=env, stdout=stdout, stderr=asyncio.subprocess.PIPE
        )
        tail = Tail(process)
        started.append(tail)
        await tail.ready()
        return tail

    yield start
    for tail in started:
        if tail.process.returncode is None:
            tail.process.kill()
            await tail.process.communicate()


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[JetStreamContext]:
    """The harness's JetStream, with the topology bootstrapped: it publishes events as the outbox relay does."""
    nc = await nats.connect(nats_server.url)
    context = nc.jetstream()
    await topology.bootstrap(context)
    yield context
    await nc.close()


def todo(task: str, **changes: Any) -> Todo:
    now = datetime.now(UTC)
    return Todo(id=uuid.uuid4(), task=task, created_at=now, updated_at=now).model_copy(update=changes)


async def publish(js: JetStreamContext, change: subjects.Change, item: Todo) -> bytes:
    """Publish one event exactly as the relay does (payload bytes, a Nats-Msg-Id); return the payload."""
    payload = item.to_bytes()
    await js.publish(change.subject, payload, headers={subjects.MSG_ID_HEADER: str(uuid.uuid4())})
    return payload


async def test_tail_prints_each_new_event_on_one_line(js: JetStreamContext, start_tail: Start) -> None:
    """Time, subject, id and the task (as a JSON string, so a newline in it keeps the event on one line);
    events from before the start are not shown."""
    await publish(js, subjects.Change.CREATED, todo("from before the tail"))
    tail = await start_tail()
    created = todo('line one\nline "two" — ünïcode')
    started = datetime.now(UTC) - timedelta(seconds=1)
    await publish(js, subjects.Change.CREATED, created)
    await publish(js, subjects.Change.UPDATED, created.model_copy(update={"done": True}))
    await publish(js, subjects.Change.DELETED, created)

    lines = await tail.lines(3)
    await tail.nothing_more()
    code, err = await tail.stop()

    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [m["subject"] for m in matches if m] == ["todos.created", "todos.updated", "todos.deleted"]
    assert {m["id"] for m in matches if m} == {str(created.id)}
    assert {json.loads(m["task"]) for m in matches if m} == {created.task}
    assert all(datetime.fromisoformat(m["time"]) >= started for m in matches if m)
    assert (code, err) == (0, "")


async def test_tail_json_prints_each_payload_as_published(js: JetStreamContext, start_tail: Start) -> None:
    """`--json`: one line per event, the payload's bytes exactly (the API's todo JSON)."""
    tail = await start_tail("--json")
    sent = [await publish(js, subjects.Change.CREATED, todo(f"json {n}\nwith a newline")) for n in range(3)]

    lines = await tail.lines(3)
    code, _ = await tail.stop()

    assert [line.encode() for line in lines] == sent
    assert code == 0


async def test_tail_from_start_replays_then_follows(js: JetStreamContext, start_tail: Start) -> None:
    """`--from-start` shows the events already in the stream, oldest first, then the new ones."""
    earlier = [todo(f"earlier {n}") for n in range(2)]
    for item in earlier:
        await publish(js, subjects.Change.CREATED, item)
    tail = await start_tail("--from-start")
    replayed = await tail.lines(2)
    later = todo("later")
    await publish(js, subjects.Change.CREATED, later)
    followed = await tail.lines(1)
    code, _ = await tail.stop()

    ids = [m["id"] for m in map(LINE.fullmatch, replayed + followed) if m]
    assert ids == [str(item.id) for item in [*earlier, later]]
    assert code == 0


async def test_tail_from_start_reads_past_a_flow_control_window(js: JetStreamContext, start_tail: Start) -> None:
    """A replay of thousands of events arrives whole as the `streams` user: its ordered consumer's flow-control
    replies (`$JS.FC.TODOS.>`) are allowed (refused, delivery stopped after ~4,700 events of this size)."""
    count = 6000
    task = "x" * 140
    for start in range(0, count, 500):
        await asyncio.gather(*(publish(js, subjects.Change.CREATED, todo(task)) for _ in range(start, start + 500)))

    tail = await start_tail("--from-start", "--json")
    lines = await tail.lines(count)
    code, _ = await tail.stop()

    assert len({json.loads(line)["id"] for line in lines}) == count
    assert code == 0


async def test_tail_leaves_the_durable_consumer_alone(js: JetStreamContext, start_tail: Start) -> None:
    """Replaying and following change nothing of todos_broadcasters (pending, ack floor, delivered, ack-pending),
    and the tail's own consumer is gone once it exits."""
    for n in range(3):
        await publish(js, subjects.Change.CREATED, todo(f"for the notifiers {n}"))
    pull = await js.pull_subscribe_bind(durable=subjects.CONSUMER, stream=subjects.STREAM)
    [first] = await pull.fetch(1, timeout=5)
    await first.ack_sync()
    [held] = await pull.fetch(1, timeout=5)  # delivered, not acked: ack-pending
    await pull.unsubscribe()

    def state(info: Any) -> tuple[int, int, int, int, int]:
        return (
            info.num_pending,
            info.num_ack_pending,
            info.delivered.stream_seq,
            info.ack_floor.stream_seq,
            info.num_redelivered,
        )

    before = state(await js.consumer_info(subjects.STREAM, subjects.CONSUMER))
    tail = await start_tail("--from-start")
    await tail.lines(3)
    await publish(js, subjects.Change.CREATED, todo("while tailing"))
    await tail.lines(1)
    during = state(await js.consumer_info(subjects.STREAM, subjects.CONSUMER))
    code, _ = await tail.stop()
    after = state(await js.consumer_info(subjects.STREAM, subjects.CONSUMER))
    consumers = [info.name for info in await js.consumers_info(subjects.STREAM)]

    assert before == (1, 1, 2, 1, 0)
    assert during == after == (2, 1, 2, 1, 0)  # only the new event's arrival moved anything
    assert consumers == [subjects.CONSUMER]
    assert code == 0
    assert held.metadata.sequence.stream == 2


async def test_tail_follows_across_a_nats_restart(nats_server: NatsServer, start_tail: Start) -> None:
    """NATS restarts (the tail's in-memory consumer is lost): the tail reconnects and goes on from the event
    after the last one it showed, within seconds, none missed and none twice."""
    nc = await nats.connect(nats_server.url)
    await topology.bootstrap(nc.jetstream())
    tail = await start_tail()
    before = todo("before the restart")
    await publish(nc.jetstream(), subjects.Change.CREATED, before)
    shown = await tail.lines(1)
    await nc.close()

    nats_server.restart()
    nc = await nats.connect(nats_server.url)
    try:
        after = [todo(f"after the restart {n}") for n in range(2)]
        for item in after:
            await publish(nc.jetstream(), subjects.Change.CREATED, item)
        shown += await tail.lines(2)
    finally:
        await nc.close()
    code, _ = await tail.stop()

    assert [m["id"] for m in map(LINE.fullmatch, shown) if m] == [str(item.id) for item in [before, *after]]
    assert code == 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_tail_stops_cleanly_on_a_signal(js: JetStreamContext, start_tail: Start, sig: int) -> None:
    """Ctrl-C (SIGINT) and SIGTERM end the tail with 0 and nothing on stderr: no traceback."""
    tail = await start_tail()
    await publish(js, subjects.Change.CREATED, todo("seen"))
    await tail.lines(1)

    code, err = await tail.stop(sig)

    assert code == 0
    assert err == ""


async def test_tail_ends_quietly_when_the_reader_goes_away(js: JetStreamContext, start_tail: Start) -> None:
    """`tail | head -1`: once the reader closed the pipe, the next event ends the tail with 0, no BrokenPipeError."""
    read_end, write_end = os.pipe()
    try:
        tail = await start_tail(stdout=write_end)
    finally:
        os.close(write_end)
    await publish(js, subjects.Change.CREATED, todo("read"))
    first = await asyncio.wait_for(asyncio.to_thread(os.read, read_end, 4096), PATIENCE)
    os.close(read_end)
    await publish(js, subjects.Change.CREATED, todo("nobody reads this"))

    assert tail.process.stderr is not None
    code = await asyncio.wait_for(tail.process.wait(), PATIENCE)
    err = await tail.process.stderr.read()

    assert LINE.fullmatch(first.decode().strip())
    assert code == 0
    assert err == b""


async def test_tail_without_nats_is_one_clear_line() -> None:
    """A NATS that does not answer: one line naming the URL, a non-zero exit, no traceback."""
    with refusing_port() as port:
        env = {**os.environ, "NATS_URL": f"nats://127.0.0.1:{port}"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streams", "tail", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), PATIENCE)

    assert process.returncode != 0
    assert out == b""
    assert err.decode().strip().splitlines() == [f"streams tail: NATS did not answer at nats://127.0.0.1:{port}"]


async def test_tail_without_the_stream_says_to_bootstrap(nats_server: NatsServer) -> None:
    """Before `bootstrap` there is nothing to follow: one line saying so, a non-zero exit."""
    env = {**os.environ, "NATS_URL": as_identity(nats_server.url, STREAMS)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams", "tail", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), PATIENCE)

    assert process.returncode != 0
    assert err.decode().strip().splitlines() == [
        "streams tail: LookupError: no stream TODOS on NATS: run `python -m streams bootstrap`"
    ]
