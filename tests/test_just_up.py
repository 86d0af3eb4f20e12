"""`just up` as a new user runs it: every process starts, an event flows to the notifiers, and every way of
stopping it (Ctrl-C, closing the terminal, SIGTERM) leaves no process behind and every port free; a second
`just up` while one runs says so in one line, and a lock file left behind blocks nothing."""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
STOP_DEADLINE = 20  # seconds: the launcher's own SIGTERM-to-SIGKILL grace is 10 s


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


def _bindable(port: int) -> bool:
    """Whether a server could listen on the port now (SO_REUSEADDR, as servers bind: TIME_WAIT is no conflict)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running; a zombie has stopped (its parent, maybe init, has not reaped it yet)."""
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
    return alive


def _describe(processes: list[psutil.Process]) -> list[str]:
    described = []
    for process in processes:
        try:
            described.append(f"{process.pid} {' '.join(process.cmdline())[:100]}")
        except psutil.Error:
            described.append(str(process.pid))
    return described


class JustUp:
    """`just up` in its own process group, on ports given through NATS_PORT, WEB_PORT...

    `in_terminal`: typed into an interactive bash whose controlling terminal is a pty, as in a terminal
    window; `close_terminal()` then closes that window. Otherwise its output goes to a file.
    """

    NAMES = ("NATS_PORT", "NATS_MONITOR_PORT", "WEB_PORT", "NOTIFIER_PORT_1", "NOTIFIER_PORT_2")

    def __init__(
        self, workdir: Path, attempt: int = 1, in_terminal: bool = False, ports: dict[str, int] | None = None
    ) -> None:
        # the Procfile takes ports, not port 0: free ones, and another try if someone takes one first
        self.ports = {name: free_port() for name in self.NAMES} | (ports or {})
        self.workdir = workdir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "NATS_", "DATABASE_"))}
        self.env = env | {name: str(port) for name, port in self.ports.items()} | {"LOG_FORMAT": "json"}
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"up-{attempt}.log"
        self.log = self.log_path.open("w+")
        self.terminal: int | None = None
        self._reading = threading.Event()
        if in_terminal:
            self.process = self._start_in_terminal()
        else:
            self.process = subprocess.Popen(
                self.command(),
                env=self.env,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, as a terminal's Ctrl-C would signal
            )

    def command(self) -> list[str]:
        just = shutil.which("just")
        assert just is not None
        return [just, "--justfile", str(ROOT / "Justfile"), "--working-directory", str(self.workdir), "up"]

    def _start_in_terminal(self) -> subprocess.Popen[bytes]:
        if shutil.which("bash") is None:
            pytest.skip("needs bash")
        self.terminal, tty = os.openpty()
        # a new session whose controlling terminal is the pty, then an interactive bash with job control
        become_terminal_session = (
            "import fcntl, os, sys, termios; os.setsid(); fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
            "os.execvp('bash', ['bash', '--norc', '--noprofile', '-i'])"
        )
        process = subprocess.Popen(
            [sys.executable, "-c", become_terminal_session], env=self.env, stdin=tty, stdout=tty, stderr=tty
        )
        os.close(tty)
        os.write(self.terminal, (shlex.join(self.command()) + "\n").encode())
        self._reading.set()
        self._reader = threading.Thread(target=self._copy_terminal, daemon=True)
        self._reader.start()
        return process

    def _copy_terminal(self) -> None:
        """What the terminal shows, into the log (and read, so that no write to the terminal blocks)."""
        assert self.terminal is not None
        while self._reading.is_set():
            if not select.select([self.terminal], [], [], 0.1)[0]:
                continue
            try:
                data = os.read(self.terminal, 65536)
            except OSError:
                return
            self.log.write(data.decode(errors="replace"))
            self.log.flush()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def lost_a_port(self) -> bool:
        # nats-server's and aiohttp's "address already in use", and the launcher's own check
        return "already in use" in self.output().lower()

    def processes(self) -> list[psutil.Process]:
        """`just` (or the terminal's bash) and everything under it."""
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def launcher(self) -> psutil.Process:
        found = [p for p in self.processes() if any(part.endswith("tools/up.py") for part in p.cmdline())]
        parents = [p for p in found if p.parent() not in found]  # not honcho's forked helpers
        assert len(parents) == 1, _describe(found)
        return parents[0]

    def wait(self) -> int | None:
        try:
            return self.process.wait(timeout=STOP_DEADLINE)
        finally:
            self.close()

    def close(self) -> None:
        """Whatever happened: nothing of it left running."""
        if self.process.poll() is None:
            for process in reversed(self.processes()):  # in a terminal, just runs in a group of its own
                with contextlib.suppress(psutil.Error):
                    process.kill()
            self.process.wait()
        self._reading.clear()
        if self.terminal is not None:
            self._reader.join()
            os.close(self.terminal)
            self.terminal = None
        self.log.close()

    def ctrl_c(self) -> int | None:
        os.killpg(self.process.pid, signal.SIGINT)
        return self.wait()

    def close_terminal(self) -> None:
        """The terminal window closes: the kernel hangs up the pty; bash and its foreground job get SIGHUP."""
        assert self.terminal is not None
        self._reading.clear()
        self._reader.join()
        os.close(self.terminal)
        self.terminal = None

    def assert_all_stopped(self, processes: list[psutil.Process]) -> None:
        """Within the deadline: none of `processes` runs any more, and every port can be bound again."""
        deadline = time.monotonic() + STOP_DEADLINE
        while (_alive(processes) or not all(map(_bindable, self.ports.values()))) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = _alive(processes)
        for survivor in survivors:  # outside the tree now (orphans): not left running after the test
            with contextlib.suppress(psutil.Error):
                survivor.kill()
        assert not survivors, f"still running: {_describe(survivors)}\n{self.output()[-3000:]}"
        taken = {name: port for name, port in self.ports.items() if not _bindable(port)}
        assert not taken, f"ports still taken: {taken}\n{self.output()[-3000:]}"


