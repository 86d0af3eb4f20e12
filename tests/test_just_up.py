"""`just up` as a new user runs it: every process starts, an event flows to the notifiers, Ctrl-C stops all."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import psutil

from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except (OSError, http.client.HTTPException):  # not up yet (or, rarely, another server took the port)
        return 0


def _wait_ready(urls: list[str], deadline: float) -> None:
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        pending = [url for url in pending if _get(url) != 200]
        time.sleep(0.2)
    assert not pending, f"not ready: {pending}"


def test_just_up_runs_the_system_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    """nats-server, the API (SQLite under ./var) and two log-sink notifiers; a POST reaches a notifier."""
    names = ("NATS_PORT", "NATS_MONITOR_PORT", "WEB_PORT", "NOTIFIER_PORT_1", "NOTIFIER_PORT_2")
    ports = {name: free_port() for name in names}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "NATS_", "DATABASE_"))}
    env |= {name: str(port) for name, port in ports.items()} | {"LOG_FORMAT": "json"}
    just = shutil.which("just")
    assert just is not None
    log = (tmp_path / "up.log").open("w+")
    up = subprocess.Popen(
        [just, "--justfile", str(ROOT / "Justfile"), "--working-directory", str(tmp_path), "up"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C would signal
    )
    try:
        base = f"http://127.0.0.1:{ports['WEB_PORT']}"
        _wait_ready(
            [
                f"{base}/readyz",
                f"http://127.0.0.1:{ports['NOTIFIER_PORT_1']}/readyz",
                f"http://127.0.0.1:{ports['NOTIFIER_PORT_2']}/readyz",
            ],
            time.monotonic() + 60,
        )
        request = urllib.request.Request(
            f"{base}/api/todos", data=json.dumps({"task": "just up <works> & flows"}).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as answer:
            todo = json.loads(answer.read())
            assert answer.status == 201

        deadline = time.monotonic() + 20
        while todo["id"] not in Path(log.name).read_text() or "just up &lt;works&gt;" not in Path(log.name).read_text():
            assert time.monotonic() < deadline, "the log sink never showed the event"
            time.sleep(0.2)
        assert (tmp_path / "var" / "todos.sqlite3").exists()
        assert (tmp_path / "var" / "nats").is_dir()
        children = psutil.Process(up.pid).children(recursive=True)
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            code = up.wait(timeout=30)
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
            log.close()

    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after Ctrl-C: {[p.pid for p in alive]}"
    assert len(children) >= 4
    assert code in (0, 130, -signal.SIGINT), Path(log.name).read_text()[-2000:]
