"""Core mode (no JetStream) and start-up settings."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import nats
import pytest
from prometheus_client import CollectorRegistry

from notifier.health import make_app, serve
from notifier.settings import Settings
from streams.subjects import MSG_ID_HEADER, Change
from tests.notifier.conftest import REPO, make_todo, wait_until
from tests.services import free_port


async def test_core_mode_two_replicas_each_event_sent_once(fake, core_nats_server, replicas):
    """NOTIFIER_MODE=core on a NATS without JetStream: the queue group sends each event once."""
    group = [replicas(fake, NOTIFIER_MODE="core", NATS_URL=core_nats_server.url) for _ in range(2)]
    for replica in group:
        await replica.wait_ready()
    nc = await nats.connect(core_nats_server.url)
    try:
        todos = [make_todo(f"core {n}") for n in range(40)]
        for todo in todos:
            await nc.publish(
                Change.CREATED.subject, json.dumps(todo).encode(), headers={MSG_ID_HEADER: str(uuid.uuid4())}
            )
        await nc.flush()
    finally:
        await nc.close()
    await wait_until(lambda: len(fake.sent) >= 40, what="40 messages")
    # no consumer to drain: wait until the replicas took at least 40 events and hold none, on two polls in a
    # row (NATS hands out a copy at once, not after an ack wait); an event given to both would count twice
    streak = 0

    async def settled() -> bool:
        nonlocal streak
        taken = sum([await replica.metric("notifier_events_received_total") for replica in group])
        held = sum([await replica.metric("notifier_events_in_flight") for replica in group])
        streak = streak + 1 if taken >= 40 and held == 0 else 0
        return streak >= 2

    await wait_until(settled, what="every event taken and settled")
    assert sum([await replica.metric("notifier_events_received_total") for replica in group]) == 40
    assert len(fake.sent) == 40
    assert sorted(m.text for m in fake.sent) == sorted({m.text for m in fake.sent})
    per_replica = [await replica.metric("notifier_events_sent_total") for replica in group]
    assert sum(per_replica) == 40


def run_notifier(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("TELEGRAM_", "NOTIFIER_", "NATS_"))}
    return subprocess.run(  # noqa: PLW1510
        [sys.executable, "-m", "notifier"], cwd=REPO, env=clean | env, capture_output=True, text=True, timeout=60
    )


def test_missing_chat_id_stops_with_one_line_naming_it():
    result = run_notifier({"NATS_URL": "nats://127.0.0.1:1", "TELEGRAM_ACCESS_TOKEN": "1:abc"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "TELEGRAM_CHAT_ID" in lines[0]


@pytest.mark.parametrize(("env", "variable"), [
    ({"TELEGRAM_CHAT_ID": "1"}, "TELEGRAM_ACCESS_TOKEN"),
    ({"TELEGRAM_ACCESS_TOKEN": "1:abc", "TELEGRAM_CHAT_ID": "not a chat"}, "TELEGRAM_CHAT_ID"),
    ({"TELEGRAM_ACCESS_TOKEN": "secret-without-bot-id", "TELEGRAM_CHAT_ID": "1"}, "TELEGRAM_ACCESS_TOKEN"),
    ({"TELEGRAM_ACCESS_TOKEN": "1:abc", "TELEGRAM_CHAT_ID": "1", "NOTIFIER_PORT": "http"}, "NOTIFIER_PORT"),
    ({"TELEGRAM_ACCESS_TOKEN": "1:abc", "TELEGRAM_CHAT_ID": "1", "NOTIFIER_MODE": "fast"}, "NOTIFIER_MODE"),
    ({"NOTIFIER_SINK": "log", "NATS_URL": ""}, "NATS_URL"),
])  # fmt: skip
def test_bad_settings_name_the_variable(monkeypatch, env, variable):
    for key in list(os.environ):
        if key.startswith(("TELEGRAM_", "NOTIFIER_", "NATS_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:4222")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as stopped:
        Settings.from_env()
    message = str(stopped.value.code)
    assert variable in message
    assert "\n" not in message
    assert "secret-without-bot-id" not in message  # a setting's value, maybe a secret, is never echoed


def test_settings_accept_channel_names_and_the_log_sink(monkeypatch):
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("TELEGRAM_ACCESS_TOKEN", "1:abc")
    monkeypatch.setenv("TELEGRAM_CHAT_ID", "@todo_admins")
    assert Settings.from_env().telegram_chat_id == "@todo_admins"
    monkeypatch.delenv("TELEGRAM_ACCESS_TOKEN")
    monkeypatch.delenv("TELEGRAM_CHAT_ID")
    monkeypatch.setenv("NOTIFIER_SINK", "log")
    assert Settings.from_env().notifier_sink == "log"


def test_jetstream_mode_on_a_plain_nats_says_what_to_do(core_nats_server):
    """The default mode against a NATS without JetStream: one line naming the fix, not a traceback."""
    result = run_notifier(
        {"NATS_URL": core_nats_server.url, "NOTIFIER_SINK": "log", "NOTIFIER_PORT": "0", "LOG_LEVEL": "error"}
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "NOTIFIER_MODE=core" in result.stderr.strip().splitlines()[-1]


def test_sigterm_while_nats_is_unreachable_exits_0_at_once():
    """A replica still waiting for its first NATS connection stops on SIGTERM instead of retrying forever."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("TELEGRAM_", "NOTIFIER_", "NATS_"))}
    env = clean | {"NATS_URL": f"nats://127.0.0.1:{free_port()}", "NOTIFIER_SINK": "log", "NOTIFIER_PORT": "0"}
    replica = subprocess.Popen(
        [sys.executable, "-m", "notifier"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        assert replica.stderr is not None
        while b"nats.error" not in replica.stderr.readline():  # it is trying to connect
            assert time.monotonic() < deadline
        replica.send_signal(signal.SIGTERM)
        assert replica.wait(timeout=10) == 0  # instead of retrying the connection forever
    finally:
        if replica.poll() is None:
            replica.kill()
            replica.wait()
        if replica.stderr is not None:
            replica.stderr.close()


async def test_health_port_listens_on_notifier_host_only(monkeypatch):
    """NOTIFIER_HOST=127.0.0.1 (as `just up` sets it) keeps /healthz off the other interfaces."""
    monkeypatch.setenv("NATS_URL", "nats://127.0.0.1:4222")
    monkeypatch.setenv("NOTIFIER_SINK", "log")
    monkeypatch.setenv("NOTIFIER_HOST", "127.0.0.1")
    settings = Settings.from_env()
    port = free_port()
    runner = await serve(make_app(lambda: True, CollectorRegistry()), settings.notifier_host, port)
    try:
        sockets = [site._server.sockets for site in runner.sites]
        bound = {sock.getsockname()[0] for group in sockets for sock in group}
    finally:
        await runner.cleanup()
    assert bound == {"127.0.0.1"}