def _start_ready(workdir: Path, attempts: int = 3, in_terminal: bool = False) -> JustUp:
    """`just up` with every process ready; started again on new ports if one was taken meanwhile."""
    for attempt in range(1, attempts + 1):
        up = JustUp(workdir, attempt, in_terminal)
        urls = [f"{up.url(name)}/readyz" for name in ("WEB_PORT", "NOTIFIER_PORT_1", "NOTIFIER_PORT_2")]
        pending = _wait_ready(urls, time.monotonic() + 60, up.lost_a_port)
        if not pending:
            return up
        tree = up.processes()
        if in_terminal:
            up.close_terminal()
        else:
            with contextlib.suppress(ProcessLookupError):  # it may have ended: the launcher's own port check
                os.killpg(up.process.pid, signal.SIGINT)
        up.assert_all_stopped(tree)
        up.wait()
        if not up.lost_a_port() or attempt == attempts:
            raise AssertionError(f"not ready: {pending}\n{up.output()[-2000:]}")
    raise AssertionError("unreachable")


def _the_system(up: JustUp) -> list[psutil.Process]:
    """Every process of a ready `just up`: just, the launcher, honcho's helpers, nats-server, the API, notifiers."""
    processes = up.processes()
    commands = [" ".join(p.cmdline()) for p in processes]
    for needle in ("tools/up.py", "nats-server", "-m web", "-m notifier"):
        assert any(needle in command for command in commands), commands
    assert sum("-m notifier" in command for command in commands) == 2, commands
    return processes


