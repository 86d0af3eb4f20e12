"""The whole system for one chaos scenario: PostgreSQL database, nats-server, fake Telegram, API, 3 notifiers.

Everything runs as in production: `python -m web` (API + outbox relay) and `python -m notifier`
processes, a real nats-server with file storage and a real PostgreSQL; only Telegram is faked,
in this process, so its clock is the test's clock. `faults` records when each fault happened.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import asyncpg  # type: ignore[import-untyped]
import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from streams import topology
from tests.chaos.telegram_faults import FaultyTelegram
from tests.processes import Proc, ready_all, start_notifier, start_web, stop_all
from tests.services import NatsServer, Postgres

CHAT_ID = -1001234567890
# the fake enforces no rate limit, so the notifiers need not pace (Telegram's 20 messages/min for a group
# would stretch 1,000 changes over minutes); pacing and grouping have their own tests in tests/notifier
UNPACED = {"TELEGRAM_CHAT_RATE": "off", "TELEGRAM_GROUP_RATE": "off"}


@dataclass
class Fault:
    kind: str
    start: float  # time.monotonic()
    end: float
    # a message delivered around it may be delivered again (ok seen by nobody, or ack/KV write lost)
    explains_duplicates: bool = True


async def _quiet(error: Exception) -> None:
    pass


@dataclass
class System:
    workdir: Path
    postgres: Postgres
    telegram: FaultyTelegram
    replicas: int = 3
    notifier_env: dict[str, str] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)

    async def __aenter__(self) -> Self:
        self.database_url = self.postgres.create_database(f"chaos_{uuid.uuid4().hex[:10]}")
        self.nats = NatsServer(self.workdir / "nats").start()
        self.nc: NatsClient = await nats.connect(
            self.nats.url,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=_quiet,  # the outage is the point: no traceback per failed reconnect
        )
        self.js: JetStreamContext = self.nc.jetstream()
        await topology.bootstrap(self.js, 1)
        await self.telegram.start()
        logs = self.workdir / "logs"
        self.web = start_web(database_url=self.database_url, nats_url=self.nats.url, log_dir=logs)
        self.notifiers = [
            start_notifier(
                nats_url=self.nats.url,
                telegram_base_url=self.telegram.base_url,
                token=self.telegram.token,
                chat_id=CHAT_ID,
                log_dir=logs,
                name=f"notifier-{i}",
                env={**UNPACED, **self.notifier_env},
            )
            for i in range(self.replicas)
        ]
        try:
            await ready_all(self.procs)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_all(self.procs, timeout=15)
        await self.telegram.stop()
        await self.nc.close()
        self.nats.stop()

    @property
    def procs(self) -> list[Proc]:
        return [self.web, *self.notifiers]

    # faults, each recorded with its time span

    async def kill_and_restart(self, proc: Proc) -> None:
        """SIGKILL a process, start it again at once, wait until it is ready."""
        at = time.monotonic()
        proc.kill()
        self.faults.append(Fault(f"SIGKILL {proc.name}", at, at, explains_duplicates=proc in self.notifiers))
        await proc.start().ready()

    async def restart_nats(self, down_for: float) -> None:
        """Stop nats-server, keep it down `down_for` seconds, start it on the same port with the same data."""
        at = time.monotonic()
        self.nats.stop()
        await asyncio.sleep(down_for)
        self.nats.start()
        self.faults.append(Fault("nats-server restart", at, time.monotonic()))

    async def stop_postgres(self, down_for: float) -> None:
        at = time.monotonic()
        await asyncio.to_thread(self.postgres.stop)
        await asyncio.sleep(down_for)
        await self._start_postgres()
        self.faults.append(Fault("PostgreSQL stopped", at, time.monotonic(), explains_duplicates=False))

    async def _start_postgres(self, attempts: int = 3) -> None:
        """Start PostgreSQL again; a few tries, since its port was free for anyone while it was down."""
        for attempt in range(1, attempts + 1):
            try:
                await asyncio.to_thread(self.postgres.start)
            except subprocess.CalledProcessError:
                if attempt == attempts:
                    log = self.postgres.data_dir / "log"
                    tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
                    raise RuntimeError("PostgreSQL did not start again:\n" + "\n".join(tail)) from None
                await asyncio.sleep(0.5)
            else:
                return

    async def outbox_rows(self) -> int:
        connection = await asyncpg.connect(self.database_url)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM outbox"))
        finally:
            await connection.close()
