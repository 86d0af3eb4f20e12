"""Settling, against a scripted stub of the system: no processes, no servers, well under a second.

The stub is a world that moves on by one scripted state at each look the harness takes (the relay
and the notifiers run between any two calls). The race it replays (a CI failure: 150 committed,
150 in the stream, 149 delivered, consumer "settled"): the harness read the consumer first (0
pending, 0 awaiting ack, since the last event was not in the stream yet), then the relay published
that event and deleted its outbox row, then the harness read the outbox (empty) and called it
settled; the audit found the event in the stream but not yet sent, and called it lost.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from nats.js.api import ConsumerConfig, ConsumerInfo, SequenceInfo, StreamConfig, StreamInfo, StreamState

from streams import subjects
from streams.subjects import Change
from tests.chaos.audit import Audit, StreamEvent, audit
from tests.chaos.load import Attempt, Ledger, Outcome
from tests.chaos.scenarios import BY_NAME, Report, Settleable, settle
from tests.chaos.verdict import problems
from tests.fake_telegram import Sent


@dataclass(frozen=True)
class Snapshot:
    outbox: int  # rows not yet published
    last_seq: int  # the stream's last sequence
    pending: int  # consumer: not yet delivered
    ack_pending: int  # consumer: delivered, not yet acked
    ack_floor: int  # consumer: stream sequence everything up to which is acked
    delivered: int  # events the fake Telegram accepted
    fails: bool = False  # every call raises (NATS or PostgreSQL away)


# event 150 committed, its outbox row not yet published; the 149 before it all sent and acked
BEHIND = Snapshot(outbox=1, last_seq=149, pending=0, ack_pending=0, ack_floor=149, delivered=149)
# the relay published event 150 and then deleted its row
PUBLISHED = replace(BEHIND, outbox=0, last_seq=150, pending=1)
# a notifier fetched it and is sending it
FETCHED = replace(PUBLISHED, pending=0, ack_pending=1)
# Telegram accepted it, the notifier acked it
ACKED = replace(FETCHED, ack_pending=0, ack_floor=150, delivered=150)


class World:
    """Answers each call from the current snapshot, then moves on to the next (the last one stays)."""

    def __init__(self, *timeline: Snapshot) -> None:
        self.timeline = list(timeline)
        self.calls = 0
        self.consumer_reads: list[Snapshot] = []  # the state each consumer_info call answered from

    @property
    def now(self) -> Snapshot:
        return self.timeline[min(self.calls, len(self.timeline) - 1)]

    def _step(self) -> Snapshot:
        state = self.now
        self.calls += 1
        if state.fails:
            raise ConnectionError("connection refused")
        return state

    @property
    def js(self) -> World:
        return self

    async def outbox_rows(self) -> int:
        return self._step().outbox

    async def stream_info(self, name: str, /) -> StreamInfo:
        assert name == subjects.STREAM
        state = self._step()
        return StreamInfo(
            config=StreamConfig(name=name),
            state=StreamState(messages=state.last_seq, bytes=0, first_seq=1, last_seq=state.last_seq, consumer_count=1),
        )

    async def consumer_info(self, stream: str, consumer: str, /) -> ConsumerInfo:
        assert (stream, consumer) == (subjects.STREAM, subjects.CONSUMER)
        state = self._step()
        self.consumer_reads.append(state)
        return ConsumerInfo(
            name=consumer,
            stream_name=stream,
            config=ConsumerConfig(durable_name=consumer),
            created=datetime.now(UTC),
            num_pending=state.pending,
            num_ack_pending=state.ack_pending,
            ack_floor=SequenceInfo(consumer_seq=state.ack_floor, stream_seq=state.ack_floor),
        )


async def old_settle(system: Settleable, timeout: float) -> bool:
    """The settling this replaced: the consumer first, the outbox second."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            consumer = await system.js.consumer_info(subjects.STREAM, subjects.CONSUMER)
            if consumer.num_pending == 0 and consumer.num_ack_pending == 0 and await system.outbox_rows() == 0:
                return True
        except Exception:
            pass
        await asyncio.sleep(0)
    return False


def _race() -> World:
    return World(BEHIND, *[PUBLISHED] * 3, *[FETCHED] * 4, ACKED)


async def test_old_settle_settles_before_the_last_event_is_delivered() -> None:
    world = _race()
    assert await old_settle(world, timeout=1.0)
    # settled, with event 150 in the stream and not sent: the audit's "LOST (in the stream, never delivered)"
    assert world.now == PUBLISHED
    assert world.now.delivered < world.now.last_seq


async def test_settle_waits_until_the_last_event_is_acked() -> None:
    world = _race()
    settling = await settle(world, timeout=5.0, poll=0)
    assert settling.settled
    assert world.now == ACKED
    assert world.now.delivered == world.now.last_seq == 150
    # it looked at the consumer while the event was published, then fetched, and only settled on two
    # looks after the ack
    assert world.consumer_reads[-2:] == [ACKED, ACKED]
    assert PUBLISHED in world.consumer_reads
    assert FETCHED in world.consumer_reads
    assert settling.last.ack_floor == settling.last.last_seq == 150


async def test_settle_does_not_settle_while_the_last_event_awaits_its_ack() -> None:
    settling = await settle(World(BEHIND, PUBLISHED, FETCHED), timeout=0.05, poll=0.005)
    assert not settling.settled
    assert settling.last.num_ack_pending == 1
    assert "1 awaiting ack" in str(settling.last)