def test_just_up_runs_the_system_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    """nats-server, the API (SQLite under ./var) and two log-sink notifiers; a POST reaches a notifier."""
    up = _start_ready(tmp_path)
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
        while todo["id"] not in up.output() or "just up &lt;works&gt;" not in up.output():
            assert time.monotonic() < deadline, "the log sink never showed the event"
            time.sleep(0.2)
        assert (up.workdir / "var" / "todos.sqlite3").exists()
        assert (up.workdir / "var" / "nats").is_dir()
        # the page a person opens first
        with urllib.request.urlopen(f"{up.url('WEB_PORT')}/", timeout=5) as page:
            assert page.status == 200
            assert page.headers.get_content_type() == "text/html"
            assert b"<html" in page.read().lower()
        # NATS runs with the system's users: passwords made once, readable by their owner only
        passwords = up.workdir / "var" / "nats-passwords.json"
        assert set(json.loads(passwords.read_text())) == {"web", "notifier", "streams"}
        assert passwords.stat().st_mode & 0o077 == 0
        assert (up.workdir / "var" / "nats-auth.conf").stat().st_mode & 0o077 == 0
        processes = _the_system(up)
    finally:
        code = up.ctrl_c()

    up.assert_all_stopped(processes)
    assert code in (0, 130, -signal.SIGINT), up.output()[-2000:]  # just itself says it was interrupted: 130
    assert "SIGINT received" in up.output()


def test_sighup_to_its_process_group_stops_everything(tmp_path: Path) -> None:
    """What a closing terminal sends: SIGHUP to the whole foreground process group (just, the launcher...)."""
    up = _start_ready(tmp_path)
    try:
        processes = _the_system(up)
        os.killpg(up.process.pid, signal.SIGHUP)
        up.assert_all_stopped(processes)
    finally:
        up.wait()
    assert "SIGHUP received" in up.output()
    assert "Traceback" not in up.output()


def test_closing_its_terminal_stops_everything(tmp_path: Path) -> None:
    """`just up` typed into an interactive shell on a pty; the pty closes, as when the window is closed.

    The launcher gets SIGHUP and can no longer write to its terminal (EIO): it must stop everything all the same.
    """
    up = _start_ready(tmp_path, in_terminal=True)
    try:
        processes = _the_system(up)
        up.close_terminal()
        up.assert_all_stopped(processes)
    finally:
        up.wait()


def test_sigterm_to_the_launcher_alone_stops_everything_and_exits_0_then_just_up_starts_again(
    tmp_path: Path,
) -> None:
    """`kill <pid>` of the launcher: the same stop as Ctrl-C, exit code 0; its lock file does not block the next."""
    up = _start_ready(tmp_path / "here")
    try:
        processes = _the_system(up)
        up.launcher().send_signal(signal.SIGTERM)
        up.assert_all_stopped(processes)
    finally:
        code = up.wait()
    assert code == 0, up.output()[-2000:]  # the launcher's own code: just was not signalled
    assert "SIGTERM received" in up.output()
    assert (up.workdir / "var" / "up.lock").exists()  # left behind, as it always is

    again = _start_ready(up.workdir)
    try:
        lock = json.loads((again.workdir / "var" / "up.lock").read_text())
        assert lock["pid"] == again.launcher().pid
        assert lock["api"] == again.url("WEB_PORT")
    finally:
        again.ctrl_c()


def test_a_lock_whose_holder_was_killed_blocks_nothing(tmp_path: Path) -> None:
    """A holder SIGKILLed while it held var/up.lock (the kernel drops its lock): `just up` starts."""
    (tmp_path / "var").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_LOCK, str(tmp_path / "var" / "up.lock")], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        with (tmp_path / "var" / "up.lock").open() as lock, pytest.raises(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held indeed
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()

    up = _start_ready(tmp_path)
    up.ctrl_c()


_HOLD_THE_LOCK = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "api": "http://127.0.0.1:1"}).encode())
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_just_up_says_in_one_line_that_one_runs_and_the_first_keeps_running(tmp_path: Path) -> None:
    up = _start_ready(tmp_path)
    try:
        started = time.monotonic()
        second = subprocess.run(up.command(), env=up.env, capture_output=True, text=True, timeout=10, check=False)
        elapsed = time.monotonic() - started
        lines = (second.stdout + second.stderr).splitlines()
        launcher = up.launcher().pid

        assert second.returncode != 0
        assert elapsed < 5
        assert lines == [
            (
                f"just up is already running (pid {launcher}, API on {up.url('WEB_PORT')}): "
                f"stop it first (Ctrl-C in its terminal, or kill {launcher})"
            )
        ]
        assert _get(f"{up.url('WEB_PORT')}/readyz") == 200
        assert up.process.poll() is None
    finally:
        code = up.ctrl_c()
    assert code in (0, 130), up.output()[-2000:]


