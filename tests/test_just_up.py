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
from collections.abc import Callable
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


def _wait_ready(urls: list[str], deadline: float, gave_up: Callable[[], bool]) -> list[str]:
    """The URLs still not answering 200 when the deadline passed or `gave_up()` turned true."""
    pending = list(urls)
    while pending and time.monotonic() < deadline and not gave_up():
        pending = [url for url in pending if _get(url) != 200]
        time.sleep(0.2)
    return pending


class JustUp:
    """`just up` in its own process group, on ports given through NATS_PORT, WEB_PORT..."""

    NAMES = ("NATS_PORT", "NATS_MONITOR_PORT", "WEB_PORT", "NOTIFIER_PORT_1", "NOTIFIER_PORT_2")

    def __init__(self, workdir: Path) -> None:
        # the Procfile takes ports, not port 0: free ones, and another try if someone takes one first
        self.ports = {name: free_port() for name in self.NAMES}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "NATS_", "DATABASE_"))}
        env |= {name: str(port) for name, port in self.ports.items()} | {"LOG_FORMAT": "json"}
        just = shutil.which("just")
        assert just is not None
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "up.log"
        self.log = self.log_path.open("w+")
        self.process = subprocess.Popen(
            [just, "--justfile", str(ROOT / "Justfile"), "--working-directory", str(workdir), "up"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's Ctrl-C would signal
        )

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def lost_a_port(self) -> bool:
        return "address already in use" in self.log_path.read_text().lower()

    def ctrl_c(self) -> int | None:
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                os.killpg(self.process.pid, signal.SIGKILL)
            self.log.close()


def _start_ready(tmp_path: Path, attempts: int = 3) -> JustUp:
    """`just up` with every process ready; started again on new ports if one was taken meanwhile."""
    for attempt in range(1, attempts + 1):
        up = JustUp(tmp_path / f"attempt-{attempt}")
        urls = [f"{up.url(name)}/readyz" for name in ("WEB_PORT", "NOTIFIER_PORT_1", "NOTIFIER_PORT_2")]
        pending = _wait_ready(urls, time.monotonic() + 60, up.lost_a_port)
        if not pending:
            return up
        up.ctrl_c()
        if not up.lost_a_port() or attempt == attempts:
            raise AssertionError(f"not ready: {pending}\n{up.log_path.read_text()[-2000:]}")
    raise AssertionError("unreachable")


def test_just_up_runs_the_system_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    """nats-server, the API (SQLite under ./var) and two log-sink notifiers; a POST reaches a notifier."""
    up = _start_ready(tmp_path)
    workdir = up.log_path.parent
    try:
        request = urllib.request.Request(
            f"{up.url('WEB_PORT')}/api/todos",
            data=json.dumps({"task": "just up <works> & flows"}).encode(),
            method="POST",
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=5) as answer:
            todo = json.loads(answer.read())
            assert answer.status == 201

        deadline = time.monotonic() + 20
        while todo["id"] not in up.log_path.read_text() or "just up &lt;works&gt;" not in up.log_path.read_text():
            assert time.monotonic() < deadline, "the log sink never showed the event"
            time.sleep(0.2)
        assert (workdir / "var" / "todos.sqlite3").exists()
        assert (workdir / "var" / "nats").is_dir()
        children = psutil.Process(up.process.pid).children(recursive=True)
    finally:
        code = up.ctrl_c()

    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after Ctrl-C: {[p.pid for p in alive]}"
    assert len(children) >= 4
    assert code in (0, 130, -signal.SIGINT), up.log_path.read_text()[-2000:]
