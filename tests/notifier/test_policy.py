"""The failure policy table: every Telegram error maps to one decision."""

from datetime import timedelta

import pytest
from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, NetworkError, RetryAfter, TimedOut

from notifier.formatting import MalformedEventError
from notifier.policy import Decision, decide, retry_delay
from streams.topology import MAX_DELIVER


@pytest.mark.parametrize(("error", "decision"), [
    (RetryAfter(timedelta(seconds=3)), Decision.WAIT),
    (ChatMigrated(-100777), Decision.MIGRATE),
    (Forbidden("Forbidden: bot was kicked from the group chat"), Decision.PAUSE),
    (InvalidToken("Unauthorized"), Decision.PAUSE),
    (BadRequest("Chat not found"), Decision.PAUSE),
    (BadRequest("Not enough rights to send text messages to the chat"), Decision.PAUSE),
    # a forum topic closed or deleted under TELEGRAM_THREAD_ID: the bot cannot post there at all
    (BadRequest("Message thread not found"), Decision.PAUSE),
    (BadRequest("Topic_closed"), Decision.PAUSE),
    (BadRequest("Topic_deleted"), Decision.PAUSE),
    (BadRequest("Can't parse entities: unexpected end tag"), Decision.DEAD_LETTER),
    (BadRequest("Message is too long"), Decision.DEAD_LETTER),
    (MalformedEventError("payload is not JSON"), Decision.DEAD_LETTER),
    (TimedOut("Timed out"), Decision.RETRY),
    (NetworkError("Internal Server Error"), Decision.RETRY),
    (OSError("connection reset"), Decision.RETRY),
])  # fmt: skip
def test_table(error, decision):
    assert decide(error, 1).decision is decision


def test_retry_after_and_migration_carry_their_values():
    assert decide(RetryAfter(timedelta(seconds=3)), 1).delay == 3
    assert decide(ChatMigrated(-100777), 1).new_chat_id == -100777


def test_retry_delay_grows_with_deliveries_and_is_capped():
    delays = [decide(NetworkError("Bad Gateway"), n).delay for n in range(1, 12)]
    assert delays[:4] == [0.5, 1, 2, 4]
    assert delays == sorted(delays)
    assert retry_delay(29) == 60


def test_last_delivery_dead_letters_with_the_reason():
    outcome = decide(NetworkError("Bad Gateway"), MAX_DELIVER)
    assert outcome.decision is Decision.DEAD_LETTER
    assert "Bad Gateway" in outcome.reason
