"""The fault scenarios, and running one: start the system, drive the load while the faults happen, settle, audit.

Each scenario is the faults it injects (in step with the load's progress), the fake Telegram it
talks to, which duplicates are acceptable (none, or only flagged copies of a send whose answer was
lost: see tests.chaos.audit for how a copy is tied to its cause), and any rules of its own.
`bench/chaos.py` runs them at 1,000 changes, tests/chaos at a size that keeps the suite short.

Long faults (minutes in production) are scaled in time, never slept through: the fault's length,
NOTIFIER_PROBE_INTERVAL (30 s by default) and NOTIFIER_RETRY_MAX_DELAY (60 s) are all divided by the
same factor, so the scaled fault spans as many probe intervals and capped retry delays as the real
one does with the default settings. Not scaled: the consumer's ack wait (5 s), the first probe
(1 s at most), OUTAGE_AFTER (3 failures in a row); each scaled fault still lasts 3 or more ack waits,
so holding events alive (in_progress) through it is exercised as in the real one.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from nats.js.api import ConsumerInfo, StreamInfo
from nats.js.errors import KeyNotFoundError

from notifier.policy import MAX_RETRY_DELAY
from notifier.settings import Settings
from streams import subjects, topology
from tests.chaos.audit import Audit, Cause, Evidence, StreamEvent, audit, deliveries_of, read_stream
from tests.chaos.load import Load
from tests.chaos.system import Fault, System
from tests.chaos.telegram_faults import FaultyTelegram, HookedTelegram, by_method, refused_sends
from tests.processes import Proc, ready_all, stop_all
from tests.services import Postgres

SETTLE_TIMEOUT = 90.0
SETTLE_POLL = 0.2


class Duplicates(StrEnum):
    """Which copies of an already delivered event a scenario accepts (a copy with no cause: never)."""

    NONE = "none"  # not one, whatever its cause, flagged or not
    # only copies of a send whose answer was lost (the fake lost it, or the sender was SIGKILLed or
    # SIGSTOPped while it was under way), each flagged as may-repeat (audit.ALLOWED_CAUSES)
    LOST_ANSWERS = "lost answers"


def _no_rules(report: Report) -> list[str]:
    return []


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str  # may name a fact the run notes, e.g. {sent}; "N" until it is known
    faults: Callable[[System, Load], Coroutine[None, None, None]]
    telegram: Callable[[], FaultyTelegram] = FaultyTelegram
    notifier_env: dict[str, str] = field(default_factory=dict)
    duplicates: Duplicates = Duplicates.NONE
    rules: Callable[[Report], list[str]] = _no_rules  # the scenario's own requirements: each broken one, in words
    cluster: bool = False  # run on a three-node JetStream cluster, the topology R3
    replicas: int = 3  # notifier replicas started (a scenario may stop and start some)
    apis: int = 1  # API replicas on the one database, the load spread over them

    def heading(self, facts: Mapping[str, Any] | None = None) -> str:
        """The title with the facts it names filled in ("N" for those not known)."""
        return self.title.format_map(_Known(facts or {}))


class _Known(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "N"


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


async def _stream_leader_killed(system: System, load: Load) -> None:
    await load.reached(0.4)
    await system.kill_stream_leader(LEADER_DOWN_FOR)


async def _sent_leader_killed(system: System, load: Load) -> None:
    await load.reached(0.4)
    await system.kill_stream_leader(LEADER_DOWN_FOR, stream=topology.kv_stream_name(subjects.SENT_BUCKET))


async def _node_gone(system: System, load: Load) -> None:
    await load.reached(0.4)
    await system.kill_stream_leader(None)


async def _node_hung(system: System, load: Load) -> None:
    await load.reached(0.4)
    await system.kill_stream_leader(NODE_HUNG_FOR, pause=True)


async def _scale(system: System, load: Load) -> None:
    """`kubectl scale` of the notifier under load, 1 -> 5 -> 2: SIGTERM to the replicas scaled away (each hands
    its held events back), new ones started."""
    others = system.notifiers[1:]  # the first one stays
    at = time.monotonic()
    await stop_all(others)
    counts = [1]
    await load.reached(0.3)
    await ready_all([proc.start() for proc in others])
    counts.append(1 + len(others))
    await load.reached(0.7)
    await stop_all(others[1:])
    counts.append(2)
    system.facts["replicas"] = counts
    system.faults.append(Fault("scaled " + " -> ".join(map(str, counts)), at, time.monotonic()))


def _scale_rules(report: Report) -> list[str]:
    return [] if report.facts.get("replicas") == [1, 5, 2] else [f"scaled {report.facts.get('replicas')}, not 1, 5, 2"]


async def _relay_leader_killed(system: System, load: Load) -> None:
    await load.reached(0.4)
    await system.kill_relay_leader(load)


def _relay_rules(report: Report) -> list[str]:
    handover = report.facts.get("relay_handover_s")
    if handover is None:
        return ["no relay leader was killed"]
    return [] if handover <= RELAY_HANDOVER_WITHIN else [f"another replica relayed only after {handover} s"]


async def _rolling_restart(system: System, load: Load) -> None:
    await load.reached(0.2)
    await system.rolling_restart()


def _failover_rules(report: Report) -> list[str]:
    if not report.facts.get("node"):
        return ["no node was hit"]
    if not report.facts.get("stored_while_down", 0):
        return ["the stream took no event while the node was away (no failover)"]
    return []


def _rolling_rules(report: Report) -> list[str]:
    restarted = report.facts.get("restarted", [])
    return [] if len(restarted) == 3 else [f"only {restarted} restarted"]


async def _postgres_outage(system: System, load: Load) -> None:
    await load.reached(0.4)
    await system.stop_postgres(down_for=5.0)


async def _nothing(system: System, load: Load) -> None:
    """The faults are in the fake Telegram."""


# --- long faults, scaled (see the module's docstring) -----------------------------------------------

FAULT_AT = 0.3  # the share of the load done when a long fault starts
DEFAULT_PROBE_INTERVAL = float(Settings.model_fields["notifier_probe_interval"].default)  # 30 s
RIGHTS_SCALE = 12  # 3 minutes without rights -> 15 s, probing every 2.5 s (6 intervals, as 3 min at 30 s)
RIGHTS_LOST_FOR = 180.0 / RIGHTS_SCALE
OUTAGE_SCALE = 30  # 10 minutes of 503s -> 20 s, probing every 1 s, retries capped at 2 s
OUTAGE_FOR = 600.0 / OUTAGE_SCALE
FREEZE_FOR = 3 * topology.ACK_WAIT  # a SIGSTOPped replica: its events' ack wait runs out 3 times over
AWAKE_TIMEOUT = 30.0  # a woken replica settles or lets go what it held within this
# longer than the notifier's KV write timeout (5 s): the todos_sent record fails and must be retried
NATS_DOWN_FOR = 8.0
LEADER_DOWN_FOR = 10.0  # a stream leader's node: SIGKILLed, started again this much later
NODE_HUNG_FOR = 20.0  # a node SIGSTOPped this long (a hung node, not a dead one)
# the relay leader SIGKILLed: another API replica relays within this long (claim interval 1 s, plus a connection)
RELAY_HANDOVER_WITHIN = 2.0
# a replica that pauses sends only what it had in flight when the first refusal came: a handful, not
# one per event per probe; nor is a delivery spent while events are held
REFUSED_SENDS_PER_REPLICA = 16
REDELIVERIES_PER_REPLICA = 8


def scaled_settings(factor: float) -> dict[str, str]:
    """NOTIFIER_PROBE_INTERVAL and NOTIFIER_RETRY_MAX_DELAY, their defaults divided by `factor`."""
    return {
        "NOTIFIER_PROBE_INTERVAL": f"{DEFAULT_PROBE_INTERVAL / factor:g}",
        "NOTIFIER_RETRY_MAX_DELAY": f"{MAX_RETRY_DELAY / factor:g}",
    }


async def _rights(system: System, load: Load) -> None:
    await load.reached(FAULT_AT)
    await system.revoke_rights(RIGHTS_LOST_FOR)


async def _telegram_outage(system: System, load: Load) -> None:
    await load.reached(FAULT_AT)
    await system.telegram_outage(503, OUTAGE_FOR)


async def _nats_during_record(system: System, load: Load) -> None:
    # the message accepted when about FAULT_AT of the load is done (one event per message: unpaced)
    await system.stop_nats_before_answering(max(1, round(FAULT_AT * load.changes)), NATS_DOWN_FOR)


async def _sigstop(system: System, load: Load) -> None:
    await load.reached(FAULT_AT)
    frozen = system.notifiers[1]
    system.facts["frozen"] = frozen.name
    await system.freeze(frozen, FREEZE_FOR)
    # settling would end the run at once (the others sent everything long ago): first the woken replica
    # must have acted on everything it held (sent and settled it, or let it go), so anything it would
    # send late is seen
    deadline = time.monotonic() + AWAKE_TIMEOUT
    while not await _holds_nothing(frozen):
        if time.monotonic() > deadline:
            raise AssertionError(f"{frozen.name} still holds events {AWAKE_TIMEOUT}s after it was woken")
        await asyncio.sleep(0.1)


async def _holds_nothing(proc: Proc) -> bool:
    """Whether a replica's metrics show no event held (each settled, or let go for another replica)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(proc.url + "/metrics") as response:
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError):
        return False
    held = [line.split()[-1] for line in text.splitlines() if line.startswith("notifier_events_in_flight ")]
    return len(held) == 1 and float(held[0]) == 0


