"""The whole system for one chaos scenario: PostgreSQL database, nats-server, fake Telegram, API, 3 notifiers.

Everything runs as in production: `python -m web` (API + outbox relay) and `python -m notifier`
processes, a real nats-server with file storage and a real PostgreSQL; only Telegram is faked,
in this process, so its clock is the test's clock. `faults` records when each fault happened,
`facts` what a scenario noted on the way (shown in its report), and `notifier_log_events` counts what
the notifiers logged (their JSON logs are under `workdir/logs`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import asyncpg  # type: ignore[import-untyped]
import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from streams import subjects, topology
from tests.chaos.telegram_faults import FaultyTelegram, HookedTelegram
from tests.processes import Proc, ready_all, start_notifier, start_web, stop_all
from tests.services import NatsServer, Postgres

CHAT_ID = -1001234567890
# the fake enforces no rate limit, so the notifiers need not pace (Telegram's 20 messages/min for a group
# would stretch 1,000 changes over minutes); pacing and grouping have their own tests in tests/notifier
UNPACED = {"TELEGRAM_CHAT_RATE": "off", "TELEGRAM_GROUP_RATE": "off"}
# what the notifiers' logs are searched for (`System.notifier_log_events`)
WATCHED_LOG_EVENTS = frozenset({
    "telegram.halted", "telegram.resumed", "telegram.still_halted", "telegram.send_failed", "event.retry_later",
    "event.let_go", "event.duplicate_suppressed", "event.dead_lettered", "sent_log.record_failed",
    "sent_log.unreachable", "consumer.recreated", "consumer.lost", "pipeline.released", "replica.task_died",
    "replica.task_ended", "nats.reconnected",
})  # fmt: skip
LogMarks = dict[str, int]  # notifier name -> size of its log at some moment


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
    facts: dict[str, Any] = field(default_factory=dict)

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

    async def revoke_rights(self, lasting: float) -> None:
        """An admin takes the bot's right to post in the chat away for `lasting` seconds (getChat still works)."""
        at = time.monotonic()
        self.telegram.revoke_rights(CHAT_ID)
        try:
            await asyncio.sleep(lasting)
        finally:
            self.telegram.restore_rights(CHAT_ID)
        # every refusal is an answer read: nothing may be sent twice because of it
        self.faults.append(Fault("bot's rights revoked", at, time.monotonic(), explains_duplicates=False))

    async def telegram_outage(self, status: int, lasting: float) -> None:
        """Every Bot API request answers `status` (503 ...) for `lasting` seconds."""
        at = time.monotonic()
        self.telegram.outage_status = status
        try:
            await asyncio.sleep(lasting)
        finally:
            self.telegram.outage_status = 0
        self.faults.append(Fault(f"Telegram answering {status}", at, time.monotonic(), explains_duplicates=False))

    async def freeze(self, proc: Proc, lasting: float) -> None:
        """SIGSTOP a process, SIGCONT it `lasting` seconds later (whatever happens meanwhile)."""
        at = time.monotonic()
        proc.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(lasting)
        finally:
            proc.signal(signal.SIGCONT)
        self.faults.append(Fault(f"SIGSTOP {proc.name}", at, time.monotonic()))

    async def stop_nats_before_answering(self, message_id: int, down_for: float, timeout: float = 60.0) -> None:
        """When the fake accepts message `message_id`, stop nats-server before the sender reads Telegram's ok;
        start it again (same port, same data) `down_for` seconds later."""
        telegram = self.telegram
        if not isinstance(telegram, HookedTelegram):
            raise TypeError("stop_nats_before_answering needs the scenario's telegram to be a HookedTelegram")
        stopped = asyncio.Event()
        at = 0.0

        async def stop() -> None:
            nonlocal at
            at = time.monotonic()
            self.nats.stop()
            stopped.set()

        telegram.before_answering(message_id, stop)
        try:
            await asyncio.wait_for(stopped.wait(), timeout)
        except TimeoutError:
            raise TimeoutError(f"message #{message_id} was not accepted within {timeout:.0f} s") from None
        await asyncio.sleep(down_for)
        self.nats.start()
        self.faults.append(Fault(f"nats-server stopped before the ok of message #{message_id}", at, time.monotonic()))

    async def recreate_consumer(self) -> None:
        """Delete the shared consumer, then restart every notifier replica (SIGTERM, start, ready); the
        notifiers create it again (a running one on its next fetch, a starting one when it binds)."""
        at = time.monotonic()
        await self.js.delete_consumer(subjects.STREAM, subjects.CONSUMER)
        await asyncio.gather(*(proc.restart() for proc in self.notifiers))
        self.faults.append(
            Fault("consumer deleted, notifiers restarted", at, time.monotonic(), explains_duplicates=False)
        )

    # the notifiers' logs

    def log_marks(self) -> LogMarks:
        """Where each notifier's log ends now: count only what is logged afterwards."""
        return {proc.name: _size(proc.log_path) for proc in self.notifiers}

    def notifier_log_events(self, since: Mapping[str, int] | None = None) -> dict[str, Counter[str]]:
        """Per notifier, how often it logged each of WATCHED_LOG_EVENTS (after `since`, across restarts)."""
        found: dict[str, Counter[str]] = {}
        for proc in self.notifiers:
            counts: Counter[str] = Counter()
            start = (since or {}).get(proc.name, 0)
            if proc.log_path.exists():
                with proc.log_path.open("rb") as log:
                    log.seek(start)
                    for line in log:
                        event = _log_event(line)
                        if event in WATCHED_LOG_EVENTS:
                            counts[event] += 1
            found[proc.name] = counts
        return found

    async def outbox_rows(self) -> int:
        connection = await asyncpg.connect(self.database_url)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM outbox"))
        finally:
            await connection.close()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _log_event(line: bytes) -> str:
    """The `event` of a JSON log line; "" for anything else (start banners, tracebacks)."""
    if not line.startswith(b"{"):
        return ""
    try:
        record = json.loads(line)
    except ValueError:
        return ""
    return str(record.get("event", "")) if isinstance(record, dict) else ""
