"""Telegram messages for events: a line naming the change, then the payload as escaped JSON.

`render_fitting` renders as many of a chat's queued events as fit one message (one as is, several
under a summary line); `parse_message` is the inverse. Telegram counts its 4096-character limit after
entity parsing, in UTF-16 code units, so lengths here are measured that way on the unescaped text.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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


class MalformedEventError(ValueError):
    """The event cannot be turned into a message, now or ever: a poison message."""


@dataclass(frozen=True)
class Event:
    """One todo change as the notifier sends it."""

    change: Change
    payload: dict[str, Any]
    may_repeat: bool = False

    @classmethod
    def from_message(cls, subject: str, data: bytes) -> Event:
        try:
            change = Change.from_subject(subject)
            payload = json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:
            raise MalformedEventError(f"malformed event on {subject}: {error}") from error
        if not isinstance(payload, dict):
            raise MalformedEventError(f"malformed event on {subject}: payload is not a JSON object")
        return cls(change, payload)


def telegram_length(text_html: str) -> int:
    """Length Telegram checks against 4096: the text after entity parsing, in UTF-16 code units."""
    visible = html.unescape(_TAG.sub("", text_html))
    return len(visible.encode("utf-16-le")) // 2


def fits(text_html: str, budget: int = MAX_LENGTH) -> bool:
    # cheap for the usual short message: parsing only shortens, and a code point is at most 2 units
    return 2 * len(text_html) <= budget or telegram_length(text_html) <= budget


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _block(raw_json: str) -> str:
    return f"{_OPEN}{html.escape(raw_json, quote=False)}{_CLOSE}"


def render_event(event: Event, budget: int = MAX_LENGTH) -> str:
    """One event in at most `budget` characters: indented JSON, else compact, else truncated with a note."""
    headline = HEADLINES[event.change] + (f"\n{MAY_REPEAT_NOTE}" if event.may_repeat else "")
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


def render_fitting(events: Sequence[Event], limit: int) -> tuple[int, str]:
    """The longest run of events from the start that fits one message (at least 1, at most `limit`).

    One event is rendered as is; several share the message under a summary line.
    """
    blocks = [render_event(events[0])]
    count, text = 1, blocks[0]
    for event in events[1 : max(1, limit)]:
        blocks.append(render_event(event))
        candidate = html.escape(summary(list(events[: len(blocks)]))) + "\n\n" + "\n\n".join(blocks)
        if not fits(candidate):
            break
        count, text = len(blocks), candidate
    return count, text


def parse_message(text_html: str) -> list[dict[str, Any]]:
    """The payloads carried by a message, in order (the inverse of render_events)."""
    return [json.loads(html.unescape(block)) for block in _BLOCK.findall(text_html)]
