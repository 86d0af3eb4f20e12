"""The whole system for one chaos scenario: PostgreSQL database, nats-server, fake Telegram, API, 3 notifiers.

Everything runs as in production: `python -m web` (API + outbox relay) and `python -m notifier`
processes, a real nats-server with file storage and a real PostgreSQL; only Telegram is faked,
in this process, so its clock is the test's clock. `faults` records when each fault happened (and
which replica a SIGKILL or SIGSTOP hit), `facts` what a scenario noted on the way (shown in its
report), and `notifier_log_events` counts what the notifiers logged (their JSON logs are under
`workdir/logs`).

What the audit needs to tie a duplicate message to its cause is recorded on the way: each notifier
replica talks to the fake through a port of its own, so `senders` knows which replica sent each
accepted message; `sent_log_writes` is every write to `todos_sent` (`sending`, `sent`, `refused`), with
the time it went by (a subscription on the bucket's subjects). `todo_rows` reads the final todos from
the database itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import nats
import nats.errors
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from streams import payload, subjects, topology
from tests.chaos.telegram_faults import FaultyTelegram, HookedTelegram
from tests.fake_telegram import RECORD
from tests.processes import ROOT, Proc, ready_all, start_notifier, start_web, stop_all
from tests.services import LOCALHOST, NATS_AUTH, NatsServer, Postgres, free_port
from tools.nats_cluster import NatsCluster

if TYPE_CHECKING:
    from tests.chaos.load import Load

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
    # the notifier replica it SIGKILLed or SIGSTOPped, and the signal ("" for any other fault): a send of
    # that replica under way in [start, end] may lose its outcome, and the message be sent again
    replica: str = ""
    signal: str = ""
    nats_down: bool = False  # nats-server was down: a send Telegram accepted meanwhile could not be recorded


@dataclass(frozen=True)
class Sender:
    """Who sent an accepted message: the replica, and when the fake's answer to it was ready."""

    replica: str
    answered_at: float  # time.monotonic()


TODOS_SQL = "SELECT id, user_id, task, done, created_at, updated_at FROM todos"


async def _quiet(error: Exception) -> None:
    pass


