"""`python -m streams`: bootstrap and status as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.services import NatsServer, free_port


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
    assert second.stdout.count("unchanged") == 5


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
    result = streams("status", nats_url=f"nats://127.0.0.1:{free_port()}")

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tls_url_to_a_server_without_tls_is_refused(nats_server: NatsServer) -> None:
    """A tls:// NATS_URL never falls back to plain text (credentials would travel in the clear)."""
    result = streams("status", nats_url=f"tls://127.0.0.1:{nats_server.port}")

    assert result.returncode != 0
    assert "did not negotiate TLS" in result.stderr
