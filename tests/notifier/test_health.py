"""The notifier's health port as HTTP clients use it: HEAD, OPTIONS and OpenMetrics negotiation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter

from notifier.health import make_app

Client = TestClient[Any, Any]
OPENMETRICS = "application/openmetrics-text"


@pytest.fixture
async def health() -> AsyncIterator[Client]:
    """The health app in-process, ready, with one counter in its registry."""
    registry = CollectorRegistry()
    Counter("notifier_test_events", "events seen by the test", registry=registry).inc()
    client = TestClient(TestServer(make_app(lambda: True, registry)))
    await client.start_server()
    yield client
    await client.close()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_head_answers_like_get_without_a_body(health: Client, path: str) -> None:
    """HEAD on every GET route: the GET's status and content type, no body (RFC 9110 9.3.2)."""
    get = await health.get(path)
    head = await health.head(path)

    assert head.status == get.status == 200
    assert head.headers["Content-Type"] == get.headers["Content-Type"]
    assert await head.read() == b""


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_options_lists_the_allowed_methods(health: Client, path: str) -> None:
    """OPTIONS answers 204 with `Allow`; a method not in it gets 405 with the same list."""
    answer = await health.options(path)
    refused = await health.post(path)

    assert answer.status == 204
    assert answer.headers["Allow"].split(",") == ["GET", "HEAD", "OPTIONS"]
    assert refused.status == 405
    assert set(refused.headers["Allow"].split(",")) == {"GET", "HEAD", "OPTIONS"}


async def test_metrics_default_to_the_prometheus_text_format(health: Client) -> None:
    """Without an Accept header (or with Prometheus' own text one) /metrics is the text format 0.0.4."""
    for headers in ({}, {"Accept": "text/plain;version=0.0.4;q=1,*/*;q=0.1"}):
        response = await health.get("/metrics", headers=headers)
        body = await response.text()

        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "notifier_test_events_total 1.0" in body
        assert "# EOF" not in body


async def test_metrics_negotiate_openmetrics(health: Client) -> None:
    """An Accept asking for application/openmetrics-text (as Prometheus sends it) gets OpenMetrics, `# EOF` last."""
    accept = f"{OPENMETRICS};version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
    response = await health.get("/metrics", headers={"Accept": accept})
    body = await response.text()

    assert response.status == 200
    assert response.headers["Content-Type"].startswith(OPENMETRICS)
    assert "notifier_test_events_total 1.0" in body
    assert body.endswith("# EOF\n")
