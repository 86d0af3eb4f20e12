"""The failure policy: what the notifier does with an event whose send failed. One table, one place.

| error                                              | decision                                            |
|----------------------------------------------------|-----------------------------------------------------|
| RetryAfter                                         | WAIT: no request to the chat before retry_after,    |
|                                                    | from any replica (shared pause), then resend        |
|                                                    | (held meanwhile; unpaced path: nak when over 30 s)  |
| ChatMigrated                                       | MIGRATE: remember new_chat_id for all, resend now   |
| Forbidden, InvalidToken, BadRequest "chat not ..." | PAUSE: bot-level; stop consuming, not ready, probe  |
| BadRequest (anything else), message of 2+ events   | SPLIT: send them one by one; only the bad one dies  |
| BadRequest (anything else)                         | DEAD_LETTER: this message can never be sent         |
| MalformedEventError                                | DEAD_LETTER: poison payload                         |
| TimedOut, NetworkError (5xx), anything else        | RETRY: nak with a delay growing with deliveries     |
| RETRY on the consumer's last delivery              | DEAD_LETTER, with the last error as the reason      |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, RetryAfter

from notifier.formatting import MalformedEventError
from streams.topology import MAX_DELIVER

MAX_RETRY_DELAY = 60.0
# BadRequest descriptions that mean the bot cannot post to the chat at all, whatever the message
BOT_LEVEL_BAD_REQUESTS = (
    "chat not found",
    "bot was kicked",
    "bot was blocked",
    "user is deactivated",
    "need administrator rights",
    "not enough rights",
    "have no rights to send",
    "chat_write_forbidden",
    "group chat was deactivated",
)


class Decision(StrEnum):
    WAIT = "wait"
    MIGRATE = "migrate"
    PAUSE = "pause"
    SPLIT = "split"
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    reason: str
    delay: float = 0.0
    new_chat_id: int | None = None


def retry_delay(deliveries: int) -> float:
    """0.5 s, 1 s, 2 s ... capped at a minute, keyed on how often JetStream delivered the event."""
    return min(MAX_RETRY_DELAY, 0.5 * 2.0 ** max(0, deliveries - 1))


def _seconds(value: float | timedelta) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def decide(  # noqa: PLR0911 (one return per row)
    error: BaseException, deliveries: int, max_deliver: int = MAX_DELIVER, events: int = 1
) -> Outcome:
    """Map a failed send of a message carrying `events` events (or an unsendable event) to what to do."""
    reason = f"{type(error).__name__}: {error}"
    match error:
        case RetryAfter():
            return Outcome(Decision.WAIT, reason, delay=_seconds(error.retry_after))
        case ChatMigrated():
            return Outcome(Decision.MIGRATE, reason, new_chat_id=error.new_chat_id)
        case Forbidden() | InvalidToken():
            return Outcome(Decision.PAUSE, reason)
        case BadRequest() if any(text in error.message.lower() for text in BOT_LEVEL_BAD_REQUESTS):
            return Outcome(Decision.PAUSE, reason)
        case BadRequest() if events > 1:
            return Outcome(Decision.SPLIT, reason)
        case BadRequest() | MalformedEventError():
            return Outcome(Decision.DEAD_LETTER, reason)
        case _:  # TimedOut, NetworkError (5xx, connection errors) and anything unforeseen
            if max_deliver > 0 and deliveries >= max_deliver:
                return Outcome(Decision.DEAD_LETTER, f"gave up after {deliveries} deliveries: {reason}")
            return Outcome(Decision.RETRY, reason, delay=retry_delay(deliveries))
