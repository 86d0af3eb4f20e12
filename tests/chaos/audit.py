"""After a scenario: what was committed, what the stream holds, what reached Telegram; what is missing or doubled.

An event is identified by its content: (change, payload), the payload being the todo JSON the API
answered (every change has a unique task text and every update a new updatedAt, so no two changes
share a key). Unknown outcomes (answer lost) are settled from the final rows of the database, read
by SQL (`System.todo_rows`), not through the API under test.

A duplicate (a copy of an event beyond the first) is tied to its cause, the send before it whose
outcome the sender never learned (`Cause`): the fake recorded its answer as lost (the client had gone,
or timed out before a slow answer); the replica that sent it was SIGKILLed or SIGSTOPped while it was
under way (from Telegram's acceptance until its `sent` record reached `todos_sent` or the next copy
left, whichever came first); or nats-server was down between Telegram's ok and the record (the
HookedTelegram's message, or any send under way when NATS went down). A copy is *flagged* when its
block's headline carries the notifier's "may repeat" line (notifier.formatting.MAY_REPEAT_NOTE). Only a
flagged copy of a lost answer or of a stopped sender is an *allowed* duplicate; one with no cause is
*unexplained*. README ("after Telegram's ok") says an accepted event is never sent again because NATS
failed: a copy caused so is not allowed either.

The stream's order is checked per todo: created first, updates in the order they committed (each
worker of the load owns its todos and changes one at a time, so the ledger's order is commit order),
deleted last, nothing after it.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import ServiceUnavailableError

from notifier.formatting import MAY_REPEAT_NOTE
from streams import subjects
from streams.subjects import Change
from tests.chaos.load import Attempt, Ledger, Outcome
from tests.chaos.system import Fault, Sender
from tests.fake_telegram import Sent

Key = tuple[str, str]
_BLOCK = re.compile(r'<pre><code class="language-json">(.*?)</code></pre>', re.DOTALL)
_CHANGE = re.compile(r"\b(created|updated|deleted)\b")
MAX_DETAILS = 10
# a request of a SIGKILLed replica may still be read, and accepted, by the fake just after the kill
LATE_ACCEPT = 0.5


def key(change: Change | str, payload: dict[str, Any]) -> Key:
    return (Change(change).value, json.dumps(payload, sort_keys=True, ensure_ascii=False))


@dataclass
class StreamEvent:
    seq: int
    change: Change
    payload: dict[str, Any]
    msg_id: str

    @property
    def key(self) -> Key:
        return key(self.change, self.payload)


async def _get_msg(js: JetStreamContext, stream: str, seq: int, attempts: int = 50) -> RawStreamMsg:
    """One stored message; a cluster that has just got a node back may answer 503 for a moment."""
    for attempt in range(attempts):
        try:
            return await js.get_msg(stream, seq)
        except ServiceUnavailableError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("unreachable")


async def read_stream(js: JetStreamContext, stream: str = subjects.STREAM) -> list[StreamEvent]:
    info = await js.stream_info(stream)
    events = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await _get_msg(js, stream, seq)
        assert msg.subject is not None
        assert msg.data is not None
        msg_id = (msg.headers or {}).get(subjects.MSG_ID_HEADER, "")
        events.append(StreamEvent(seq, Change.from_subject(msg.subject), json.loads(msg.data), msg_id))
    return events


@dataclass(frozen=True)
class Delivery:
    """One event block of an accepted message."""

    key: Key
    message: Sent
    flagged: bool  # its headline says it may repeat a message whose answer was lost (MAY_REPEAT_NOTE)


def deliveries_of(sent: list[Sent]) -> list[Delivery]:
    """Every event block of every accepted message, with the change named by the lines before it, and
    whether those lines (the block's headline) carry the "may repeat" note."""
    found = []
    for message in sent:
        position = 0
        for match in _BLOCK.finditer(message.text):
            before = html.unescape(message.text[position : match.start()])
            named = _CHANGE.findall(before)
            position = match.end()
            payload = json.loads(html.unescape(match.group(1)))
            found.append(Delivery(key(named[-1] if named else "created", payload), message, MAY_REPEAT_NOTE in before))
    return found


class Cause(StrEnum):
    """Why a message was sent again: what became of the send before it (whose outcome its sender never learned)."""

    LOST_ANSWER = "lost answer"  # the fake recorded its answer as lost: the client had gone, or gave up waiting
    SENDER_KILLED = "sender SIGKILLed"  # its replica was SIGKILLed while the send was under way
    SENDER_FROZEN = "sender SIGSTOPped"  # its replica was SIGSTOPped while the send was under way
    NATS_AT_RECORD = "NATS down at the record"  # nats-server stopped between Telegram's ok and the record
    NONE = "no cause"


# the causes a flagged copy is allowed for: Telegram has no idempotency key (README, "Delivery guarantees")
ALLOWED_CAUSES = frozenset({Cause.LOST_ANSWER, Cause.SENDER_KILLED, Cause.SENDER_FROZEN})


@dataclass(frozen=True)
class Evidence:
    """What the run recorded that can tie a copy of a message to the send before it."""

    faults: Sequence[Fault] = ()
    senders: Mapping[int, Sender] = field(default_factory=dict)  # message_id -> the replica that sent it
    slow_ids: AbstractSet[int] = frozenset()  # messages the fake answered only after the client's timeout
    hooked_ids: AbstractSet[int] = frozenset()  # nats-server stopped before their sender read Telegram's ok
    # todos_sent key -> (when, value) of each write seen: "sending", "sent", "refused"
    sent_log_writes: Mapping[str, Sequence[tuple[float, str]]] = field(default_factory=dict)
    started: float = 0.0  # the run's start (time.monotonic()): times in the details count from it


def lost_answer(message: Sent, evidence: Evidence) -> bool:
    """Whether the fake could not hand its answer to the client: gone (`Sent.answer_lost`), or answered slower
    than the client waits (the FaultyTelegram's `slow_ids`)."""
    return message.answer_lost or message.message_id in evidence.slow_ids


def cause_of(previous: Sent, following: Sent, event_id: str, evidence: Evidence) -> Cause:
    """Why `following` carries again an event `previous` carried: what became of `previous`'s send.

    A fault explains it only when it hit while that send was under way: from the fake's acceptance until the
    event's `sent` record went by, or the next copy was accepted. A SIGKILL or SIGSTOP must have hit the
    replica that sent `previous` (up to LATE_ACCEPT before the acceptance: the fake may still read and accept
    the request of a client just killed); a nats-server outage, anyone (the HookedTelegram's message is one
    by construction).
    """
    if lost_answer(previous, evidence):
        return Cause.LOST_ANSWER
    writes = evidence.sent_log_writes.get(subjects.sent_key(event_id), ()) if event_id else ()
    until = min([following.at, *(at for at, value in writes if value == "sent" and at >= previous.at)])
    sender = evidence.senders.get(previous.message_id)
    hit = [fault for fault in evidence.faults if sender is not None and fault.replica == sender.replica]
    for fault in hit:
        if fault.start <= until and fault.end >= previous.at - LATE_ACCEPT:
            return Cause.SENDER_FROZEN if fault.signal == "SIGSTOP" else Cause.SENDER_KILLED
    if previous.message_id in evidence.hooked_ids or any(
        fault.nats_down and fault.start <= until and fault.end >= previous.at for fault in evidence.faults
    ):
        return Cause.NATS_AT_RECORD
    return Cause.NONE


@dataclass(frozen=True)
class Duplicate:
    """A copy of an event beyond those the stream holds, and the copy before it."""

    key: Key
    copy: Delivery
    previous: Delivery
    cause: Cause

    @property
    def allowed(self) -> bool:
        """Flagged, and caused by a send whose answer was lost (the one kind README accepts)."""
        return self.copy.flagged and self.cause in ALLOWED_CAUSES

    def problems(self) -> list[str]:
        """What is wrong with it, in words (empty when allowed)."""
        found = []
        if self.cause is Cause.NONE:
            found.append("no cause")
        elif self.cause not in ALLOWED_CAUSES:
            found.append(f"{self.cause.value}: README says an event Telegram accepted is never sent again for that")
        if not self.copy.flagged:
            found.append("not flagged as may-repeat")
        return found

    def describe(self, evidence: Evidence, event_id: str) -> str:
        """The two sends, the todos_sent writes of the event and the nearest fault, times from the earlier send."""
        previous, copy = self.previous.message, self.copy.message
        sender, copier = evidence.senders.get(previous.message_id), evidence.senders.get(copy.message_id)
        first = f"#{previous.message_id} at {previous.at - evidence.started:+.2f}s by {_name(sender)}"
        if sender is not None:
            first += f", answered {sender.answered_at - previous.at:+.2f}s"
        first += " (answer lost)" if lost_answer(previous, evidence) else ""
        writes = evidence.sent_log_writes.get(subjects.sent_key(event_id), ()) if event_id else ()
        shown = ", ".join(f"{value} {at - previous.at:+.2f}s" for at, value in writes)
        written = f"todos_sent writes: {shown}" if writes else "no todos_sent write seen"
        nearest = min(evidence.faults, key=lambda fault: abs(fault.start - previous.at), default=None)
        near = f"; nearest fault: {nearest.kind} {nearest.start - previous.at:+.2f}s" if nearest else ""
        flag = " (flagged)" if self.copy.flagged else ""
        copied = f"#{copy.message_id}{flag} {copy.at - previous.at:+.2f}s by {_name(copier)}"
        change, body = self.key
        return f"{first}; copy {copied}; {written}; cause: {self.cause.value}{near}: {change} {body}"


def _name(sender: Sender | None) -> str:
    return sender.replica if sender is not None else "?"


@dataclass
class Audit:
    committed: int = 0
    unknown: int = 0  # requests whose answer was lost
    unknown_committed: int = 0  # ... and that the database shows committed
    in_stream: int = 0
    messages: int = 0
    delivered: int = 0
    lost: int = 0  # committed, never delivered, although the system settled
    undelivered: int = 0  # committed, not delivered when the run stopped waiting without settling: not known lost
    # copies of an event beyond the first (beyond the stream's, when the stream holds it twice)
    duplicates: int = 0
    # the copy says so: its headline carries MAY_REPEAT_NOTE (an earlier send's answer was lost)
    flagged_duplicates: int = 0
    # flagged, and caused by a lost answer or a stopped sender (ALLOWED_CAUSES): the only acceptable kind
    allowed_duplicates: int = 0
    # nothing the run recorded explains them (Cause.NONE)
    unexplained_duplicates: int = 0
    duplicate_causes: dict[str, int] = field(default_factory=dict)  # Cause value -> copies
    stream_duplicates: int = 0
    phantoms: int = 0
    inconsistent: int = 0
    out_of_order: int = 0  # events of a todo in the stream out of its commit order
    details: list[str] = field(default_factory=list)  # what is wrong
    explained: list[str] = field(default_factory=list)  # the allowed duplicates, each with its cause

    def note(self, text: str) -> None:
        if len(self.details) < MAX_DETAILS:
            self.details.append(text)

    @property
    def unflagged_duplicates(self) -> int:
        """Copies the chat shows with no word that they may repeat an earlier message."""
        return self.duplicates - self.flagged_duplicates

    @property
    def disallowed_duplicates(self) -> int:
        """Copies with no cause, unflagged, or caused by what README says never sends twice."""
        return self.duplicates - self.allowed_duplicates


def _settle_unknown(attempt: Attempt, rows: dict[str, dict[str, Any]]) -> bool:
    """Whether an attempt whose answer was lost committed: its todo was retired, so its final row tells."""
    if attempt.change is Change.CREATED:
        return any(row["task"] == attempt.task for row in rows.values())
    if attempt.change is Change.UPDATED:
        return rows.get(attempt.todo_id or "", {}).get("task") == attempt.task
    return attempt.todo_id not in rows


def _event_of(attempt: Attempt, stream: list[StreamEvent]) -> StreamEvent | None:
    for event in stream:
        if event.change is not attempt.change:
            continue
        if attempt.change is Change.DELETED and event.payload["id"] == attempt.todo_id:
            return event
        if attempt.change is not Change.DELETED and event.payload["task"] == attempt.task:
            return event
    return None


def audit(
    ledger: Ledger,
    *,
    rows: dict[str, dict[str, Any]],
    stream: list[StreamEvent],
    sent: list[Sent],
    evidence: Evidence | None = None,
    settled: bool = True,
) -> Audit:
    """Compare the ledger with the stream and the messages Telegram accepted.

    Call it once the system settled (outbox empty, every event in the stream acked). If it did not
    (`settled` False), a committed change not delivered yet may still be on its way: it is counted
    as undelivered, never as lost. `rows` are the database's final todos (`System.todo_rows`);
    `evidence` what ties a duplicate to its cause (none: every duplicate is unexplained).
    """
    evidence = evidence or Evidence()
    result = Audit(in_stream=len(stream), messages=len(sent))
    expected, commit_order = _committed(ledger, rows, stream, result, settled)
    in_stream = Counter(event.key for event in stream)
    result.stream_duplicates = sum(count - 1 for count in in_stream.values())
    for change, payload in sorted(set(in_stream) - expected):
        result.phantoms += 1
        result.note(f"PHANTOM in the stream (no committed change): {change} {payload}")
    deliveries = deliveries_of(sent)
    result.delivered = len(deliveries)
    copies: dict[Key, list[Delivery]] = defaultdict(list)
    for delivery in deliveries:
        copies[delivery.key].append(delivery)
    for change, payload in sorted(expected - set(copies)):
        where = "in the stream, never delivered" if (change, payload) in in_stream else "not in the stream"
        _missing(result, settled, f"({where}): {change} {payload}")
    event_ids = {event.key: event.msg_id for event in stream}
    for event_key, found in copies.items():
        if event_key not in expected and event_key not in in_stream:
            result.phantoms += 1
            result.note(f"PHANTOM delivered (no committed change): {event_key}")
        # an event the stream holds twice (counted in stream_duplicates) is rightly delivered twice:
        # only copies beyond the stream's are the notifier's duplicates
        for n in range(max(1, in_stream[event_key]), len(found)):
            event_id = event_ids.get(event_key, "")
            cause = cause_of(found[n - 1].message, found[n].message, event_id, evidence)
            _count(result, Duplicate(event_key, found[n], found[n - 1], cause), evidence, event_id)
    result.inconsistent = _check_state(rows, stream, result)
    result.out_of_order = _check_order(stream, commit_order, result)
    return result


def _committed(
    ledger: Ledger, rows: dict[str, dict[str, Any]], stream: list[StreamEvent], result: Audit, settled: bool
) -> tuple[set[Key], dict[str, list[Key]]]:
    """The events of the committed changes, and each todo's in commit order (counted in `result`)."""
    expected: set[Key] = set()
    commit_order: dict[str, list[Key]] = defaultdict(list)
    for attempt in ledger.attempts:
        if attempt.outcome is Outcome.COMMITTED:
            assert attempt.answer is not None
            expected.add(key(attempt.change, attempt.answer))
            commit_order[str(attempt.answer["id"])].append(key(attempt.change, attempt.answer))
            result.committed += 1
        elif attempt.outcome is Outcome.UNKNOWN:
            result.unknown += 1
            if not _settle_unknown(attempt, rows):
                continue
            result.committed += 1
            result.unknown_committed += 1
            event = _event_of(attempt, stream)
            if event is None:
                _missing(
                    result, settled, f"before the stream: unknown {attempt.change.value} {attempt.todo_id} committed"
                )
            else:
                expected.add(event.key)
                commit_order[str(event.payload["id"])].append(event.key)  # its todo was retired: nothing after it
    return expected, commit_order


def _count(result: Audit, duplicate: Duplicate, evidence: Evidence, event_id: str) -> None:
    result.duplicates += 1
    result.flagged_duplicates += duplicate.copy.flagged
    cause = duplicate.cause.value
    result.duplicate_causes[cause] = result.duplicate_causes.get(cause, 0) + 1
    result.unexplained_duplicates += duplicate.cause is Cause.NONE
    described = duplicate.describe(evidence, event_id)
    if duplicate.allowed:
        result.allowed_duplicates += 1
        if len(result.explained) < MAX_DETAILS:
            result.explained.append(f"duplicate (allowed): {described}")
    else:
        result.note(f"DUPLICATE ({', '.join(duplicate.problems())}): {described}")


def _missing(result: Audit, settled: bool, what: str) -> None:
    """A committed change with no delivery: lost if the system settled, else merely not delivered yet."""
    if settled:
        result.lost += 1
        result.note(f"LOST {what}")
    else:
        result.undelivered += 1
        result.note(f"UNDELIVERED when the run stopped waiting (not settled, so not known lost) {what}")


def _check_state(rows: dict[str, dict[str, Any]], stream: list[StreamEvent], result: Audit) -> int:
    """Todos whose database row disagrees with their last event (half-written changes)."""
    last: dict[str, StreamEvent] = {}
    for stored in stream:
        last[stored.payload["id"]] = stored
    bad = 0
    for todo_id in sorted(set(last) | set(rows)):
        event, row = last.get(todo_id), rows.get(todo_id)
        if event is None:
            problem = "in the database without any event"
        elif event.change is Change.DELETED:
            problem = "deleted in the stream, still in the database" if row is not None else ""
        elif row is None:
            problem = f"gone from the database, last event {event.change.value}"
        else:
            problem = "" if row == event.payload else f"row {row} != last event {event.payload}"
        if problem:
            bad += 1
            result.note(f"HALF-WRITTEN {todo_id}: {problem}")
    return bad


def _check_order(stream: list[StreamEvent], commit_order: Mapping[str, list[Key]], result: Audit) -> int:
    """Events out of their todo's commit order in the stream: a created that is not the todo's first event, an
    update after one committed later, anything after the todo's deleted. An event stored twice is judged by
    its first copy (the second is a stream duplicate)."""
    rank = {event_key: n for keys in commit_order.values() for n, event_key in enumerate(keys)}
    by_todo: dict[str, list[StreamEvent]] = defaultdict(list)
    for event in stream:
        by_todo[str(event.payload.get("id"))].append(event)
    bad = 0
    for todo_id, events in by_todo.items():
        for event, problem in _out_of_order(events, rank):
            bad += 1
            result.note(f"OUT OF ORDER {todo_id}: {event.change.value} at seq {event.seq} {problem}")
    return bad


def _out_of_order(events: list[StreamEvent], rank: Mapping[Key, int]) -> list[tuple[StreamEvent, str]]:
    """One todo's events (stream order) that break its commit order, each with what is wrong."""
    found = []
    seen: set[Key] = set()
    latest: StreamEvent | None = None  # the event of the latest committed change seen so far
    deleted: StreamEvent | None = None
    for event in events:
        if event.key in seen:
            continue
        position = rank.get(event.key)
        if deleted is not None:
            found.append((event, f"after its deletion (seq {deleted.seq})"))
        elif event.change is Change.CREATED and seen:
            found.append((event, f"created after {len(seen)} other events of it"))
        elif position is not None and latest is not None and position < rank[latest.key]:
            found.append((event, f"committed before the {latest.change.value} at seq {latest.seq}, stored after it"))
        seen.add(event.key)
        if position is not None and (latest is None or position > rank[latest.key]):
            latest = event
        if event.change is Change.DELETED and deleted is None:
            deleted = event
    return found
