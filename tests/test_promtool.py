"""/metrics of the API and of a notifier, as real processes after real traffic, checked by Prometheus' own tools.

The Prometheus text format goes through `promtool check metrics` (its linter: names, HELP, TYPE, suffixes).
That linter reads the text format only (OpenMetrics' `_created` series and `# EOF` would be reported as
problems), so OpenMetrics goes through Prometheus' OpenMetrics parser instead, the one a scrape uses:
`promtool tsdb create-blocks-from openmetrics`, which wants a timestamp on every sample (added here).
promtool comes from Debian's `prometheus` package; .ci/run installs it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import nats
import pytest

from streams import subjects, topology
from streams.payload import Todo
from tests.fake_telegram import FakeTelegram
from tests.processes import Proc, start_notifier, start_web
from tests.services import NatsServer

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian: apt-get install prometheus; .ci/run does)"
)

CHAT_ID = -1001234567890
# what Prometheus 2.x sends when it scrapes: OpenMetrics first, the text format as the fallback
SCRAPE_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
OPENMETRICS = "application/openmetrics-text"
PATIENCE = 30.0


async def _metrics(proc: Proc, accept: str | None) -> tuple[str, bytes]:
    """GET /metrics with this Accept header (None: none, as curl): the Content-Type and the body."""
    headers = {"Accept": accept} if accept is not None else {}
    async with aiohttp.ClientSession() as session, session.get(f"{proc.url}/metrics", headers=headers) as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.read()


def check_text(body: bytes) -> None:
    """`promtool check metrics`: exit 0 and not one complaint."""
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60, check=False)
    complaints = (result.stdout + result.stderr).decode()
    assert (result.returncode, complaints) == (0, ""), complaints


def check_openmetrics(body: bytes, workdir: Path) -> None:
    """Prometheus' OpenMetrics parser accepts the whole exposition, `# EOF` included."""
    assert PROMTOOL is not None
    stamp = str(int(time.time()))
    lines = []
    for line in body.decode().splitlines():
        if line.startswith("#"):
            lines.append(line)
        else:  # `name{labels} value`, then the timestamp, before an exemplar if there is one
            sample, hashed, exemplar = line.partition(" # ")
            lines.append(f"{sample} {stamp}" + (f" # {exemplar}" if hashed else ""))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "metrics.om"
    source.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(workdir / "blocks")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


async def _wait(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + PATIENCE
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def jetstream(nats_server: NatsServer) -> NatsServer:
    """A nats-server with the topology in place."""
    nc = await nats.connect(nats_server.url)
    try:
        await topology.bootstrap(nc.jetstream())
    finally:
        await nc.close()
    return nats_server


@pytest.fixture
async def api(jetstream: NatsServer, tmp_path: Path) -> AsyncIterator[Proc]:
    """`python -m web` on SQLite, after a todo was created and its event relayed to the stream."""
    proc = start_web(database_url=f"sqlite://{tmp_path / 'todos.sqlite3'}", nats_url=jetstream.url, log_dir=tmp_path)
    try:
        await proc.ready()
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{proc.url}/api/todos", json={"task": "metrics"}) as response:
                assert response.status == 201
            async with session.get(f"{proc.url}/api/todos/{uuid.uuid4()}") as response:
                assert response.status == 404
        nc = await nats.connect(jetstream.url)
        try:

            async def relayed() -> bool:
                return bool((await nc.jetstream().stream_info(subjects.STREAM)).state.messages)

            await _wait(relayed, "the event in the stream")
        finally:
            await nc.close()
        yield proc
    finally:
        await proc.stop()


@pytest.fixture
async def notifier(jetstream: NatsServer, tmp_path: Path) -> AsyncIterator[Proc]:
    """`python -m notifier` on a fake Telegram, after it delivered one event."""
    async with FakeTelegram() as fake:
        proc = start_notifier(
            nats_url=jetstream.url, telegram_base_url=fake.base_url, token=fake.token, chat_id=CHAT_ID, log_dir=tmp_path
        )
        try:
            await proc.ready()
            now = datetime.now(UTC)
            todo = Todo(id=uuid.uuid4(), task="metrics", created_at=now, updated_at=now)
            nc = await nats.connect(jetstream.url)
            try:
                headers = {subjects.MSG_ID_HEADER: str(uuid.uuid4())}
                await nc.jetstream().publish(subjects.Change.CREATED.subject, todo.to_bytes(), headers=headers)
            finally:
                await nc.close()

            async def delivered() -> bool:
                return bool(fake.sent)

            await _wait(delivered, "the message in the fake Telegram")
            yield proc
        finally:
            await proc.stop()


async def test_notifier_metrics_pass_promtool(notifier: Proc, tmp_path: Path) -> None:
    """The notifier's /metrics: the text format by default, OpenMetrics when a scrape asks; both valid."""
    text_type, text = await _metrics(notifier, None)
    om_type, om = await _metrics(notifier, SCRAPE_ACCEPT)

    assert text_type.startswith("text/plain; version=0.0.4")
    check_text(text)
    assert om_type.startswith(OPENMETRICS)
    check_openmetrics(om, tmp_path)
    assert b"# EOF" in om


async def test_api_metrics_pass_promtool(api: Proc, tmp_path: Path) -> None:
    """The API's /metrics in the text format; in OpenMetrics too when it answers a scrape with it."""
    text_type, text = await _metrics(api, None)
    om_type, om = await _metrics(api, SCRAPE_ACCEPT)

    assert text_type.startswith("text/plain")
    check_text(text)
    if om_type.startswith(OPENMETRICS):
        check_openmetrics(om, tmp_path)
    else:  # the API answered the scrape in the text format: it must be valid all the same
        check_text(om)


def test_the_openmetrics_check_catches_a_broken_exposition(tmp_path: Path) -> None:
    """The OpenMetrics check is no rubber stamp: a missing `# EOF` or an unknown TYPE fails it."""
    valid = b'# HELP x x\n# TYPE x counter\nx_total{a="b"} 1.0\n# EOF\n'
    check_openmetrics(valid, tmp_path / "valid")
    for broken in (valid.replace(b"# EOF\n", b""), valid.replace(b"counter", b"bogus")):
        with pytest.raises(AssertionError):
            check_openmetrics(broken, tmp_path / str(uuid.uuid4()))