@dataclass
class System:
    workdir: Path
    postgres: Postgres
    telegram: FaultyTelegram
    replicas: int = 3
    notifier_env: dict[str, str] = field(default_factory=dict)
    cluster: bool = False  # a three-node JetStream cluster (R3 topology) instead of one nats-server
    apis: int = 1  # API replicas (python -m web) on the one database
    faults: list[Fault] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    senders: dict[int, Sender] = field(default_factory=dict)  # message_id -> the replica that sent it
    # todos_sent key -> (when, value) of each write seen ("sending", "sent", "refused")
    sent_log_writes: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    _replica_runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    async def __aenter__(self) -> Self:
        self.database_url = self.postgres.create_database(f"chaos_{uuid.uuid4().hex[:10]}")
        self.nats: NatsServer | NatsCluster = (
            NatsCluster(self.workdir / "nats", auth=NATS_AUTH).start()
            if self.cluster
            else NatsServer(self.workdir / "nats").start()
        )
        self.nats_url = self.nats.url  # a cluster's: all three nodes, comma separated
        try:
            await self._start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _start(self) -> None:
        self.nc: NatsClient = await nats.connect(
            self.nats_url.split(","),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            error_cb=_quiet,  # the outage is the point: no traceback per failed reconnect
        )
        self.js: JetStreamContext = self.nc.jetstream()
        for attempt in range(1, 4):  # a cluster that just formed may take a while to place its first R3 stream
            try:
                await topology.bootstrap(self.js, 3 if self.cluster else 1)
                break
            except nats.errors.TimeoutError:
                if attempt == 3:
                    raise
        await self.nc.subscribe(f"$KV.{subjects.SENT_BUCKET}.>", cb=self._saw_record)
        await self.telegram.start()
        names = [f"notifier-{i}" for i in range(self.replicas)]
        urls = await self._serve_telegram_per_replica(names)
        logs = self.workdir / "logs"
        self.webs = [
            start_web(
                database_url=self.database_url, nats_url=self.nats_url, log_dir=logs, name=f"web-{i}" if i else "web"
            )
            for i in range(self.apis)
        ]
        self.web = self.webs[0]
        self.notifiers = [
            start_notifier(
                nats_url=self.nats_url,
                telegram_base_url=urls[name],
                token=self.telegram.token,
                chat_id=CHAT_ID,
                log_dir=logs,
                name=name,
                env={**UNPACED, **self.notifier_env},
            )
            for name in names
        ]
        await ready_all(self.procs)

    async def __aexit__(self, *exc: object) -> None:
        """Stop whatever was started (all of it, or what a failed start got to)."""
        started = [*getattr(self, "webs", []), *getattr(self, "notifiers", [])]
        await stop_all(started, timeout=15)
        if self._replica_runner is not None:
            await self._replica_runner.cleanup()
        await self.telegram.stop()
        if hasattr(self, "nc"):
            await self.nc.close()
        self.nats.stop()

    async def _serve_telegram_per_replica(self, names: list[str]) -> dict[str, str]:
        """The fake's Bot API once more, on one port per replica (the base URL each is given), so the port a
        request came in on names its sender. The fake's state is shared: it is the same handler."""
        ports = {free_port(): name for name in names}
        app = self.telegram.app()
        app.middlewares.append(_sender_tap(ports, self.senders))
        self._replica_runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._replica_runner.setup()
        for port in ports:
            await web.TCPSite(self._replica_runner, LOCALHOST, port).start()
        return {name: f"http://{LOCALHOST}:{port}" for port, name in ports.items()}

    async def _saw_record(self, msg: Msg) -> None:
        """A write to todos_sent: note when it went by, and what (an empty value is an older `sent`)."""
        operation = (msg.headers or {}).get("KV-Operation", "")
        value = operation.lower() if operation else (msg.data.decode(errors="replace") or "sent")
        key = msg.subject.removeprefix(f"$KV.{subjects.SENT_BUCKET}.")
        self.sent_log_writes.setdefault(key, []).append((time.monotonic(), value))

    @property
    def procs(self) -> list[Proc]:
        return [*self.webs, *self.notifiers]

    # faults, each recorded with its time span

    async def kill_and_restart(self, proc: Proc) -> None:
        """SIGKILL a process, start it again at once, wait until it is ready."""
        at = time.monotonic()
        proc.kill()
        replica = proc.name if proc in self.notifiers else ""
        self.faults.append(Fault(f"SIGKILL {proc.name}", at, at, replica=replica, signal="SIGKILL" if replica else ""))
        await proc.start().ready()

    async def kill_relay_leader(self, load: Load) -> None:
        """SIGKILL the API replica that relays the outbox (its /metrics says outbox_relay_leader 1) and take it
        out of the load's endpoints, as a Service does; note how long until another replica relays; start it
        again and give it back its share of the load."""
        while True:
            leaders = [proc for proc in self.webs if await _relay_leader(proc.url)]
            if leaders:
                break
            await asyncio.sleep(0.05)
        leader = leaders[0]
        at = time.monotonic()
        leader.kill()
        load.endpoints.remove(leader.url)
        survivors = [proc for proc in self.webs if proc is not leader]
        while not any([await _relay_leader(proc.url) for proc in survivors]):
            await asyncio.sleep(0.05)
        self.facts["relay_handover_s"] = round(time.monotonic() - at, 2)
        await asyncio.sleep(2.0)
        await leader.start().ready()
        load.endpoints.append(leader.url)
        self.faults.append(Fault(f"SIGKILL {leader.name} (the relay leader)", at, time.monotonic()))

    async def restart_nats(self, down_for: float) -> None:
        """Stop nats-server, keep it down `down_for` seconds, start it on the same port with the same data."""
        at = time.monotonic()
        self.nats.stop()
        await asyncio.sleep(down_for)
        self.nats.start()
        self.faults.append(Fault("nats-server restart", at, time.monotonic(), nats_down=True))

    def _cluster(self) -> NatsCluster:
        assert isinstance(self.nats, NatsCluster), "a scenario on a cluster"
        return self.nats

    async def kill_stream_leader(
        self, down_for: float | None, *, stream: str = subjects.STREAM, pause: bool = False
    ) -> None:
        """Cluster: SIGKILL (or SIGSTOP, `pause`) the node leading `stream`; start it again (SIGCONT) `down_for`
        seconds later, or later still, once the other two stored an event of TODOS without it; None: never
        (a node gone for good). Same ports, same store: it rejoins and catches up."""
        cluster = self._cluster()
        leader = await cluster.stream_leader(stream)
        stored_before = (await cluster.stream_info(subjects.STREAM)).state.last_seq
        at = time.monotonic()
        if pause:
            cluster.pause(leader)
        else:
            cluster.kill(leader)
        self.facts["node"] = leader.name
        successor = await cluster.stream_leader(stream, not_on=leader)
        self.facts["new_leader_after_s"] = round(time.monotonic() - at, 1)
        if down_for is not None:
            await asyncio.sleep(max(0.0, at + down_for - time.monotonic()))
        # R3: the two nodes left are a quorum and keep taking events; the node comes back once they did
        # (an election takes several seconds, and the relay retries with backoff meanwhile)
        deadline = time.monotonic() + 30
        while (stored := (await cluster.stream_info(subjects.STREAM)).state.last_seq) == stored_before:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        self.facts["stored_while_down"] = stored - stored_before
        self.facts["down_s"] = round(time.monotonic() - at, 1) if down_for is not None else None
        if down_for is not None:
            if pause:
                cluster.resume(leader)
            else:
                await asyncio.to_thread(cluster.start_node, leader)
        kind = "SIGSTOP" if pause else "SIGKILL"
        self.faults.append(
            Fault(f"{kind} {stream} leader {leader.name} (next: {successor.name})", at, time.monotonic())
        )

    async def rolling_restart(self) -> None:
        """Cluster: each node in turn stopped (SIGTERM) and started again once the others carry every stream,
        waiting for it to be current again before the next, as an upgrade does."""
        cluster = self._cluster()
        at = time.monotonic()
        restarted = []
        for node in list(cluster.nodes):
            await asyncio.to_thread(cluster.stop_node, node)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(cluster.start_node, node)
            await cluster.wait_stream_current(subjects.STREAM, within=60)
            restarted.append(node.name)
        self.facts["restarted"] = restarted
        self.faults.append(Fault("rolling restart of " + ", ".join(restarted), at, time.monotonic()))

    async def stop_postgres(self, down_for: float) -> None:
        at = time.monotonic()
        await asyncio.to_thread(self.postgres.stop)
        await asyncio.sleep(down_for)
        await self._start_postgres()
        self.faults.append(Fault("PostgreSQL stopped", at, time.monotonic()))

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
        self.faults.append(Fault("bot's rights revoked", at, time.monotonic()))

    async def telegram_outage(self, status: int, lasting: float) -> None:
        """Every Bot API request answers `status` (503 ...) for `lasting` seconds."""
        at = time.monotonic()
        self.telegram.outage_status = status
        try:
            await asyncio.sleep(lasting)
        finally:
            self.telegram.outage_status = 0
        self.faults.append(Fault(f"Telegram answering {status}", at, time.monotonic()))

    async def freeze(self, proc: Proc, lasting: float) -> None:
        """SIGSTOP a process, SIGCONT it `lasting` seconds later (whatever happens meanwhile)."""
        at = time.monotonic()
        proc.signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(lasting)
        finally:
            proc.signal(signal.SIGCONT)
        replica = proc.name if proc in self.notifiers else ""
        self.faults.append(
            Fault(f"SIGSTOP {proc.name}", at, time.monotonic(), replica=replica, signal="SIGSTOP" if replica else "")
        )

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
        self.faults.append(
            Fault(f"nats-server stopped before the ok of message #{message_id}", at, time.monotonic(), nats_down=True)
        )

    async def recreate_consumer(self) -> None:
        """Delete the shared consumer, then restart every notifier replica (SIGTERM, start, ready); the
        notifiers create it again (a running one on its next fetch, a starting one when it binds)."""
        at = time.monotonic()
        await self.js.delete_consumer(subjects.STREAM, subjects.CONSUMER)
        await asyncio.gather(*(proc.restart() for proc in self.notifiers))
        self.faults.append(Fault("consumer deleted, notifiers restarted", at, time.monotonic()))

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

    async def todo_rows(self) -> dict[str, dict[str, Any]]:
        """The final todos, read from the database (not through the API under test), by id."""
        return await read_todos(self.database_url)


