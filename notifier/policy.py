"""The failure policy: what the notifier does with a message Telegram did not accept. One table, one place.

`decide` is the table; `notifier.pipeline.Pipeline._enact` is the one place that carries its decisions out,
for every path (paced or not, JetStream or core mode). HOLD means the events stay with the replica
(kept alive with in_progress()): no delivery is spent, so a held event can never become a dead letter.

| the send failed with                               | decision                                               |
|----------------------------------------------------|--------------------------------------------------------|
| RetryAfter                                         | WAIT: hold; no request to the chat, from any replica,  |
|                                                    | before retry_after (shared pause), then send again     |
| ChatMigrated                                       | MIGRATE: follow new_chat_id (shared), send again now   |
| Forbidden, InvalidToken, BadRequest "chat not      | PAUSE: hold; the bot cannot post at all: stop fetching,|
| found", "not enough rights", kicked, blocked, the  | not ready, probe until the bot may post again (a topic:|
| forum topic closed or deleted ...                  | a send after each probe finds whether it is back)      |
| BadRequest (anything else), message of 2+ events   | SPLIT: hold; send them one per message                 |
| BadRequest (anything else), MalformedEventError    | DEAD_LETTER: this message can never be sent            |
| TimedOut, NetworkError (5xx, connection), other:   |                                                        |
|   OUTAGE_AFTER transient failures in a row         | OUTAGE: hold; like PAUSE (stop fetching, probe with    |
|   (after an outage's probe: 1, until a success)    | backoff), a long outage spends no deliveries           |
|   on the consumer's last delivery                  | DEAD_LETTER, with the last error as the reason         |
|   otherwise                                        | RETRY: nak with a delay growing with the deliveries    |
| (stopping) an event still held                     | RELEASE: nak at once, another replica sends it          |
|   on its last delivery                             | DEAD_LETTER "released on its last delivery" (a nak     |
|                                                    | would end its deliveries without a reason)             |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, RetryAfter

from notifier.formatting import MalformedEventError
from notifier.transport import TransportError
from streams.topology import MAX_DELIVER

MAX_RETRY_DELAY = 60.0
# this many transient failures in a row (no success in between) mean Telegram or the network is down
OUTAGE_AFTER = 3
# BadRequest descriptions that mean the bot cannot post to the chat at all, whatever the message
BOT_LEVEL_BAD_REQUESTS = (
    "chat not found",
    "bot was kicked",
    "bot was blocked",
    "bot is not a member",
    "user is deactivated",
    "need administrator rights",
    "not enough rights",
    "have no rights to send",
    "chat_write_forbidden",
    "group chat was deactivated",
    "topic_closed",
    "topic_deleted",
    "message thread not found",
)


class Decision(StrEnum):
    WAIT = "wait"
    MIGRATE = "migrate"
    PAUSE = "pause"
    OUTAGE = "outage"
    SPLIT = "split"
    DEAD_LETTER = "dead_letter"
    RETRY = "retry"
    RELEASE = "release"  # not a failure: stopping, the event goes back to the stream at once (nak)


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    reason: str
    delay: float = 0.0
    new_chat_id: int | None = None


def retry_delay(deliveries: int, cap: float = MAX_RETRY_DELAY) -> float:
    """0.5 s, 1 s, 2 s ... capped (a minute by default), keyed on how often JetStream delivered the event."""
    return min(cap, 0.5 * 2.0 ** max(0, deliveries - 1))


def _seconds(value: float | timedelta) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def is_transient(error: BaseException) -> bool:
    """Whether the failure says nothing about the message or the bot (5xx, timeouts, the network)."""
    return not isinstance(
        error, RetryAfter | ChatMigrated | Forbidden | InvalidToken | BadRequest | MalformedEventError
    )


def answer_lost(error: BaseException) -> bool:
    """Whether Telegram may have accepted the message although the send failed.

    Only Telegram's own refusals (400, 401, 403, 429, a migration) say for sure that it did not; a 5xx may
    come from a gateway after the Bot API took the message, and a timeout or a broken connection after
    the request left says nothing. A request that never left (connection refused) was not delivered.
    """
    if isinstance(error, TransportError):
        return error.maybe_delivered
    return is_transient(error)


def decide(  # noqa: PLR0911, PLR0913 (one return per row; the context of a failure)
    error: BaseException,
    deliveries: int,
    *,
    max_deliver: int = MAX_DELIVER,
    events: int = 1,
    transient_in_a_row: int = 0,
    max_retry_delay: float = MAX_RETRY_DELAY,
) -> Outcome:
    """Map a failed send of a message carrying `events` events (or an unsendable event) to what to do.

    `transient_in_a_row` counts the transient failures this replica met in a row, this one included.
    """
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
            if transient_in_a_row >= OUTAGE_AFTER:
                return Outcome(Decision.OUTAGE, f"{transient_in_a_row} failures in a row, last {reason}")
            if max_deliver > 0 and deliveries >= max_deliver:
                return Outcome(Decision.DEAD_LETTER, f"gave up after {deliveries} deliveries: {reason}")
            return Outcome(Decision.RETRY, reason, delay=retry_delay(deliveries, max_retry_delay))


def released_on_last_delivery(deliveries: int, max_deliver: int) -> bool:
    """A release (nak) now would end the event's deliveries without a reason: dead-letter it with one."""
    return max_deliver > 0 and deliveries >= max_deliver
