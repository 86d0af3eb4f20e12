"""The fault scenarios, and running one: start the system, drive the load while the faults happen, settle, audit.

Each scenario is the faults it injects (in step with the load's progress), the fake Telegram it
talks to, and whether duplicates are acceptable. `bench/chaos.py` runs them at 1,000 changes,
tests/chaos at a size that keeps the suite short.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from nats.js.api import ConsumerInfo, StreamInfo

from streams import subjects
from tests.chaos.audit import Audit, audit, read_stream
from tests.chaos.load import Load
from tests.chaos.system import System
from tests.chaos.telegram_faults import FaultyTelegram
from tests.services import Postgres

SETTLE_TIMEOUT = 90.0
SETTLE_POLL = 0.2


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    faults: Callable[[System, Load], Coroutine[None, None, None]]
    telegram: Callable[[], FaultyTelegram] = FaultyTelegram
    notifier_env: dict[str, str] = field(default_factory=dict)
    duplicates_allowed: bool = False  # beyond those a fault explains


async def _kills(system: System, load: Load) -> None:
    """SIGKILL three notifier replicas (one at a time) and the API once, each restarted at once."""
    n0, n1, n2 = system.notifiers
    restarts = []
    for share, proc in ((0.15, n0), (0.35, n1), (0.5, system.web), (0.7, n2)):
        await load.reached(share)
        restarts.append(asyncio.create_task(system.kill_and_restart(proc)))
    await asyncio.gather(*restarts)


async def _nats_restart(system: System, load: Load) -> None:
    await load.reached(0.4)
    await system.restart_nats(down_for=2.0)


async def _postgres_outage(system: System, load: Load) -> None:
    await load.reached(0.4)
    await system.stop_postgres(down_for=5.0)


async def _nothing(system: System, load: Load) -> None:
    """The faults are in the fake Telegram."""


def _flaky_telegram() -> FaultyTelegram:
    # 10% 500s; every 50th message starts a burst of five 429s (retry_after 1 s); 3% of messages
    # accepted but answered after 1.5 s, past the notifier's 0.5 s client timeout
    return FaultyTelegram(
        share_500=0.1, burst_every=50, burst_size=5, retry_after=1, share_slow=0.03, slow_delay=1.5, seed=5
    )


SCENARIOS = [
    Scenario(
        "kills",
        "SIGKILL 3 notifier replicas and the API",
        _kills,
        telegram=lambda: FaultyTelegram(answer_delay=0.02),  # replicas hold events when killed
    ),
    Scenario("nats", "nats-server restarted (2 s down)", _nats_restart),
    Scenario(
        "paced",
        "nats-server restarted, notifiers pacing 1 msg/s (grouping)",
        _nats_restart,
        # Telegram's group limit slowed from 20/min to 20/20 s: events queue and share messages,
        # and some are held longer than the ack wait while NATS is away
        notifier_env={"TELEGRAM_GROUP_RATE": "20/20s"},
    ),
    Scenario("postgres", "PostgreSQL stopped for 5 s", _postgres_outage),
    Scenario(
        "telegram",
        "Telegram: 10% 500s, 429 bursts, slow answers",
        _nothing,
        telegram=_flaky_telegram,
        notifier_env={"TELEGRAM_TIMEOUT": "0.5"},
        duplicates_allowed=True,
    ),
]
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


@dataclass
class Report:
    scenario: str
    title: str
    changes: int
    audit: Audit
    statuses: dict[int, int]
    errors: dict[str, int]
    unexpected: list[str]
    dead_letters: int
    outbox_left: int
    faults: list[str]
    injected: dict[str, int]
    settled: bool
    seconds: float
    settle_state: str = ""  # the last look before giving up, when it did not settle

    @property
    def server_errors(self) -> dict[int, int]:
        """5xx answers other than 503."""
        return {status: n for status, n in self.statuses.items() if status >= 500 and status != 503}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "audit": asdict(self.audit)}


class JetStreamInfo(Protocol):
    """The two JetStream look-ups settling needs (a JetStreamContext, or a stub in tests)."""

    async def stream_info(self, name: str, /) -> StreamInfo: ...

    async def consumer_info(self, stream: str, consumer: str, /) -> ConsumerInfo: ...


class Settleable(Protocol):
    """What `settle` watches: the outbox, the stream and the consumer (a `System`, or a stub in tests)."""

    @property
    def js(self) -> JetStreamInfo: ...

    async def outbox_rows(self) -> int: ...


@dataclass(frozen=True)
class SettleState:
    """One look at the pipeline; stream and consumer are read only once the outbox was seen empty."""

    outbox: int | None = None
    last_seq: int | None = None  # the stream's last sequence
    num_pending: int | None = None
    num_ack_pending: int | None = None
    ack_floor: int | None = None  # the consumer's ack floor, as a stream sequence
    error: str = ""

    @property
    def quiet(self) -> bool:
        """Outbox empty, and every event in the stream delivered and acked (or terminated)."""
        return (
            self.outbox == 0
            and self.last_seq is not None
            and self.num_pending == 0
            and self.num_ack_pending == 0
            and self.ack_floor is not None
            and self.ack_floor >= self.last_seq
        )

    def __str__(self) -> str:
        if self.error:
            return f"could not look: {self.error}"
        if self.outbox != 0:
            return f"{self.outbox} outbox rows not yet published"
        return (
            f"outbox empty; stream last seq {self.last_seq}; consumer {self.num_pending} pending, "
            f"{self.num_ack_pending} awaiting ack, ack floor at stream seq {self.ack_floor}"
        )


@dataclass(frozen=True)
class Settling:
    settled: bool
    last: SettleState  # the last look: why it did not settle, when it did not


async def _look(system: Settleable) -> SettleState:
    """The outbox first, then the stream, then the consumer: the relay deletes a row only after NATS stored
    its event, so an empty outbox means every committed event is in the stream by the time it is read.
    (The other order lets an event be published between the consumer's and the outbox's read.)"""
    try:
        outbox = await system.outbox_rows()
        if outbox:
            return SettleState(outbox=outbox)
        stream = await system.js.stream_info(subjects.STREAM)
        consumer = await system.js.consumer_info(subjects.STREAM, subjects.CONSUMER)
    except Exception as error:
        return SettleState(error=f"{type(error).__name__}: {error}")
    return SettleState(
        outbox=0,
        last_seq=stream.state.last_seq,
        num_pending=consumer.num_pending,
        num_ack_pending=consumer.num_ack_pending,
        ack_floor=consumer.ack_floor.stream_seq if consumer.ack_floor is not None else None,
    )


async def settle(system: Settleable, timeout: float, *, poll: float = SETTLE_POLL) -> Settling:
    """Wait until the outbox is empty and every event in the stream is acked (sent or dead-lettered).

    Settled takes two quiet looks in a row (`poll` seconds apart) that saw the same last stream sequence.
    """
    deadline = time.monotonic() + timeout
    quiet_at: int | None = None  # the last stream sequence of the previous look, when it was quiet
    while True:
        state = await _look(system)
        if not state.quiet:
            quiet_at = None
        elif quiet_at == state.last_seq:
            return Settling(settled=True, last=state)
        else:
            quiet_at = state.last_seq
        if time.monotonic() >= deadline:
            return Settling(settled=False, last=state)
        await asyncio.sleep(poll)


async def _todos(base_url: str) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/api/todos") as response:
        response.raise_for_status()
        return {todo["id"]: todo for todo in await response.json()}


async def run(
    scenario: Scenario,
    changes: int,
    postgres: Postgres,
    workdir: Path,
    *,
    rate: float,
    workers: int = 8,
    notifier_env: dict[str, str] | None = None,
) -> Report:
    started = time.monotonic()
    telegram = scenario.telegram()
    env = {**scenario.notifier_env, **(notifier_env or {})}
    async with System(workdir, postgres, telegram, notifier_env=env) as system:
        load = Load(system.web.url, changes, rate, workers=workers, label=scenario.name)
        async with asyncio.TaskGroup() as group:
            group.create_task(load.run())
            group.create_task(scenario.faults(system, load))
        # read the outcome only once settled: before, an event may be in the stream but not yet sent
        settling = await settle(system, SETTLE_TIMEOUT)
        rows = await _todos(system.web.url)
        stream = await read_stream(system.js)
        dead = (await system.js.stream_info(subjects.DLQ_STREAM)).state.messages
        outbox = await system.outbox_rows()
        result = audit(
            load.ledger,
            rows=rows,
            stream=stream,
            sent=telegram.sent,
            faults=system.faults,
            slow_ids=telegram.slow_ids,
            settled=settling.settled,
        )
    return Report(
        scenario=scenario.name,
        title=scenario.title,
        changes=changes,
        audit=result,
        statuses=dict(load.ledger.statuses),
        errors=dict(load.ledger.errors),
        unexpected=load.ledger.unexpected,
        dead_letters=dead,
        outbox_left=outbox,
        faults=[
            f"{fault.kind} at +{fault.start - started:.1f}s ({fault.end - fault.start:.1f}s)" for fault in system.faults
        ],
        injected=dict(telegram.injected),
        settled=settling.settled,
        seconds=time.monotonic() - started,
        settle_state="" if settling.settled else str(settling.last),
    )


COLUMNS = (
    "scenario", "changes committed", "answer lost (committed)", "events in stream", "messages", "events delivered",
    "lost", "duplicates", "503s", "other 5xx", "dead letters", "seconds",
)  # fmt: skip


def table(reports: list[Report]) -> str:
    """A Markdown table of the reports."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for report in reports:
        a = report.audit
        duplicates = f"{a.duplicates} ({a.explained_duplicates} after a fault)" if a.duplicates else "0"
        lost = a.lost if report.settled else f"{a.lost} (did not settle: {a.undelivered} undelivered)"
        cells = [
            report.title, a.committed, f"{a.unknown} ({a.unknown_committed})", a.in_stream, a.messages,
            a.delivered, lost, duplicates, report.statuses.get(503, 0), sum(report.server_errors.values()),
            report.dead_letters, f"{report.seconds:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)
