"""Dead letters: events the notifier gave up on, listed from TODOS_DLQ and replayed into TODOS.

TODOS_DLQ holds the consumer's MAX_DELIVERIES and MSG_TERMINATED advisories. Each points at the
event by its sequence in TODOS, which still holds the event (until its 7-day max_age). A replay
republishes the event under a new Nats-Msg-Id (so the duplicate window does not swallow it) and
keeps the original event id in Todos-Event-Id, which the notifier de-duplicates on.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from streams import subjects

MAX_DELIVERIES_REASON = "max deliveries reached"


@dataclass(frozen=True)
class DeadLetter:
    """One dead event: where it sits in TODOS, what it held, and why it died."""

    dlq_seq: int
    stream_seq: int
    subject: str
    payload: bytes
    event_id: str | None
    deliveries: int
    reason: str
    time: datetime


def _parse_time(text: str | None, fallback: datetime) -> datetime:
    if not text:
        return fallback
    # nats-server writes nanoseconds; fromisoformat takes at most microseconds
    head, _, rest = text.rstrip("Z").partition(".")
    fraction = rest[:6]
    try:
        moment = datetime.fromisoformat(f"{head}.{fraction}" if fraction else head)
    except ValueError:
        return fallback
    return moment.replace(tzinfo=UTC)


async def _dead_letter(js: JetStreamContext, dlq_seq: int) -> DeadLetter | None:
    try:
        advisory_msg = await js.get_msg(subjects.DLQ_STREAM, dlq_seq)
    except NotFoundError:
        return None  # deleted: replayed already
    advisory = json.loads(advisory_msg.data or b"{}")
    stream_seq = int(advisory.get("stream_seq", 0))
    if advisory_msg.subject == subjects.TERMINATED_ADVISORY:
        reason = advisory.get("reason") or "terminated"
    else:
        reason = MAX_DELIVERIES_REASON
    stored = advisory_msg.time or datetime.now(UTC)
    subject, payload, event_id = "", b"", None
    try:
        original = await js.get_msg(subjects.STREAM, stream_seq)
    except NotFoundError:
        reason += " (the event is no longer in TODOS)"
    else:
        subject, payload = original.subject or "", original.data or b""
        headers = original.headers or {}
        event_id = headers.get(subjects.EVENT_ID_HEADER) or headers.get(subjects.MSG_ID_HEADER)
    return DeadLetter(
        dlq_seq=dlq_seq,
        stream_seq=stream_seq,
        subject=subject,
        payload=payload,
        event_id=event_id,
        deliveries=int(advisory.get("deliveries", 0)),
        reason=reason,
        time=_parse_time(advisory.get("timestamp"), stored),
    )


async def list_dead_letters(js: JetStreamContext) -> list[DeadLetter]:
    """Every dead letter not yet replayed, oldest first."""
    state = (await js.stream_info(subjects.DLQ_STREAM)).state
    if not state.messages:
        return []
    letters = []
    for dlq_seq in range(state.first_seq, state.last_seq + 1):
        letter = await _dead_letter(js, dlq_seq)
        if letter is not None:
            letters.append(letter)
    return letters


async def replay(js: JetStreamContext, dlq_seqs: list[int] | None) -> list[DeadLetter]:
    """Send dead letters (all when `dlq_seqs` is None) back through the notifier; return those replayed.

    Unknown sequences and letters whose event has left TODOS are skipped.
    """
    letters = await list_dead_letters(js)
    if dlq_seqs is not None:
        wanted = set(dlq_seqs)
        letters = [letter for letter in letters if letter.dlq_seq in wanted]
    replayed = []
    for letter in letters:
        if not letter.subject:
            continue
        headers = {
            subjects.MSG_ID_HEADER: str(uuid.uuid4()),
            subjects.REPLAY_OF_HEADER: str(letter.stream_seq),
        }
        if letter.event_id is not None:
            headers[subjects.EVENT_ID_HEADER] = letter.event_id
        await js.publish(letter.subject, letter.payload, headers=headers)
        await js.delete_msg(subjects.DLQ_STREAM, letter.dlq_seq)
        replayed.append(letter)
    return replayed
