"""Notifier test kit: a fake Telegram, a JetStream client, events to publish, replicas as processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from streams import subjects, topology
from streams.payload import Todo
from streams.subjects import MSG_ID_HEADER, Change
from tests.fake_telegram import FakeTelegram
from tests.services import NatsServer, free_port

CHAT_ID = -1001234567890
REPO = Path(__file__).resolve().parents[2]


async def wait_until(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll `condition` (sync or async) until it is truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def drained(js: JetStreamContext, *holders: Replica, timeout: float = 30.0) -> ConsumerInfo:
    """Wait until the shared consumer has delivered every event and every delivery is settled (acked or
    terminated), and the running replicas in `holders` hold nothing, on two polls in a row; return the
    consumer's info then.

    Count messages only after this: a duplicate comes from a delivery still pending or held, and
    JetStream redelivers an event only when its ack wait (5 s) ran out, so no short sleep can show one.
    """
    streak = 0

    async def quiet() -> bool:
        nonlocal streak
        info = await js.consumer_info(subjects.STREAM, subjects.CONSUMER)
        idle = info.num_pending == 0 and info.num_ack_pending == 0
        for replica in holders:
            idle = idle and await replica.metric("notifier_events_in_flight") == 0
        streak = streak + 1 if idle else 0
        return streak >= 2

    await wait_until(quiet, timeout, "the consumer drained and the replicas holding nothing")
    info: ConsumerInfo = await js.consumer_info(subjects.STREAM, subjects.CONSUMER)
    return info


def make_todo(task: str = "buy milk", **fields: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return Todo(id=uuid.uuid4(), task=task, created_at=now, updated_at=now, **fields).to_json()


async def publish(js: JetStreamContext, change: Change = Change.CREATED, todo: dict[str, Any] | None = None,
                  event_id: str | None = None, data: bytes | None = None) -> str:  # fmt: skip
    """Publish one event as the outbox relay does; return its event id."""
    event_id = event_id or str(uuid.uuid4())
    body = data if data is not None else json.dumps(todo or make_todo()).encode()
    await js.publish(change.subject, body, headers={MSG_ID_HEADER: event_id})
    return event_id


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    """A fake Telegram Bot API on a free port."""
    async with FakeTelegram() as server:
        yield server


@pytest_asyncio.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest_asyncio.fixture
async def js(nc: Client) -> JetStreamContext:
    """JetStream with the topology in place."""
    context = nc.jetstream()
    await topology.bootstrap(context)
    return context


class Replica:
    """`python -m notifier` as a child process; stderr (the log) kept in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.port = int(env["NOTIFIER_PORT"])
        self.log_path = log_path
        full_env = {**os.environ, **env}
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "notifier"], cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def status(self, path: str) -> int | None:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(self.url + path, timeout=aiohttp.ClientTimeout(total=2)) as response,
            ):
                return response.status
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/metrics") as response:
            return await response.text()

    async def metric(self, name: str) -> float:
        for line in (await self.metrics()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    async def wait_ready(self, timeout: float = 30.0) -> None:
        async def ready() -> bool:
            assert self.process.poll() is None, f"replica exited: {self.log()}"
            return await self.status("/readyz") == 200

        await wait_until(ready, timeout, "replica ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"raw": line})
        return lines

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        await wait_until(lambda: self.process.poll() is not None, timeout, "replica exit")
        return int(self.process.returncode)

    def stop(self) -> None:
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@pytest.fixture
def replicas(nats_server: NatsServer, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start notifier replicas: `start(fake=..., **env)`; all are killed at the end."""
    started: list[Replica] = []

    def start(fake: FakeTelegram | None = None, **env: str) -> Replica:
        base = {
            "NATS_URL": nats_server.url,
            "NOTIFIER_PORT": str(free_port()),
            "LOG_LEVEL": "info",
            "LOG_FORMAT": "json",
            "NOTIFIER_PROBE_INTERVAL": "0.5",
            # unpaced (one message per event, concurrent) unless a test sets Telegram's limits
            "TELEGRAM_CHAT_RATE": "off",
            "TELEGRAM_GROUP_RATE": "off",
        }
        if fake is not None:
            base |= {
                "TELEGRAM_ACCESS_TOKEN": fake.token,
                "TELEGRAM_CHAT_ID": str(CHAT_ID),
                "TELEGRAM_API_BASE_URL": fake.base_url,
            }
        replica = Replica(base | env, tmp_path / f"replica-{len(started)}.log")
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()
    # whatever the test did, the token never reached a log line
    for replica in started:
        token = replica.env.get("TELEGRAM_ACCESS_TOKEN")
        assert not token or token.lower() not in replica.log().lower(), f"token leaked into {replica.log_path}"
