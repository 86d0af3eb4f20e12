"""Who may do what on NATS: the three identities of the system and the narrowest permissions that work.

Written once, here, and rendered two ways: `server_config()` is the nats-server configuration the tests
and `just up` run, `chart_merge()` the same users for the NATS Helm chart's `config.merge` (checked
against k8s/nats-values.yaml by tests/k8s). Passwords never live here: the chart reads them from the
environment (`<< $NATS_WEB_PASSWORD >>`), the tests and `just up` generate their own.

- **web** (the outbox relay) publishes events and asks JetStream whether it is there, and reads the
  events as a core subscriber (the page's live feed); nothing else. It cannot touch a stream, read the
  consumer or the KV buckets, or read anyone else's replies.
- **notifier** fetches from and acks on `todos_broadcasters`, reads and writes the `todos_sent`,
  `todos_notifier` and `todos_replies` buckets, and may create the consumer if it is missing; it cannot
  publish events nor change a stream.
- **streams** (bootstrap, status, tail, dead letters, the k8s Job) manages the JetStream topology, may
  republish a dead letter, and follows the events through ordered consumers (answering their flow control).

Each identity reads replies only on its own inbox prefix (`_INBOX.<user>.`), which `connect()` sets, so
one component cannot read the answers JetStream sends another (a KV read, a fetched event).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from streams import subjects, topology

JS_API = "$JS.API"
WEB, NOTIFIER, STREAMS = "web", "notifier", "streams"


@dataclass(frozen=True)
class Identity:
    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    @property
    def inbox_prefix(self) -> str:
        return inbox_prefix(self.user)

    def permissions(self) -> dict[str, Any]:
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}


def inbox_prefix(user: str) -> str:
    """The reply subjects of one identity: `_INBOX.web.<nuid>...`."""
    return f"_INBOX.{user}"


def _kv(bucket: str) -> tuple[str, ...]:
    """Read and write one KV bucket: put/create/update (the bucket's subjects), get (direct or not), watch
    (an ordered consumer on the bucket's stream), and the bucket's info."""
    stream = topology.kv_stream_name(bucket)
    return (
        f"$KV.{bucket}.>",
        f"{JS_API}.STREAM.INFO.{stream}",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.DELETE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.>",
        # a watch is an ordered consumer with flow control: refused, its deliveries stop after one window
        f"$JS.FC.{stream}.>",
    )


EVENT_SUBJECTS = tuple(change.subject for change in subjects.Change)
CONSUMER = f"{subjects.STREAM}.{subjects.CONSUMER}"

IDENTITIES: tuple[Identity, ...] = (
    Identity(
        WEB,
        publish=(*EVENT_SUBJECTS, f"{JS_API}.INFO"),
        # the page's live feed of events (its own events, as a core subscriber)
        subscribe=(f"{inbox_prefix(WEB)}.>", f"{subjects.SUBJECT_PREFIX}.>"),
    ),
    Identity(
        NOTIFIER,
        publish=(
            f"{JS_API}.INFO",
            f"{JS_API}.STREAM.INFO.{subjects.STREAM}",
            f"{JS_API}.STREAM.INFO.{subjects.DLQ_STREAM}",
            f"{JS_API}.CONSUMER.INFO.{CONSUMER}",
            f"{JS_API}.CONSUMER.MSG.NEXT.{CONSUMER}",
            # a missing consumer is created again with the topology's settings (and nothing else is)
            f"{JS_API}.CONSUMER.CREATE.{CONSUMER}",
            f"{JS_API}.CONSUMER.CREATE.{CONSUMER}.>",
            f"{JS_API}.CONSUMER.DURABLE.CREATE.{CONSUMER}",
            # ack, nak, in progress, term
            f"$JS.ACK.{CONSUMER}.>",
            *_kv(subjects.SENT_BUCKET),
            *_kv(subjects.STATE_BUCKET),
            *_kv(subjects.REPLIES_BUCKET),
        ),
        # NOTIFIER_MODE=core reads the events as a core subscriber
        subscribe=(f"{inbox_prefix(NOTIFIER)}.>", f"{subjects.SUBJECT_PREFIX}.>"),
    ),
    Identity(
        STREAMS,
        # `$JS.FC.TODOS.>`: the flow-control replies of `tail`'s ordered consumer; refused, the server stops
        # delivering after one window (~4,700 events of a `--from-start` replay)
        publish=(f"{JS_API}.>", "$KV.>", f"$JS.FC.{subjects.STREAM}.>", *EVENT_SUBJECTS),
        subscribe=(f"{inbox_prefix(STREAMS)}.>", f"{subjects.SUBJECT_PREFIX}.>"),
    ),
)
BY_USER = {identity.user: identity for identity in IDENTITIES}


def users(passwords: dict[str, str]) -> list[dict[str, Any]]:
    """The `authorization.users` list: each identity with its password (a literal, or a `<< $VAR >>`)."""
    return [
        {"user": identity.user, "password": passwords[identity.user], "permissions": identity.permissions()}
        for identity in IDENTITIES
    ]


def chart_merge() -> dict[str, Any]:
    """What k8s/nats-values.yaml merges into the chart's config: the users, passwords from the environment."""
    variables = {identity.user: f"<< ${password_variable(identity.user)} >>" for identity in IDENTITIES}
    return {"authorization": {"users": users(variables)}}


def password_variable(user: str) -> str:
    """The NATS pod's environment variable holding `user`'s password: NATS_WEB_PASSWORD..."""
    return f"NATS_{user.upper()}_PASSWORD"


def server_config(
    passwords: dict[str, str], *, no_auth_user: str | None = None, unrestricted: dict[str, str] | None = None
) -> str:
    """The nats-server configuration block for these users (JSON is valid NATS configuration syntax).

    `unrestricted`: more users (name: password) with no permissions set, such as the tests' own harness;
    `no_auth_user`: a client that sends no credentials is that user."""
    extra = [{"user": user, "password": password} for user, password in (unrestricted or {}).items()]
    block: dict[str, Any] = {"authorization": {"users": [*users(passwords), *extra]}}
    if no_auth_user is not None:
        block["no_auth_user"] = no_auth_user
    return json.dumps(block, indent=2)[1:-1].strip() + "\n"
