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
        self.events_per_message = Histogram(
            "notifier_events_per_message",
            "Events carried by one message Telegram confirmed (more than 1 when a paced chat's backlog builds up)",
            buckets=(1, 2, 3, 5, 10, 15, 20, 30, 50, 100),
            registry=r,
        )
        # set_function()s are attached by the parts that know the values (pacing, consumer)
        self.pause_seconds = Gauge(
            "notifier_chat_pause_seconds",
            "Seconds left before this replica may send to its chat again (a 429's retry_after, shared)",
            registry=r,
        )
        self.backlog_age = Gauge(
            "notifier_backlog_age_seconds",
            "Age (since it was stored in JetStream) of the oldest event this replica holds and has not settled",
            registry=r,
        )
