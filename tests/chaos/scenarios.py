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
from typing import Any

import aiohttp

from streams import subjects
from tests.chaos.audit import Audit, audit, read_stream
from tests.chaos.load import Load
from tests.chaos.system import System
from tests.chaos.telegram_faults import FaultyTelegram
from tests.services import Postgres

SETTLE_TIMEOUT = 90.0


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

    @property
    def server_errors(self) -> dict[int, int]:
        """5xx answers other than 503."""
        return {status: n for status, n in self.statuses.items() if status >= 500 and status != 503}

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "audit": asdict(self.audit)}


async def _settle(system: System, timeout: float) -> bool:
    """Wait until the outbox is empty and every event in the stream is acked (sent or dead-lettered)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            consumer = await system.js.consumer_info(subjects.STREAM, subjects.CONSUMER)
            if consumer.num_pending == 0 and consumer.num_ack_pending == 0 and await system.outbox_rows() == 0:
                return True
        except Exception:
            pass
        await asyncio.sleep(0.2)
    return False


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
        settled = await _settle(system, SETTLE_TIMEOUT)
        rows = await _todos(system.web.url)
        stream = await read_stream(system.js)
        dead = (await system.js.stream_info(subjects.DLQ_STREAM)).state.messages
        outbox = await system.outbox_rows()
        result = audit(
            load.ledger, rows=rows, stream=stream, sent=telegram.sent, faults=system.faults, slow_ids=telegram.slow_ids
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
        settled=settled,
        seconds=time.monotonic() - started,
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
        cells = [
            report.title, a.committed, f"{a.unknown} ({a.unknown_committed})", a.in_stream, a.messages,
            a.delivered, a.lost, duplicates, report.statuses.get(503, 0), sum(report.server_errors.values()),
            report.dead_letters, f"{report.seconds:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)
