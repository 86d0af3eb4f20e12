"""After a scenario: what was committed, what the stream holds, what reached Telegram; what is missing or doubled.

An event is identified by its content: (change, payload), the payload being the todo JSON the API
answered (every change has a unique task text and every update a new updatedAt, so no two changes
share a key). Unknown outcomes (answer lost) are settled from the final state of the database.

A duplicate (a copy of an event beyond the first) is *flagged* when its block's headline carries the
notifier's "may repeat" line (notifier.formatting.MAY_REPEAT_NOTE): an earlier send's answer was lost,
and the chat is told so. That is the one kind of duplicate the notifier accepts; any other is counted
apart, as explained when a fault happened around its first copy.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from notifier.formatting import MAY_REPEAT_NOTE
from streams import subjects
from streams.subjects import Change
from tests.chaos.load import Attempt, Ledger, Outcome
from tests.chaos.system import Fault
from tests.fake_telegram import Sent

Key = tuple[str, str]
_BLOCK = re.compile(r'<pre><code class="language-json">(.*?)</code></pre>', re.DOTALL)
_CHANGE = re.compile(r"\b(created|updated|deleted)\b")
MAX_DETAILS = 10


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


async def read_stream(js: JetStreamContext, stream: str = subjects.STREAM) -> list[StreamEvent]:
    info = await js.stream_info(stream)
    events = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
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
    # copies of an event beyond the first (beyond the stream's, when the stream holds it twice), by cause:
    duplicates: int = 0
    # the copy says so: its headline carries MAY_REPEAT_NOTE (an earlier send's answer was lost)
    flagged_duplicates: int = 0
    # not flagged, but a fault (or a slow answer of the fake) happened around the first copy
    explained_duplicates: int = 0
    stream_duplicates: int = 0
    phantoms: int = 0
    inconsistent: int = 0
    details: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.details) < MAX_DETAILS:
            self.details.append(text)

    @property
    def unflagged_duplicates(self) -> int:
        """Copies the chat shows with no word that they may repeat an earlier message."""
        return self.duplicates - self.flagged_duplicates

    @property
    def unexplained_duplicates(self) -> int:
        """Unflagged copies no fault explains."""
        return self.unflagged_duplicates - self.explained_duplicates


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


def audit(  # noqa: C901, PLR0912
    ledger: Ledger,
    *,
    rows: dict[str, dict[str, Any]],
    stream: list[StreamEvent],
    sent: list[Sent],
    faults: list[Fault],
    slow_ids: set[int],
    settled: bool = True,
) -> Audit:
    """Compare the ledger with the stream and the messages Telegram accepted.

    Call it once the system settled (outbox empty, every event in the stream acked). If it did not
    (`settled` False), a committed change not delivered yet may still be on its way: it is counted
    as undelivered, never as lost.
    """
    result = Audit(in_stream=len(stream), messages=len(sent))
    expected: set[Key] = set()
    for attempt in ledger.attempts:
        if attempt.outcome is Outcome.COMMITTED:
            assert attempt.answer is not None
            expected.add(key(attempt.change, attempt.answer))
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
    for event_key, found in copies.items():
        if event_key not in expected and event_key not in in_stream:
            result.phantoms += 1
            result.note(f"PHANTOM delivered (no committed change): {event_key}")
        # an event the stream holds twice (counted in stream_duplicates) is rightly delivered twice:
        # only copies beyond the stream's are the notifier's duplicates
        extra = found[max(1, in_stream[event_key]) :]
        if not extra:
            continue
        result.duplicates += len(extra)
        flagged = sum(1 for delivery in extra if delivery.flagged)
        result.flagged_duplicates += flagged
        if flagged == len(extra):
            continue
        first = found[0].message
        if first.message_id in slow_ids or any(
            f.explains_duplicates and f.start - 2 <= first.at <= f.end + 3 for f in faults
        ):
            result.explained_duplicates += len(extra) - flagged
            cause = "near a fault"
        else:
            cause = "with no fault near it"
        shown = ", ".join(
            f"#{d.message.message_id}{' (flagged)' if d.flagged else ''}"
            + (f" {d.message.at - faults[-1].end:+.1f}s after the last fault ended" if faults else "")
            for d in found
        )
        result.note(f"UNFLAGGED DUPLICATE x{len(found)} {cause} (messages {shown}): {event_key}")
    result.inconsistent = _check_state(rows, stream, result)
    return result


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
