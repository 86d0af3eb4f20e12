"""Telegram messages for events: a line naming the change, then the payload as escaped JSON.

Under the headline an event may carry two notes: it may repeat a message whose answer was lost, and it
is late (sent more than NOTIFIER_LATE_AFTER after its change, with the time of the change).
`render_fitting` renders as many of a chat's queued events as fit one message (one as is, several
under a summary line); `parse_message` is the inverse. Telegram counts its 4096-character limit after
entity parsing, in UTF-16 code units, so lengths here are measured that way on the unescaped text.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from streams.subjects import Change

MAX_LENGTH = 4096
HEADLINES = {
    Change.CREATED: "📝 Todo created",
    Change.UPDATED: "✏️ Todo updated",
    Change.DELETED: "🗑 Todo deleted",
}
_OPEN = '<pre><code class="language-json">'
_CLOSE = "</code></pre>"
_BLOCK = re.compile(re.escape(_OPEN) + r"(.*?)" + re.escape(_CLOSE), re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
TRUNCATED_NOTE = "(payload too long for Telegram: truncated)"
# an event whose earlier send got no answer (a replica died, a timeout): Telegram may have shown it already
MAY_REPEAT_NOTE = "↻ may repeat a message whose answer was lost"
LATE_MARK = "⏰"  # starts the line of an event sent late: "⏰ 3 h 2 min late: changed 2026-11-28 23:15:54 UTC"


class MalformedEventError(ValueError):
    """The event cannot be turned into a message, now or ever: a poison message."""


@dataclass(frozen=True)
class Event:
    """One todo change as the notifier sends it."""

    change: Change
    payload: dict[str, Any]
    may_repeat: bool = False
    changed_at: float | None = None  # when the change happened (Unix time), for the "late" line

    @classmethod
    def from_message(cls, subject: str, data: bytes, stored_at: float | None = None) -> Event:
        """The event of a message; `stored_at` is when the stream stored it (Unix time)."""
        try:
            change = Change.from_subject(subject)
            payload = json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:
            raise MalformedEventError(f"malformed event on {subject}: {error}") from error
        if not isinstance(payload, dict):
            raise MalformedEventError(f"malformed event on {subject}: payload is not a JSON object")
        return cls(change, payload, changed_at=change_time(change, payload, stored_at))

    @property
    def todo_id(self) -> str | None:
        found = self.payload.get("id")
        return found if isinstance(found, str) and found else None


def change_time(change: Change, payload: dict[str, Any], stored_at: float | None) -> float | None:
    """When the change happened. A creation or an update: the todo's `updatedAt`, which the API sets in
    the transaction that makes the change (so an event held up in the outbox, a NATS outage, counts as
    late too). A deletion carries the todo as it was before, whose `updatedAt` may be days older than
    the deletion: its time is when the stream stored it (the outbox relays within moments)."""
    stamp = payload.get("updatedAt") if change is not Change.DELETED else None
    if isinstance(stamp, str):
        try:
            moment = datetime.fromisoformat(stamp)
            return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
        except (ValueError, OverflowError, OSError):  # not a time, or one out of range ("0001-01-01...+14:00")
            return stored_at
    return stored_at


def _span(seconds: float) -> str:
    """3 h 2 min, 12 min, 45 s, 2 d 5 h."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes = whole // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def late_note(changed_at: float, now: float) -> str:
    """E.g. "⏰ 3 h 2 min late: changed 2026-11-28 23:15:54 UTC"."""
    try:
        when = datetime.fromtimestamp(changed_at, UTC).strftime("%Y-%m-%d %H:%M:%S") + " UTC"
    except (ValueError, OverflowError, OSError):
        when = "at an unreadable time"
    return f"{LATE_MARK} {_span(now - changed_at)} late: changed {when}"


def _notes(event: Event, late_after: float, now: float | None) -> list[str]:
    notes = [MAY_REPEAT_NOTE] if event.may_repeat else []
    if late_after > 0 and event.changed_at is not None:
        moment = time.time() if now is None else now
        if moment - event.changed_at > late_after:
            notes.append(late_note(event.changed_at, moment))
    return notes


def visible_text(text_html: str) -> str:
    """The message as a person reads it in Telegram: tags gone, entities unescaped."""
    return html.unescape(_TAG.sub("", text_html))


def telegram_length(text_html: str) -> int:
    """Length Telegram checks against 4096: the text after entity parsing, in UTF-16 code units."""
    return len(visible_text(text_html).encode("utf-16-le")) // 2


def fits(text_html: str, budget: int = MAX_LENGTH) -> bool:
    # cheap for the usual short message: parsing only shortens, and a code point is at most 2 units
    return 2 * len(text_html) <= budget or telegram_length(text_html) <= budget


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _block(raw_json: str) -> str:
    return f"{_OPEN}{html.escape(raw_json, quote=False)}{_CLOSE}"


def render_event(event: Event, budget: int = MAX_LENGTH, *, late_after: float = 0.0, now: float | None = None) -> str:
    """One event in at most `budget` characters: indented JSON, else compact, else truncated with a note.

    With `late_after` > 0, an event whose change is older than that (at `now`, Unix time) says when it happened.
    """
    headline = "\n".join([HEADLINES[event.change], *_notes(event, late_after, now)])
    for raw in (
        json.dumps(event.payload, indent=2, ensure_ascii=False),
        json.dumps(event.payload, separators=(",", ":"), ensure_ascii=False),
    ):
        text = f"{html.escape(headline)}\n{_block(raw)}"
        if fits(text, budget):
            return text
    # cut the raw JSON (never the escaped form, so no entity or tag is ever broken)
    room = budget - _utf16_len(f"{headline} {TRUNCATED_NOTE}\n") - 1
    kept, used = [], 0
    for char in raw:
        used += _utf16_len(char)
        if used > room:
            break
        kept.append(char)
    return f"{html.escape(headline)} {html.escape(TRUNCATED_NOTE)}\n{_block(''.join(kept) + '…')}"


def summary(events: list[Event]) -> str:
    """E.g. "3 changes: 2 created, 1 deleted"."""
    counts = Counter(event.change for event in events)
    parts = [f"{counts[change]} {change.value}" for change in Change if counts[change]]
    return f"{len(events)} changes: {', '.join(parts)}"


def render_fitting(
    events: Sequence[Event], limit: int, *, late_after: float = 0.0, now: float | None = None
) -> tuple[int, str]:
    """The longest run of events from the start that fits one message (at least 1, at most `limit`).

    One event is rendered as is; several share the message under a summary line.
    """
    moment = time.time() if now is None else now
    blocks = [render_event(events[0], late_after=late_after, now=moment)]
    count, text = 1, blocks[0]
    for event in events[1 : max(1, limit)]:
        blocks.append(render_event(event, late_after=late_after, now=moment))
        candidate = html.escape(summary(list(events[: len(blocks)]))) + "\n\n" + "\n\n".join(blocks)
        if not fits(candidate):
            break
        count, text = len(blocks), candidate
    return count, text


def parse_message(text_html: str) -> list[dict[str, Any]]:
    """The payloads carried by a message, in order (the inverse of render_events)."""
    return [json.loads(html.unescape(block)) for block in _BLOCK.findall(text_html)]
