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
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.services import NatsServer, free_port, wait_for_port
from tests.web.helpers import wait_for_events

ROOT = Path(__file__).resolve().parents[2]
Starter = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_web(tmp_path: Path) -> Any:
    """Start `python -m web` with the given environment; killed after the test if still running."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        environment = {k: v for k, v in os.environ.items() if k not in {"NATS_URL", "DATABASE_URL"}}
        environment |= {"HOST": "127.0.0.1", "PORT": str(port), "LOG_FORMAT": "json", **env}
        log = (tmp_path / f"web-{port}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "web"], cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        processes.append(process)
        wait_for_port(port, timeout=30)
        return process, f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_sqlite_default_serves_and_publishes(
    start_web: Any, tmp_path: Path, jetstream: NatsServer, http: aiohttp.ClientSession
) -> None:
    """With a SQLite URL (in a directory that does not exist yet) the API migrates, serves POST/GET and publishes."""
    database = tmp_path / "not" / "yet" / "todos.sqlite3"
    _, base = start_web(DATABASE_URL=f"sqlite://{database}", NATS_URL=jetstream.url)
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
    result = run_web(DATABASE_URL=f"postgres://todo:s3cret@127.0.0.1:{free_port()}/todos", PORT=str(free_port()))
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


async def test_sigterm_finishes_in_flight_requests_and_exits_0(
    start_web: Any, tmp_path: Path, jetstream: NatsServer, http: aiohttp.ClientSession
) -> None:
    """SIGTERM while requests are in flight: they complete, their events reach the stream, the exit code is 0."""
    database = tmp_path / "todos.sqlite3"
    process, base = start_web(DATABASE_URL=f"sqlite://{database}", NATS_URL=jetstream.url)
    # hold SQLite's write lock so the POSTs below stay in flight (waiting for it) when SIGTERM arrives
    blocker = sqlite3.connect(database, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")

    async def post(i: int) -> tuple[int, dict[str, Any]]:
        async with http.post(f"{base}/api/todos", json={"task": f"in flight {i}"}) as response:
            return response.status, await response.json()

    requests = [asyncio.create_task(post(i)) for i in range(5)]
    await asyncio.sleep(0.5)  # the requests reach their handlers, which wait for the lock
    assert not any(request.done() for request in requests)
    process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert process.poll() is None, "exited before its in-flight requests finished"
    blocker.rollback()
    blocker.close()
    answers = await asyncio.gather(*requests)
    assert [status for status, _ in answers] == [201] * 5
    assert await asyncio.to_thread(process.wait, 30) == 0
    events = await wait_for_events(jetstream.url, 5)
    assert sorted(json.dumps(e.payload) for e in events) == sorted(json.dumps(todo) for _, todo in answers)
