"""`python -m web` as a process: the SQLite default, settings errors, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]
import pytest

from tests.processes import Proc, start_web
from tests.services import NatsServer, free_port, refusing_port
from tests.web.helpers import wait_for, wait_for_events

ROOT = Path(__file__).resolve().parents[2]
Starter = Callable[[str, str], Awaitable[Proc]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Starter]:
    """Start `python -m web` on a database and NATS and wait until ready; killed after the test if still running."""
    processes: list[Proc] = []

    async def start(database_url: str, nats_url: str) -> Proc:
        proc = start_web(database_url=database_url, nats_url=nats_url, log_dir=tmp_path, name=f"web-{len(processes)}")
        processes.append(proc)
        return await proc.ready()

    yield start
    for proc in processes:
        proc.kill()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_sqlite_default_serves_and_publishes(
    start: Starter, tmp_path: Path, jetstream: NatsServer, http: aiohttp.ClientSession
) -> None:
    """With a SQLite URL (in a directory that does not exist yet) the API migrates, serves POST/GET and publishes."""
    database = tmp_path / "not" / "yet" / "todos.sqlite3"
    base = (await start(f"sqlite://{database}", jetstream.url)).url
    async with http.post(f"{base}/api/todos", json={"task": "on sqlite"}) as response:
        assert response.status == 201
        created = await response.json()
    async with http.put(f"{base}/api/todos/{created['id']}", json={"done": True}) as response:
        assert response.status == 200
        updated = await response.json()
    async with http.get(f"{base}/api/todos") as response:
        assert await response.json() == [updated]
    async with http.get(f"{base}/readyz") as response:
        assert response.status == 200
    assert database.is_file()
    events = await wait_for_events(jetstream.url, 2)
    assert [event.payload for event in events] == [created, updated]


def run_web(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("NATS_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "-m", "web"],
        cwd=ROOT,
        env=clean | {"LOG_LEVEL": "critical"} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_setting_stops_with_one_line(tmp_path: Path) -> None:
    """A malformed setting stops the process at start with one line naming the variable."""
    result = run_web(PORT="eighty", DATABASE_URL=f"sqlite://{tmp_path}/x.sqlite3")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("PORT:")


def test_unreachable_database_at_start_is_one_line_without_the_password() -> None:
    """A PostgreSQL that does not answer at start: one line naming it, password hidden, no traceback."""
    with refusing_port() as database_port:
        result = run_web(DATABASE_URL=f"postgres://todo:s3cret@127.0.0.1:{database_port}/todos", PORT=str(free_port()))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "not reachable" in lines[0]
    assert "s3cret" not in result.stderr


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    """Another process on PORT: one line saying so."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_web(HOST="127.0.0.1", PORT=str(port), DATABASE_URL=f"sqlite://{tmp_path}/x.sqlite3")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"web: cannot listen on 127.0.0.1:{port}: address already in use"]


def _listening(pid: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN for c in psutil.Process(pid).net_connections(kind="tcp"))
    except psutil.NoSuchProcess:
        return False


async def test_sigterm_finishes_in_flight_requests_and_exits_0(
    start: Starter, tmp_path: Path, jetstream: NatsServer, http: aiohttp.ClientSession
) -> None:
    """SIGTERM while requests are in flight: they complete, their events reach the stream, the exit code is 0."""
    database = tmp_path / "todos.sqlite3"
    web = await start(f"sqlite://{database}", jetstream.url)
    assert web.pid is not None
    # hold SQLite's write lock so the POSTs below stay in flight (waiting for it) when SIGTERM arrives
    blocker = sqlite3.connect(database, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")

    sent = asyncio.Semaphore(0)

    async def on_sent(*_: object) -> None:
        sent.release()

    tracing = aiohttp.TraceConfig()
    tracing.on_request_chunk_sent.append(on_sent)
    async with aiohttp.ClientSession(trace_configs=[tracing]) as posting:

        async def post(i: int) -> tuple[int, dict[str, Any]]:
            async with posting.post(f"{web.url}/api/todos", json={"task": f"in flight {i}"}) as response:
                return response.status, await response.json()

        requests = [asyncio.create_task(post(i)) for i in range(5)]
        for _ in requests:
            await asyncio.wait_for(sent.acquire(), timeout=10)  # each request is out, body included
        # a barrier: the server reads and dispatches requests in arrival order, so once this later request is
        # answered, the five POSTs are in their handlers, waiting for the lock
        async with http.get(f"{web.url}/healthz") as response:
            assert response.status == 200
        assert not any(request.done() for request in requests)

        web.signal(signal.SIGTERM)

        async def stopped_listening() -> bool:
            return not _listening(web.pid or 0)

        await wait_for(stopped_listening)  # the SIGTERM is being handled: no new connections
        assert web.alive, "exited before its in-flight requests finished"
        blocker.rollback()
        blocker.close()
        answers = await asyncio.gather(*requests)
    assert [status for status, _ in answers] == [201] * 5
    assert web.process is not None
    assert await asyncio.to_thread(web.process.wait, 30) == 0
    events = await wait_for_events(jetstream.url, 5)
    assert sorted(json.dumps(e.payload) for e in events) == sorted(json.dumps(todo) for _, todo in answers)