async def _relay_leader(url: str) -> bool:
    """Whether the API process at `url` relays the outbox now (False if it does not answer)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
            http.get(f"{url}/metrics") as response,
        ):
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return False
    return any(line.split()[-1] == "1.0" for line in text.splitlines() if line.startswith("outbox_relay_leader "))


async def read_todos(database_url: str) -> dict[str, dict[str, Any]]:
    """Every row of `todos`, as the API's JSON shows it, by id.

    PostgreSQL through asyncpg, SQLite (`sqlite://path`, relative to the web process's directory) through
    sqlite3. Each row goes through `streams.payload.Todo`, the model the API answers and publishes with
    (camelCase keys, UTC timestamps with milliseconds and `Z`), so a row compares equal to its last event
    field for field.
    """
    if database_url.startswith("sqlite://"):
        path = ROOT / database_url.removeprefix("sqlite://")
        records = await asyncio.to_thread(_sqlite_rows, path)
    else:
        connection = await asyncpg.connect(database_url)
        try:
            records = [dict(record) for record in await connection.fetch(TODOS_SQL)]
        finally:
            await connection.close()
    todos = [api_json(record) for record in records]
    return {str(todo["id"]): todo for todo in todos}


def api_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A `todos` row (column names) as the API's JSON todo."""
    todo = payload.Todo.model_validate({
        "id": row["id"], "userId": row["user_id"], "task": row["task"], "done": row["done"],
        "createdAt": row["created_at"], "updatedAt": row["updated_at"],
    })  # fmt: skip
    return todo.to_json()


def _sqlite_rows(path: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(TODOS_SQL)]


def _sender_tap(ports: Mapping[int, str], senders: dict[int, Sender]) -> Middleware:
    """Note, for each message the fake accepts, the replica whose port the request came in on."""

    @web.middleware
    async def tap(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        port = int(sockname[1]) if sockname else (request.url.port or 0)
        response = await handler(request)
        record = request.get(RECORD)  # the fake's record of the request: the message it posted, if any
        if record is not None and record.sent is not None:
            senders[record.sent.message_id] = Sender(ports.get(port, f"port {port}"), time.monotonic())
        return response

    return tap


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
