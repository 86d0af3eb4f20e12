"""Schemathesis against the running API: over 1,000 generated requests, no 5xx, every answer as documented.

`python -m web` runs with PostgreSQL and NATS (the outbox on), and schemathesis (fixed seed, every
phase: coverage, fuzzing, stateful chains through the documented links) runs all of its checks on
/api/openapi.json. The requests it made are counted from its HAR report, so the test fails if
fewer than 1,000 were made. No check is excluded: the API has no authentication, so the auth checks
(ignored_auth, object_level_authorization) pass trivially rather than being switched off.

Schemathesis only sees HTTP answers; the events are checked here, from the same HAR report: once the
relay has settled, the stream holds exactly the bodies of the 2xx answers to POST, PUT and DELETE, in
the order they were answered (one worker: each request is answered before the next is sent, so
answer order is commit order), and nothing else: a 4xx or 5xx that published an event would add one.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.processes import Proc, start_web
from tests.services import NatsServer
from tests.web.helpers import wait_until_settled

pytestmark = pytest.mark.timeout(300)

SEED = 20261128
MAX_EXAMPLES = 200  # per operation and phase: about 2,000 requests with this seed (2026-11)
MIN_REQUESTS = 1000
# an endless event stream has no answer to wait for (tests/web/test_page.py covers it)
UNFUZZED = ("/api/events",)


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


SUBJECTS = {"POST": "todos.created", "PUT": "todos.updated", "DELETE": "todos.deleted"}


def changes_answered(entries: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(subject, body) of every 2xx answer to a POST, PUT or DELETE of /api/todos, in the order answered."""
    changes = []
    for entry in entries:
        request, response = entry["request"], entry["response"]
        path = urlsplit(request["url"]).path
        if request["method"] in SUBJECTS and path.startswith("/api/todos") and 200 <= response["status"] < 300:
            assert "comment" not in response["content"], response["content"]["comment"]  # a truncated body
            changes.append((SUBJECTS[request["method"]], json.loads(response["content"]["text"])))
    return changes


def per_todo(changes: list[tuple[str, dict[str, Any]]]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    by_todo: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for subject, body in changes:
        by_todo[body["id"]].append((subject, body))
    return dict(by_todo)


async def test_schemathesis(api: Proc, tmp_path: Path, nats_server: NatsServer, database_url: str) -> None:
    """Every documented operation but the endless event stream, >= 1,000 requests, no 5xx, no failed check (fixed
    seed); the stream holds exactly the 2xx changes' answers, in order, and no event of a rejected request."""
    har, report = tmp_path / "run.har", tmp_path / "report.json"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{api.url}/api/openapi.json",
        "--checks", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
        "--continue-on-failure", "--no-shrink", "--request-timeout", "10",
        "--report", "json,har", "--report-json-path", str(report), "--report-har-path", str(har),
        *(argument for path in UNFUZZED for argument in ("--exclude-path", path)),
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
    operations = summary["operations"]
    assert operations["tested"] == operations["selected"] == operations["total"] - len(UNFUZZED), operations
    assert not [status for status in statuses if status >= 500], f"5xx answers: {statuses}\n{failures}"
    assert summary["failures"] == [], failures
    assert summary["errors"] == [], failures
    assert process.returncode == 0, failures

    answered = changes_answered(entries)
    events = await wait_until_settled(nats_server.url, database_url, timeout=60)
    published = [(event.subject, event.payload) for event in events]
    print(f"stream: {len(published)} events for {len(answered)} changes answered 2xx")
    assert len(answered) > 100, "the run changed too little to say anything about the events"
    unanswered = [event for event in published if event not in answered]
    unpublished = [change for change in answered if change not in published]
    assert unanswered == [], f"events no 2xx answer accounts for: {unanswered[:3]}"
    assert unpublished == [], f"2xx changes without their event: {unpublished[:3]}"
    assert per_todo(published) == per_todo(answered), "events of a todo out of order, or repeated"
    assert published == answered
