"""`python -m streams`: bootstrap and status as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import nats

from streams import subjects, topology
from tests.services import NatsServer, refusing_port
from tests.web.helpers import wait_for


def streams(*args: str, nats_url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    if nats_url is not None:
        env["NATS_URL"] = nats_url
    return subprocess.run(
        [sys.executable, "-m", "streams", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_bootstrap_prints_what_it_did_and_is_idempotent(nats_server: NatsServer) -> None:
    """The operator sees `created` the first time and `unchanged` after."""
    first = streams("bootstrap", nats_url=nats_server.url)
    second = streams("bootstrap", nats_url=nats_server.url)

    assert first.returncode == 0, first.stderr
    assert "stream TODOS: created" in first.stdout
    assert "consumer TODOS/todos_broadcasters: created" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "kv todos_replies: created" in first.stdout
    assert second.stdout.count("unchanged") == 6


def test_status_shows_stream_consumer_and_dead_letters(nats_server: NatsServer) -> None:
    """`status --json` reports messages, pending, ack-pending, redelivered and dead letters."""
    streams("bootstrap", nats_url=nats_server.url)
    result = streams("status", "--json", nats_url=nats_server.url)
    text = streams("status", nats_url=nats_server.url)

    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["stream"]["messages"] == 0
    assert state["consumer"]["pending"] == 0
    assert state["consumer"]["ack_pending"] == 0
    assert state["consumer"]["redelivered"] == 0
    assert state["dead_letters"] == 0
    assert "consumer todos_broadcasters: pending 0" in text.stdout


def test_missing_nats_url_is_one_clear_line() -> None:
    """Without NATS_URL the CLI stops at once naming the variable."""
    result = streams("status", nats_url=None)

    assert result.returncode != 0
    assert "NATS_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_nats_is_one_clear_line() -> None:
    """A NATS that does not answer gives a short error, not a traceback."""
    with refusing_port() as port:
        result = streams("status", nats_url=f"nats://127.0.0.1:{port}")

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tls_url_to_a_server_without_tls_is_refused(nats_server: NatsServer) -> None:
    """A tls:// NATS_URL never falls back to plain text (credentials would travel in the clear)."""
    result = streams("status", nats_url=f"tls://127.0.0.1:{nats_server.port}")

    assert result.returncode != 0
    assert "did not negotiate TLS" in result.stderr


async def _dead_letter(url: str) -> str:
    """Publish one event and terminate it with a reason, as a notifier does with a poison message."""
    event_id = str(uuid.uuid4())
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await topology.bootstrap(js)
        await js.publish("todos.created", b'{"task": "x"}', headers={subjects.MSG_ID_HEADER: event_id})
        psub = await js.pull_subscribe_bind(durable=subjects.CONSUMER, stream=subjects.STREAM)
        [msg] = await psub.fetch(1, timeout=5)
        await nc.publish(msg.reply, b"+TERM Bad Request: can't parse entities")
        await nc.flush()

        async def dead_lettered() -> bool:  # the advisory lands in TODOS_DLQ
            return bool((await js.stream_info(subjects.DLQ_STREAM)).state.messages)

        await wait_for(dead_lettered)
    finally:
        await nc.close()
    return event_id


async def test_dlq_list_and_replay_as_an_operator_runs_them(nats_server: NatsServer) -> None:
    """`dlq list` shows the reason and payload; `dlq replay ID` puts it back on todos.* once; unknown ids fail."""
    event_id = await _dead_letter(nats_server.url)

    listed = streams("dlq", "list", "--json", nats_url=nats_server.url)
    assert listed.returncode == 0, listed.stderr
    [letter] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert letter["event_id"] == event_id
    assert letter["subject"] == "todos.created"
    assert "can't parse entities" in letter["reason"]
    assert letter["payload"] == {"task": "x"}

    replayed = streams("dlq", "replay", str(letter["id"]), nats_url=nats_server.url)
    assert replayed.returncode == 0, replayed.stderr
    assert "1 dead letter(s) replayed" in replayed.stdout
    assert streams("dlq", "list", "--json", nats_url=nats_server.url).stdout == ""
    missing = streams("dlq", "replay", "999", nats_url=nats_server.url)
    assert missing.returncode == 1
    assert "not found: 999" in missing.stderr

    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        again = await js.get_msg(subjects.STREAM, (await js.stream_info(subjects.STREAM)).state.last_seq)
    finally:
        await nc.close()
    assert again.subject == "todos.created"
    assert again.headers is not None
    assert again.headers[subjects.EVENT_ID_HEADER] == event_id
    assert again.headers[subjects.MSG_ID_HEADER] != event_id


def test_unreachable_list_with_credentials_is_one_line_without_them() -> None:
    """NATS_URL with several servers, each with credentials, none answering: one line, no password, no token."""
    with refusing_port() as first, refusing_port() as second:
        url = f"nats://admin:hunter2-pass@127.0.0.1:{first},nats://tok-en-123456@[::1]:{second}"
        result = streams("status", nats_url=url)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "hunter2" not in result.stderr
    assert "tok-en" not in result.stderr
    assert "admin:***@127.0.0.1" in result.stderr
    assert "[::1]" in result.stderr