async def test_settle_does_not_settle_while_the_outbox_has_rows() -> None:
    settling = await settle(World(BEHIND), timeout=0.05, poll=0.005)
    assert not settling.settled
    assert str(settling.last) == "1 outbox rows not yet published"


async def test_settle_needs_the_ack_floor_to_reach_the_last_event() -> None:
    """0 pending and 0 awaiting ack are not enough: the ack floor must cover the stream's last sequence."""
    stale = replace(PUBLISHED, pending=0)
    settling = await settle(World(stale), timeout=0.05, poll=0.005)
    assert not settling.settled
    assert settling.last.ack_floor == 149
    assert settling.last.last_seq == 150


async def test_settle_settles_once_everything_is_acked() -> None:
    world = World(ACKED)
    settling = await settle(world, timeout=5.0, poll=0)
    assert settling.settled
    assert world.calls == 6  # two looks of outbox, stream, consumer


async def test_settle_needs_two_quiet_looks_at_the_same_last_sequence() -> None:
    """A quiet look, then a quiet look at a later last sequence (a late event, sent at once): look again."""
    later = replace(ACKED, last_seq=151, ack_floor=151, delivered=151)
    world = World(*[ACKED] * 3, later)
    settling = await settle(world, timeout=5.0, poll=0)
    assert settling.settled
    assert settling.last.last_seq == 151
    assert world.calls == 9


async def test_settle_rides_out_failing_looks() -> None:
    failing = replace(ACKED, fails=True)
    world = World(*[failing] * 3, ACKED)
    settling = await settle(world, timeout=5.0, poll=0)
    assert settling.settled
    unsettled = await settle(World(failing), timeout=0.05, poll=0.005)
    assert not unsettled.settled
    assert "ConnectionError" in str(unsettled.last)


# the audit and the verdict when the run did not settle: not delivered yet is not lost


def _committed(task: str) -> tuple[Attempt, dict[str, Any]]:
    payload = {"id": task, "task": task, "done": False}
    return Attempt(Change.CREATED, task, task, Outcome.COMMITTED, 201, payload, 0.0), payload


def _message(payload: dict[str, Any], message_id: int) -> Sent:
    text = f'📝 Todo created\n<pre><code class="language-json">{html.escape(json.dumps(payload))}</code></pre>'
    return Sent(0.0, "-1", text, message_id)


def _audit(*, settled: bool, sent: int) -> Audit:
    ledger = Ledger()
    events = []
    for n in range(2):
        attempt, payload = _committed(f"t{n}")
        ledger.attempts.append(attempt)
        events.append(StreamEvent(n + 1, Change.CREATED, payload, f"e{n}"))
    rows = {event.payload["id"]: event.payload for event in events}
    messages = [_message(event.payload, n) for n, event in enumerate(events[:sent])]
    return audit(ledger, rows=rows, stream=events, sent=messages, settled=settled)


def test_audit_counts_an_undelivered_event_as_lost_only_when_settled() -> None:
    settled = _audit(settled=True, sent=1)
    assert (settled.lost, settled.undelivered) == (1, 0)
    assert settled.details[0].startswith("LOST (in the stream, never delivered)")
    unsettled = _audit(settled=False, sent=1)
    assert (unsettled.lost, unsettled.undelivered) == (0, 1)
    assert unsettled.details[0].startswith("UNDELIVERED")


def test_verdict_of_a_run_that_did_not_settle_says_so_and_not_lost() -> None:
    result = _audit(settled=False, sent=1)
    report = Report(
        scenario="postgres", title="", changes=2, audit=result, statuses={503: 1}, errors={}, unexpected=[],
        dead_letters=0, outbox_left=0, faults=[], injected={}, settled=False, seconds=90.0,
        settle_state="outbox empty; stream last seq 2; consumer 0 pending, 1 awaiting ack, ack floor at stream seq 1",
    )  # fmt: skip
    found = problems(report, BY_NAME["postgres"])
    assert len(found) == 1
    assert found[0].startswith("the system did not settle within 90 s (outbox empty;")
    assert "1 committed changes not delivered by then (not counted as lost)" in found[0]
    assert not any("never reached Telegram" in problem for problem in found)


def test_audit_does_not_blame_the_notifier_for_an_event_the_stream_holds_twice() -> None:
    attempt, payload = _committed("t0")
    stream = [StreamEvent(1, Change.CREATED, payload, "e0"), StreamEvent(2, Change.CREATED, payload, "e0-again")]
    sent = [_message(payload, 1), _message(payload, 2)]
    result = audit(Ledger(attempts=[attempt]), rows={"t0": payload}, stream=stream, sent=sent)
    assert result.stream_duplicates == 1
    assert result.duplicates == 0
    sent.append(_message(payload, 3))
    tripled = audit(Ledger(attempts=[attempt]), rows={"t0": payload}, stream=stream, sent=sent)
    assert tripled.duplicates == tripled.unexplained_duplicates == 1


def test_scenario_titles_name_the_facts_of_the_run() -> None:
    scenario = BY_NAME["consumer_recreated"]
    assert scenario.heading() == "consumer deleted and replicas restarted after N sent events"
    assert scenario.heading({"sent": 150}) == "consumer deleted and replicas restarted after 150 sent events"