async def _consumer_recreated(system: System, load: Load) -> None:
    await load.reached(1.0)
    settling = await settle(system, SETTLE_TIMEOUT)
    if not settling.settled:
        raise RuntimeError(f"did not settle before the consumer was to be deleted: {settling.last}")
    system.facts["sent"] = len(deliveries_of(system.telegram.sent))
    system.facts["messages_before"] = len(system.telegram.sent)
    system.facts["log_marks"] = system.log_marks()
    system.facts["deleted_at"] = time.monotonic()
    await system.recreate_consumer()


def _halts(report: Report) -> dict[str, int]:
    return {name: counts.get("telegram.halted", 0) for name, counts in report.notifier_logs.items()}


def _holding_rules(report: Report) -> list[str]:
    """A pause or an outage: each replica halts once, sends little while halted, spends few deliveries."""
    replicas = len(report.notifier_logs) or 1
    halts, resumes = _halts(report), {n: c.get("telegram.resumed", 0) for n, c in report.notifier_logs.items()}
    rules = [
        (not any(halts.values()), "no replica halted"),
        (
            any(count > 1 for count in halts.values()),
            f"a replica halted more than once in one fault (halts per replica {halts}): it resumed too early",
        ),
        (halts != resumes, f"halts {halts} and resumes {resumes} differ: a replica did not resume"),
        (
            report.refused_sends > REFUSED_SENDS_PER_REPLICA * replicas,
            f"{report.refused_sends} sendMessage requests refused, more than {REFUSED_SENDS_PER_REPLICA} per replica",
        ),
        (
            report.redelivered is None or report.redelivered > REDELIVERIES_PER_REPLICA * replicas,
            f"{report.redelivered} redeliveries, more than {REDELIVERIES_PER_REPLICA} per replica",
        ),
    ]
    return [message for broken, message in rules if broken]