def test_a_port_in_use_is_named_in_one_line_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        up = JustUp(tmp_path, ports={"NOTIFIER_PORT_2": squatter.getsockname()[1]})
        code = up.wait()
    lines = up.output().splitlines()

    assert code != 0
    assert len(lines) == 1, lines
    assert f"port {up.ports['NOTIFIER_PORT_2']} (NOTIFIER_PORT_2, on 127.0.0.1) is already in use by" in lines[0]
    assert f"pid {os.getpid()}" in lines[0]  # the squatter: this test's process
    assert not (tmp_path / "var" / "nats").exists()


class JustUpCluster(JustUp):
    """`just up --cluster`: three nats-server nodes, PostgreSQL, two APIs, three notifiers, on free ports."""

    NAMES = (
        *(f"NATS_PORT_{n}" for n in (1, 2, 3)),
        *(f"NATS_CLUSTER_PORT_{n}" for n in (1, 2, 3)),
        *(f"NATS_MONITOR_PORT_{n}" for n in (1, 2, 3)),
        "PG_PORT",
        "WEB_PORT",
        "WEB_PORT_2",
        "NOTIFIER_PORT_1",
        "NOTIFIER_PORT_2",
        "NOTIFIER_PORT_3",
    )

    def command(self) -> list[str]:
        return [*super().command(), "--cluster"]


def test_just_up_cluster_runs_r3_with_two_apis_and_three_notifiers_and_ctrl_c_stops_it(tmp_path: Path) -> None:
    """The failure cases can be tried by hand: a change through the second API replica reaches a notifier over
    the three-node cluster, every stream and bucket is R3, and Ctrl-C stops all of it (PostgreSQL included)."""
    names = ("WEB_PORT", "WEB_PORT_2", "NOTIFIER_PORT_1", "NOTIFIER_PORT_2", "NOTIFIER_PORT_3")
    for attempt in range(1, 4):  # on new free ports if another process took one first
        up = JustUpCluster(tmp_path, attempt)
        pending = _wait_ready([f"{up.url(name)}/readyz" for name in names], time.monotonic() + 90, up.lost_a_port)
        if not pending or not up.lost_a_port() or attempt == 3:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.process.pid, signal.SIGINT)
        up.wait()
    try:
        assert not pending, up.output()[-20000:]
        tree = up.processes()
        assert sum("-m notifier" in " ".join(p.cmdline()) for p in tree) == 3
        request = urllib.request.Request(
            f"{up.url('WEB_PORT_2')}/api/todos", data=json.dumps({"task": "on three nodes"}).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 201
        deadline = time.monotonic() + 30
        while "on three nodes" not in _sent_lines(up) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "on three nodes" in _sent_lines(up), up.output()[-3000:]
        nats_url = ",".join(f"nats://127.0.0.1:{up.ports[f'NATS_PORT_{n}']}" for n in (1, 2, 3))
        status = subprocess.run(
            [sys.executable, "-m", "streams", "status", "--json"],
            env={**up.env, "NATS_URL": nats_url}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        groups = json.loads(status.stdout)["cluster"]["streams"]
        assert {name: group["replicas"] for name, group in groups.items()} == dict.fromkeys(groups, 3)
        assert up.ctrl_c() is not None
        up.assert_all_stopped(tree)
    finally:
        up.close()


def _sent_lines(up: JustUp) -> str:
    return "\n".join(line for line in up.output().splitlines() if "telegram.would_send" in line)
