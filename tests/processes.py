"""The system's own processes (`python -m web`, `python -m notifier`) for end-to-end tests, chaos runs and benchmarks.

`start_web(...)` / `start_notifier(...)` launch one process with its environment (the caller's plus
the settings given), stderr and stdout going to a log file; `await proc.ready()` polls its
`/readyz` with a deadline (and fails early, with the log's tail, if the process died);
`await proc.stop()` is SIGTERM then wait (SIGKILL after a deadline), `proc.kill()` is SIGKILL,
`await proc.restart()` starts the same command again on the same port. `RssSampler` records the
peak resident memory of processes while it runs.

Ports: neither process can be told to bind port 0 and say which port it got (web's PORT must be
1-65535, and the notifier's health port is logged nowhere), so a port left to `start_web` /
`start_notifier` comes from `free_port()`, which another process may bind first. When the first
start of such a process dies of "address already in use", `ready()` starts it again on a new port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import aiohttp
import psutil  # type: ignore[import-untyped]

from streams.permissions import NOTIFIER, WEB
from tests.services import LOCALHOST, as_identity, free_port

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 60.0  # generous: the suite runs on busy machines
MAX_PORT_CHANGES = 3


class ProcessDiedError(RuntimeError):
    """The process exited while we waited for it to become ready."""


@dataclass
class Proc:
    """One of our processes: `python -m <module>` with an environment, a port and a log file."""

    name: str
    module: str
    env: dict[str, str | None]  # None removes an inherited variable
    port: int
    log_path: Path
    ready_path: str = "/readyz"
    # the variable of `env` that holds the port, when the port was chosen here (free_port) and may be changed
    port_variable: str | None = None
    port_changes: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> Self:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts + 1} of {self.name} ---\n".encode())
            log.flush()
            args, cwd = self.command()
            self.process = subprocess.Popen(
                args,
                env=self.environment(),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        return self

    def command(self) -> tuple[list[str], Path]:
        """The command line of the process and the directory it runs in."""
        return [sys.executable, "-m", self.module], ROOT

    def environment(self) -> dict[str, str]:
        merged: dict[str, str | None] = {**os.environ, **self.env}
        return {key: value for key, value in merged.items() if value is not None}

    async def ready(self, timeout: float = READY_TIMEOUT) -> Self:
        """Wait until `ready_path` answers 200; ProcessDiedError or TimeoutError with the log's tail."""
        deadline = time.monotonic() + timeout
        client_timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=client_timeout) as session:
            while True:
                if not self.alive:
                    if self._lost_its_port():
                        self._start_on_a_new_port()
                        continue
                    raise ProcessDiedError(f"{self.name} exited ({self.returncode}) before ready:\n{self.tail()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.url + self.ready_path) as response:
                        if response.status == 200:
                            return self
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")
                await asyncio.sleep(0.05)

    def _lost_its_port(self) -> bool:
        """Its first start died because another process took the port chosen for it."""
        if self.port_variable is None or self.starts != 1 + self.port_changes or self.port_changes >= MAX_PORT_CHANGES:
            return False
        start_marker = self.log_text().rfind("--- start #")
        return "address already in use" in self.log_text()[start_marker:].lower()

    def _start_on_a_new_port(self) -> None:
        assert self.port_variable is not None
        self.port = free_port()
        self.env[self.port_variable] = str(self.port)
        self.port_changes += 1
        self.start()

    @property
    def returncode(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def signal(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL, and reap the process (returns at once: a killed process dies immediately)."""
        if self.process is None:
            return
        self.signal(signal.SIGKILL)
        self.process.wait()

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait for the exit; SIGKILL when it takes longer than `timeout`. The exit code."""
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                break
            await asyncio.sleep(0.02)
        return self.process.returncode

    async def restart(self, timeout: float = READY_TIMEOUT) -> Self:
        """SIGTERM (if running), start the same command again and wait until ready."""
        if self.alive:
            await self.stop()
        return await self.start().ready(timeout)

    def peak_rss(self) -> int | None:
        """The kernel's high-water mark of resident memory (VmHWM, bytes) for the running process."""
        if not self.alive or self.pid is None:
            return None
        return vm_hwm(self.pid)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_web(
    *,
    database_url: str,
    nats_url: str | None,
    log_dir: Path,
    port: int | None = None,
    name: str = "web",
    env: Mapping[str, str | None] | None = None,
) -> Proc:
    """`python -m web` on 127.0.0.1; call `await proc.ready()` next."""
    port_variable = None if port else "PORT"
    port = port or free_port()
    settings: dict[str, str | None] = {
        "DATABASE_URL": database_url,
        # as the `web` NATS user (None: no NATS, even if the caller's environment has one)
        "NATS_URL": None if nats_url is None else as_identity(nats_url, WEB),
        "HOST": LOCALHOST,
        "PORT": str(port),
        "LOG_FORMAT": "json",
        **(env or {}),
    }
    return Proc(name, "web", settings, port, log_dir / f"{name}.log", port_variable=port_variable).start()


def start_notifier(
    *,
    nats_url: str,
    telegram_base_url: str,
    token: str,
    chat_id: int | str,
    log_dir: Path,
    port: int | None = None,
    name: str = "notifier",
    env: Mapping[str, str | None] | None = None,
) -> Proc:
    """`python -m notifier` sending to a (fake) Bot API; call `await proc.ready()` next."""
    port_variable = None if port else "NOTIFIER_PORT"
    port = port or free_port()
    settings: dict[str, str | None] = {
        "NATS_URL": as_identity(nats_url, NOTIFIER),  # as the `notifier` NATS user
        "TELEGRAM_ACCESS_TOKEN": token,
        "TELEGRAM_CHAT_ID": str(chat_id),
        "TELEGRAM_API_BASE_URL": telegram_base_url,
        "NOTIFIER_PORT": str(port),
        "LOG_FORMAT": "json",
        **(env or {}),
    }
    return Proc(name, "notifier", settings, port, log_dir / f"{name}.log", port_variable=port_variable).start()


async def ready_all(procs: Iterable[Proc], timeout: float = READY_TIMEOUT) -> None:
    await asyncio.gather(*(proc.ready(timeout) for proc in procs))


async def stop_all(procs: Iterable[Proc], timeout: float = 20.0) -> list[int | None]:
    return list(await asyncio.gather(*(proc.stop(timeout) for proc in procs)))


def vm_hwm(pid: int) -> int | None:
    """Peak resident set size of a live process in bytes (Linux VmHWM), None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


class RssSampler:
    """A thread sampling the resident memory of named processes; `.peak[name]` is the highest seen (bytes).

    Sampling follows restarts (it reads each Proc's current pid) and also takes the kernel's VmHWM
    where available, so a short spike between two samples is not missed.
    """

    def __init__(self, procs: Mapping[str, Proc], interval: float = 0.05) -> None:
        self.procs = dict(procs)
        self.interval = interval
        self.peak: dict[str, int] = dict.fromkeys(self.procs, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        for name, proc in self.procs.items():
            pid = proc.pid
            if pid is None or not proc.alive:
                continue
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(pid).memory_info().rss
                self.peak[name] = max(self.peak[name], rss, vm_hwm(pid) or 0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Self:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peak_mb(self, name: str) -> float:
        return self.peak[name] / 2**20
