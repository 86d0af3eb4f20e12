"""Prometheus metrics of one notifier process (own registry: tests build many in one process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.received = Counter("notifier_events_received", "Events taken from NATS", registry=r)
        self.sent = Counter("notifier_events_sent", "Events Telegram confirmed", registry=r)
        self.retried = Counter("notifier_events_retried", "Sends to be tried again (nak or wait)", registry=r)
        self.dead_lettered = Counter("notifier_events_dead_lettered", "Events terminated into the DLQ", registry=r)
        self.duplicates = Counter(
            "notifier_duplicates_suppressed", "Redelivered events already sent, acked unsent", registry=r
        )
        self.rate_limited = Counter("notifier_telegram_429", "RetryAfter answers from Telegram", registry=r)
        self.send_latency = Histogram(
            "notifier_send_latency_seconds",
            "Duration of one sendMessage call",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.paused = Gauge("notifier_paused", "1 while a bot-level error stops consuming", registry=r)
        self.in_flight = Gauge("notifier_events_in_flight", "Events held by this replica", registry=r)
