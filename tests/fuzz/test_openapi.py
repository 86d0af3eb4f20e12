"""Schemathesis against the running API: over 1,000 generated requests, no 5xx, every answer as documented.

`python -m web` runs with PostgreSQL and NATS (the outbox on), and schemathesis (fixed seed, every
phase: coverage, fuzzing, stateful chains through the documented links) runs all of its checks on
/api/openapi.json. The requests it made are counted from its HAR report, so the test fails if
fewer than 1,000 were made. No check is excluded: the API has no authentication, so the auth checks
(ignored_auth, object_level_authorization) pass trivially rather than being switched off.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.processes import Proc, start_web
from tests.services import NatsServer

pytestmark = pytest.mark.timeout(300)

SEED = 20261128
MAX_EXAMPLES = 200  # per operation and phase: about 2,000 requests with this seed (2026-11)
MIN_REQUESTS = 1000


@pytest.fixture
async def api(nats_server: NatsServer, database_url: str, tmp_path: Path) -> AsyncIterator[Proc]:
    """The API on PostgreSQL with its relay publishing to JetStream (stream bootstrapped)."""
    bootstrap = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams", "bootstrap", env={"NATS_URL": nats_server.url, "PATH": ""},
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await bootstrap.wait() == 0
    web = start_web(database_url=database_url, nats_url=nats_server.url, log_dir=tmp_path)
    try:
        yield await web.ready()
    finally:
        await web.stop()


async def test_schemathesis(api: Proc, tmp_path: Path) -> None:
    """Every documented operation, >= 1,000 requests, no 5xx, no failed check (fixed seed)."""
    har, report = tmp_path / "run.har", tmp_path / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{api.url}/api/openapi.json",
        "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
        "--continue-on-failure", "--no-shrink", "--request-timeout", "10",
        "--report", "json,har", "--report-json-path", str(report), "--report-har-path", str(har),
    ]  # fmt: skip
    # cwd: schemathesis and hypothesis keep example databases there; a fresh one keeps the run reproducible
    process = await asyncio.create_subprocess_exec(
        *command, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    failures = text[text.find("=== FAILURES") :] if "=== FAILURES" in text else text[-3000:]

    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(entry["response"]["status"] for entry in entries)
    summary = json.loads(report.read_text())
    print(f"schemathesis: {len(entries)} requests, {dict(statuses)}")
    assert len(entries) >= MIN_REQUESTS, f"only {len(entries)} requests made"
    assert summary["operations"]["tested"] == summary["operations"]["total"], summary["operations"]
    assert not [status for status in statuses if status >= 500], f"5xx answers: {statuses}\n{failures}"
    assert summary["failures"] == [], failures
    assert summary["errors"] == [], failures
    assert process.returncode == 0, failures
