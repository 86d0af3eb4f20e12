"""The page at / and its live feed (/api/events), and HTTP hygiene: HEAD, OPTIONS, OpenMetrics.

HEAD, OPTIONS and /metrics run against the API in-process (`api`); the live feed also runs through a
real `python -m web`, connected to nats-server as the `web` user, whose permissions it has to live with.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from tests.processes import start_web
from tests.services import NatsServer
from tests.web.sse import next_event, next_message, wait_for_status
from web.feed import Feed
from web.keys import FEED
from web.page import STATIC

Client = TestClient[Any, Any]
PROBLEM = "application/problem+json"


async def create(api: Client, task: str = "page") -> dict[str, Any]:
    response = await api.post("/api/todos", json={"task": task})
    assert response.status == 201
    return dict(await response.json())


def paths(api: Client) -> dict[str, set[str]]:
    """Each path template the app serves, with its methods."""
    served: dict[str, set[str]] = {}
    for route in api.app.router.routes():
        assert route.resource is not None
        served.setdefault(route.resource.canonical, set()).add(route.method)
    return served


def url_of(template: str, todo_id: str) -> str:
    return template.replace("{id}", todo_id).replace("{name}", "app.js")


# --- HTTP hygiene ---


async def test_head_answers_like_get_on_every_get_route(api: Client) -> None:
    """Every GET route answers HEAD: the status and Content-Type of GET, and no body."""
    todo = await create(api)
    get_paths = [path for path, methods in paths(api).items() if "GET" in methods]
    assert len(get_paths) >= 9
    for template in get_paths:
        url = url_of(template, todo["id"])
        head = await api.head(url)
        assert head.status == 200, (url, head.status)
        assert await head.read() == b""
        if template != "/api/events":  # an endless stream: its GET is read in the feed tests
            get = await api.get(url)
            assert get.status == 200
            assert head.headers["Content-Type"] == get.headers["Content-Type"], url
            await get.read()
        else:
            assert head.content_type == "text/event-stream"


async def test_options_lists_the_methods_of_every_path(api: Client) -> None:
    """OPTIONS on every path: 204 with Allow listing its methods (HEAD and OPTIONS included); no body."""
    served = paths(api)
    assert served["/api/todos"] == {"GET", "HEAD", "POST", "OPTIONS"}
    assert served["/api/todos/{id}"] == {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}
    for template, methods in served.items():
        response = await api.options(url_of(template, str(uuid.uuid4())))
        assert response.status == 204, template
        assert set(response.headers["Allow"].split(",")) == methods, template
        assert await response.read() == b""


async def test_unknown_method_is_405_with_allow_and_one_metrics_label(api: Client) -> None:
    """A method no route has: 405 problem document whose Allow lists the path's methods; any unknown method
    is counted under method="other" so a scanner cannot grow the series."""
    for method in ("PATCH", "TRACE", "PROPFIND"):
        response = await api.request(method, "/api/todos")
        assert response.status == 405
        assert response.content_type == PROBLEM
        assert response.headers["Allow"] == "GET,HEAD,OPTIONS,POST"
    await api.options("/api/todos")
    metrics = await (await api.get("/metrics")).text()
    assert 'http_requests_total{method="PATCH",route="unmatched",status="405"} 1.0' in metrics
    assert 'http_requests_total{method="other",route="unmatched",status="405"} 2.0' in metrics
    assert 'http_requests_total{method="OPTIONS",route="/api/todos",status="204"} 1.0' in metrics
    assert "PROPFIND" not in metrics


async def test_metrics_negotiate_openmetrics(api: Client) -> None:
    """/metrics: the Prometheus text format by default; OpenMetrics (valid, ending in # EOF) when asked."""
    await create(api)
    plain = await api.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# EOF" not in await plain.text()
    for accept in (
        "application/openmetrics-text",
        "application/openmetrics-text; version=1.0.0, text/plain; q=0.5",
    ):
        response = await api.get("/metrics", headers={"Accept": accept})
        assert response.status == 200
        assert response.content_type == "application/openmetrics-text"
        text = await response.text()
        assert text.endswith("# EOF\n")
        names = {family.name for family in text_string_to_metric_families(text)}  # strict parser
        assert {"http_requests", "outbox_backlog", "events_stream_clients"} <= names
    head = await api.head("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert head.content_type == "application/openmetrics-text"


# --- the page ---


async def test_page_and_its_files(api: Client) -> None:
    """/ is the page (its own script and style only, by Content-Security-Policy); only the page's files
    are served from /static/; the script never puts API text into HTML."""
    page = await api.get("/")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    assert '<script src="/static/app.js" defer></script>' in html
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for name, content_type in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = await api.get(f"/static/{name}")
        assert response.status == 200
        assert response.content_type == content_type
        assert await response.read() == (STATIC / name).read_bytes()
    for name in ("index.html", "..%2Fapp.py", "nope.js"):
        response = await api.get(f"/static/{name}")
        assert response.status == 404
        assert response.content_type == PROBLEM
    script = (STATIC / "app.js").read_text()
    assert "innerHTML" not in script
    assert "insertAdjacentHTML" not in script


# --- the live feed ---


async def test_feed_says_when_nats_goes_away_and_comes_back(api: Client, jetstream: NatsServer) -> None:
    """With NATS configured: "on"; the server stopped: "disconnected"; back: "on" again, and events flow."""
    async with api.get("/api/events") as stream:
        assert stream.content_type == "text/event-stream"
        await wait_for_status(stream, "on")
        jetstream.stop()
        await wait_for_status(stream, "disconnected")
        jetstream.start()
        await wait_for_status(stream, "on", timeout=15)
        todo = await create(api, "after the outage")
        event = await next_event(stream)
        assert (event.event, event.json) == ("todos.created", todo)


async def test_heartbeat_keeps_an_idle_stream_open(api: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle stream gets a comment line every HEARTBEAT seconds (15 s in production)."""
    monkeypatch.setattr("web.page.HEARTBEAT", 0.2)
    async with api.get("/api/events") as stream:
        first = await next_message(stream)
        assert first.retry == 1000
        await wait_for_status(stream, "on")
        started = time.monotonic()
        beat = await next_message(stream, timeout=5)
        assert beat.comments == ["keep-alive"]
        assert not beat.data
        assert 0.1 < time.monotonic() - started < 2


async def test_every_browser_gets_each_event_once(api: Client) -> None:
    """Three streams, one subscription: each stream gets each event, and the gauge counts the streams. The
    subscription exists only while someone listens: an API nobody watches gets no events back."""
    feed = api.app[FEED]
    await wait_for_status_of(feed, connected=True)
    assert not feed.subscribed
    async with api.get("/api/events") as a, api.get("/api/events") as b, api.get("/api/events") as c:
        for stream in (a, b, c):
            await wait_for_status(stream, "on")
        assert feed.listeners == 3
        assert feed.subscribed
        assert "events_stream_clients 3.0" in await (await api.get("/metrics")).text()
        todo = await create(api, "for everyone")
        for stream in (a, b, c):
            event = await next_event(stream)
            assert (event.event, event.json) == ("todos.created", todo)
    # the server notices a closed stream at its next write
    await create(api, "nobody listens")

    deadline = time.monotonic() + 5
    while feed.listeners or feed.subscribed:
        assert time.monotonic() < deadline, (feed.listeners, feed.subscribed)
        await asyncio.sleep(0.05)


async def wait_for_status_of(feed: Feed, *, connected: bool) -> None:
    deadline = time.monotonic() + 10
    while feed.connected != connected:
        assert time.monotonic() < deadline, "the API did not connect to NATS"
        await asyncio.sleep(0.02)


async def test_a_browser_that_falls_behind_is_dropped_not_buffered() -> None:
    """A listener whose buffer is full is ended and forgotten (its EventSource reconnects and re-fetches);
    the others keep getting every event. Memory per browser is at most `buffer` messages."""
    dropped: list[None] = []
    feed = Feed(enabled=True, buffer=3, on_drop=lambda: dropped.append(None))
    slow, quick = await feed.listen(), await feed.listen()  # each starts with its status message
    taken: list[bytes] = []
    for number in range(5):
        feed.broadcast(f"event {number}\n\n".encode())
        taken.append(await quick.take(0))  # a browser that keeps up
    assert not slow.open
    assert dropped == [None]
    assert feed.listeners == 1
    assert b"".join(taken).count(b"event ") == 5
    feed.close()
    assert not quick.open
    assert not (await feed.listen()).open  # after close, a new stream ends at once


async def test_events_through_a_real_process(jetstream: NatsServer, database_url: str, tmp_path: Path) -> None:
    """`python -m web` as the `web` NATS user: the stream says "on", then carries todos.created, updated and
    deleted, in order, each with its payload (the API's answer) and event id; SIGTERM with the stream open
    ends it and the process exits at once."""
    web = await start_web(database_url=database_url, nats_url=jetstream.url, log_dir=tmp_path).ready()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{web.url}/api/events") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            assert stream.headers["Cache-Control"] == "no-cache"
            assert stream.headers["X-Request-Id"]
            await wait_for_status(stream, "on")
            async with http.post(f"{web.url}/api/todos", json={"task": "live <b>&</b> feed"}) as response:
                created = await response.json()
            async with http.put(f"{web.url}/api/todos/{created['id']}", json={"done": True}) as response:
                updated = await response.json()
            async with http.delete(f"{web.url}/api/todos/{created['id']}") as response:
                deleted = await response.json()
            events = [await next_event(stream) for _ in range(3)]
            assert [(event.event, event.json) for event in events] == [
                ("todos.created", created),
                ("todos.updated", updated),
                ("todos.deleted", deleted),
            ]
            ids = [event.id for event in events]
            assert len({uuid.UUID(event_id or "") for event_id in ids}) == 3

            started = time.monotonic()
            assert await web.stop() == 0
            assert time.monotonic() - started < 3, "an open stream held the shutdown"
            with pytest.raises((EOFError, aiohttp.ClientPayloadError)):
                await next_message(stream, timeout=2)
    finally:
        web.kill()


async def test_events_are_off_without_nats(database_url: str, tmp_path: Path) -> None:
    """Without NATS_URL the stream answers at once with status "off" (and stays open for heartbeats)."""
    web = await start_web(database_url=database_url, nats_url=None, log_dir=tmp_path).ready()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{web.url}/api/events") as stream:
            assert stream.status == 200
            status = await next_event(stream, timeout=5)
            assert (status.event, status.json) == ("status", {"events": "off"})
    finally:
        await web.stop()