def _rights_rules(report: Report) -> list[str]:
    found = _holding_rules(report)
    if not report.requests.get("getchatmember"):
        found.append("the probes never read the bot's membership (getChatMember)")
    return found


def _outage_rules(report: Report) -> list[str]:
    found = _holding_rules(report)
    if not report.requests.get("getchat"):
        found.append("no probe (getChat) during the outage")
    return found


def _nats_during_record_rules(report: Report) -> list[str]:
    if not report.facts.get("hooked"):
        return ["the chosen message was never accepted: the fault did not happen"]
    records = report.facts.get("hooked_records", {})
    if any(value != "sent" for value in records.values()) or not records:
        return [f"todos_sent does not say sent for the message accepted while NATS was down: {records}"]
    return []


def _sigstop_rules(report: Report) -> list[str]:
    return [] if report.facts.get("frozen") else ["no replica was frozen"]


def _consumer_recreated_rules(report: Report) -> list[str]:
    facts, found = report.facts, []
    if facts.get("messages_after", 0):
        found.append(f"{facts['messages_after']} messages reached the chat after the consumer was deleted")
    if not facts.get("recreated"):
        found.append("no notifier logged consumer.recreated")
    if facts.get("suppressed", 0) < report.audit.in_stream:
        found.append(
            f"only {facts.get('suppressed', 0)} of {report.audit.in_stream} events came again and were recognised "
            "as sent (event.duplicate_suppressed): the new consumer did not replay the stream"
        )
    return found


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
        duplicates=Duplicates.LOST_ANSWERS,  # a send under way when its replica was killed
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
        "stream_leader",
        f"3-node cluster: the TODOS stream leader SIGKILLed, back {LEADER_DOWN_FOR:g} s later",
        _stream_leader_killed,
        duplicates=Duplicates.NONE,
        rules=_failover_rules,
        cluster=True,
    ),
    Scenario(
        "sent_leader",
        f"3-node cluster: the todos_sent KV leader SIGKILLed, back {LEADER_DOWN_FOR:g} s later",
        _sent_leader_killed,
        duplicates=Duplicates.NONE,
        rules=_failover_rules,
        cluster=True,
    ),
    Scenario(
        "rolling",
        "3-node cluster: rolling restart, one node at a time",
        _rolling_restart,
        duplicates=Duplicates.NONE,
        rules=_rolling_rules,
        cluster=True,
    ),
    Scenario(
        "node_gone",
        "3-node cluster: the TODOS leader's node gone for good",
        _node_gone,
        duplicates=Duplicates.NONE,
        rules=_failover_rules,
        cluster=True,
    ),
    Scenario(
        "relay_leader",
        "2 API replicas: the one relaying the outbox SIGKILLed (another relays after {relay_handover_s} s)",
        _relay_leader_killed,
        duplicates=Duplicates.NONE,
        rules=_relay_rules,
        apis=2,
    ),
    Scenario(
        "scale",
        "notifier scaled 1 -> 5 -> 2 under load (SIGTERM and new replicas)",
        _scale,
        duplicates=Duplicates.NONE,
        rules=_scale_rules,
        replicas=5,
    ),
    Scenario(
        "node_hung",
        f"3-node cluster: the TODOS leader's node SIGSTOPped for {NODE_HUNG_FOR:g} s",
        _node_hung,
        duplicates=Duplicates.NONE,
        rules=_failover_rules,
        cluster=True,
    ),
    Scenario(
        "telegram",
        "Telegram: 10% 500s, 429 bursts, slow answers",
        _nothing,
        telegram=_flaky_telegram,
        notifier_env={"TELEGRAM_TIMEOUT": "0.5"},
        duplicates=Duplicates.LOST_ANSWERS,  # a message answered after the client gave up is sent again
    ),
    Scenario(
        "rights",
        f"bot without rights for 3 minutes (scaled 1/{RIGHTS_SCALE}: {RIGHTS_LOST_FOR:g} s)",
        _rights,
        notifier_env=scaled_settings(RIGHTS_SCALE),
        duplicates=Duplicates.NONE,
        rules=_rights_rules,
    ),
    Scenario(
        "telegram_outage",
        f"Telegram 503 for 10 minutes (scaled 1/{OUTAGE_SCALE}: {OUTAGE_FOR:g} s)",
        _telegram_outage,
        notifier_env=scaled_settings(OUTAGE_SCALE),
        duplicates=Duplicates.NONE,
        rules=_outage_rules,
    ),
    Scenario(
        "nats_during_record",
        f"nats-server down ({NATS_DOWN_FOR:g} s) between Telegram's ok and the record",
        _nats_during_record,
        telegram=HookedTelegram,
        duplicates=Duplicates.NONE,
        rules=_nats_during_record_rules,
    ),
    Scenario(
        "sigstop",
        f"a replica SIGSTOPped for 3 x the ack wait ({FREEZE_FOR:g} s)",
        _sigstop,
        telegram=lambda: FaultyTelegram(answer_delay=0.05),  # a send is likely in flight when it stops
        duplicates=Duplicates.LOST_ANSWERS,
        rules=_sigstop_rules,
    ),
    Scenario(
        "consumer_recreated",
        "consumer deleted and replicas restarted after {sent} sent events",
        _consumer_recreated,
        duplicates=Duplicates.NONE,
        rules=_consumer_recreated_rules,
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
    # deliveries beyond each event's first (the consumer's deliveries minus the events it delivered)
    redelivered: int | None = None
    requests: dict[str, int] = field(default_factory=dict)  # Bot API requests by method (lower case)
    refused_sends: int = 0  # sendMessage requests Telegram answered with an error
    notifier_logs: dict[str, dict[str, int]] = field(default_factory=dict)  # replica -> watched log event -> count
    facts: dict[str, Any] = field(default_factory=dict)  # what the scenario noted
    longest_gap: float | None = None  # the longest time between two messages reaching Telegram, seconds

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


async def _redelivered(system: System) -> int | None:
    """Deliveries beyond the first: the consumer numbers every delivery, the stream every event."""
    try:
        stream = await system.js.stream_info(subjects.STREAM)
        consumer = await system.js.consumer_info(subjects.STREAM, subjects.CONSUMER)
    except Exception:
        return None
    delivered = consumer.delivered
    if delivered is None or delivered.consumer_seq is None or delivered.stream_seq is None:
        return None
    # every event up to the last one delivered was delivered at least once (deliver policy all, no filter gaps)
    events = int(delivered.stream_seq) - int(stream.state.first_seq) + 1 if delivered.stream_seq else 0
    return int(delivered.consumer_seq) - events


async def _records(system: System, stream: list[StreamEvent], message_ids: list[int]) -> dict[int, str]:
    """What todos_sent holds for the event of each of these messages ("sent", "sending", "refused", "none")."""
    kv = await system.js.key_value(subjects.SENT_BUCKET)
    by_key = {event.key: event for event in stream}
    found: dict[int, str] = {}
    for delivery in deliveries_of([m for m in system.telegram.sent if m.message_id in message_ids]):
        event = by_key.get(delivery.key)
        if event is None:
            found[delivery.message.message_id] = "not in the stream"
            continue
        try:
            entry = await kv.get(subjects.sent_key(event.msg_id))
        except KeyNotFoundError:
            found[delivery.message.message_id] = "none"
        else:
            found[delivery.message.message_id] = (entry.value or b"sent").decode()
    return found


def _facts(system: System, telegram: FaultyTelegram) -> dict[str, Any]:
    """What the scenario noted, plus what can be read off the fake and the logs afterwards."""
    facts = dict(system.facts)
    marks = facts.pop("log_marks", None)
    if isinstance(telegram, HookedTelegram):
        facts["hooked"] = sorted(telegram.hooked)
    if "deleted_at" in facts:
        deleted_at = facts.pop("deleted_at")
        facts["messages_after"] = sum(1 for message in telegram.sent if message.at >= deleted_at)
        since = system.notifier_log_events(marks)
        facts["recreated"] = sum(counts["consumer.recreated"] for counts in since.values())
        facts["suppressed"] = sum(counts["event.duplicate_suppressed"] for counts in since.values())
    if system.faults:
        fault = system.faults[0]
        refused = refused_sends(telegram.requests, fault.start, fault.end + 1.0)
        if refused:
            facts["last_refused_send"] = f"+{refused[-1].at - fault.start:.1f}s after the fault began"
    return facts


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
    async with System(
        workdir,
        postgres,
        telegram,
        notifier_env=env,
        cluster=scenario.cluster,
        replicas=scenario.replicas,
        apis=scenario.apis,
    ) as system:
        more = [proc.url for proc in system.webs[1:]]
        load = Load(system.web.url, changes, rate, workers=workers, label=scenario.name, more_urls=more)
        async with asyncio.TaskGroup() as group:
            group.create_task(load.run())
            group.create_task(scenario.faults(system, load))
        # read the outcome only once settled: before, an event may be in the stream but not yet sent
        settling = await settle(system, SETTLE_TIMEOUT)
        rows = await system.todo_rows()  # from the database: the API is what is under test
        stream = await read_stream(system.js)
        dead = (await system.js.stream_info(subjects.DLQ_STREAM)).state.messages
        outbox = await system.outbox_rows()
        redelivered = await _redelivered(system)
        logs = {name: dict(counts) for name, counts in system.notifier_log_events().items()}
        facts = _facts(system, telegram)
        if isinstance(telegram, HookedTelegram):
            facts["hooked_records"] = await _records(system, stream, sorted(telegram.hooked))
        evidence = Evidence(
            faults=list(system.faults),
            senders=dict(system.senders),
            slow_ids=set(telegram.slow_ids),
            hooked_ids=set(telegram.hooked) if isinstance(telegram, HookedTelegram) else set(),
            sent_log_writes={key: list(writes) for key, writes in system.sent_log_writes.items()},
            started=started,
        )
        result = audit(
            load.ledger, rows=rows, stream=stream, sent=telegram.sent, evidence=evidence, settled=settling.settled
        )
    return Report(
        scenario=scenario.name,
        title=scenario.heading(facts),
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
        longest_gap=longest_gap([message.at for message in telegram.sent]),
        settle_state="" if settling.settled else str(settling.last),
        redelivered=redelivered,
        requests=dict(by_method(telegram.requests)),
        refused_sends=len(refused_sends(telegram.requests)),
        notifier_logs=logs,
        facts=facts,
    )


COLUMNS = (
    "scenario", "changes committed", "answer lost (committed)", "events in stream", "messages", "events delivered",
    "lost", "duplicates (causes; flagged)", "API 503s", "API other 5xx", "dead letters", "redelivered", "refused sends",
    "longest gap in delivery (s)", "seconds",
)  # fmt: skip


def longest_gap(times: list[float]) -> float | None:
    """The longest wait between two consecutive messages (by the time Telegram took them), if two were sent."""
    ordered = sorted(times)
    return max((b - a for a, b in itertools.pairwise(ordered)), default=None)


def duplicates_cell(a: Audit) -> str:
    """The duplicates by cause, and how many were flagged: "1 (1 lost answer, flagged)",
    "3 (2 lost answer, 1 sender SIGKILLed; all flagged)", "2 (1 lost answer, 1 no cause; 1 flagged)"."""
    if not a.duplicates:
        return "0"
    order = [cause.value for cause in Cause]
    causes = ", ".join(f"{a.duplicate_causes[cause]} {cause}" for cause in order if a.duplicate_causes.get(cause))
    if a.flagged_duplicates == a.duplicates:
        flagged = "flagged" if a.duplicates == 1 else "all flagged"
    else:
        flagged = "not flagged" if a.duplicates == 1 else f"{a.flagged_duplicates} flagged"
    return f"{a.duplicates} ({causes}{', ' if a.duplicates == 1 else '; '}{flagged})"


def table(reports: list[Report]) -> str:
    """A Markdown table of the reports."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for report in reports:
        a = report.audit
        lost = a.lost if report.settled else f"{a.lost} (did not settle: {a.undelivered} undelivered)"
        cells = [
            report.title, a.committed, f"{a.unknown} ({a.unknown_committed})", a.in_stream, a.messages,
            a.delivered, lost, duplicates_cell(a), report.statuses.get(503, 0), sum(report.server_errors.values()),
            report.dead_letters, "?" if report.redelivered is None else report.redelivered, report.refused_sends,
            "?" if report.longest_gap is None else f"{report.longest_gap:.1f}", f"{report.seconds:.0f}",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)
