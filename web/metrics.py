"""Prometheus metrics of one app: HTTP traffic and the outbox relay (a registry per app, for tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        labels = ("route", "method", "status")
        self.requests = Counter("http_requests", "HTTP requests answered", labels, registry=self.registry)
        self.request_latency = Histogram(
            "http_request_duration_seconds", "Time to answer an HTTP request", labels,
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.outbox_backlog = Gauge(
            "outbox_backlog",
            "Events committed and not yet acked by NATS (sampled about every second; the span of outbox ids)",
            registry=self.registry,
        )  # fmt: skip
        self.nats_connected = Gauge(
            "nats_connected", "1 while the API is connected to NATS (0: events wait in the outbox; the API serves)",
            registry=self.registry,
        )  # fmt: skip
        self.relay_leader = Gauge(
            "outbox_relay_leader", "1 while this replica relays the outbox (one replica at a time on PostgreSQL)",
            registry=self.registry,
        )  # fmt: skip
        self.published = Counter("outbox_published", "Events acked by NATS", ("mode",), registry=self.registry)
        self.publish_failures = Counter(
            "outbox_publish_failures", "Relay batches that failed to publish (retried with backoff)",
            ("reason",), registry=self.registry,
        )  # fmt: skip
        self.publish_latency = Histogram(
            "outbox_publish_latency_seconds", "From the commit of an event to its ack by NATS",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip

        self.feed_clients = Gauge(
            "events_stream_clients", "Browsers connected to the live feed (/api/events)", registry=self.registry
        )
        self.feed_dropped = Counter(
            "events_stream_dropped", "Live-feed streams ended because the browser fell too far behind",
            registry=self.registry,
        )  # fmt: skip

        # series exist from the start, so dashboards and alerts see 0 rather than nothing
        for mode in ("jetstream", "core"):
            self.published.labels(mode)
        for reason in ("ConnectionError", "TimeoutError", "NoStreamError", "JetStreamUnavailableError"):
            self.publish_failures.labels(reason)

    def http(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        """The request counter and latency histogram of one (route, method, status), looked up once each."""
        key = (route, method, status)
        children = self._http.get(key)
        if children is None:
            labels = (route, method, str(status))
            children = self._http[key] = (self.requests.labels(*labels), self.request_latency.labels(*labels))
        return children

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition and its content type: OpenMetrics when `accept` (an Accept header) asks for
        application/openmetrics-text, else the Prometheus text format."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type
