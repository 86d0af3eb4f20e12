"""notifier.sent_log against a real JetStream: a first delivery's mark is also its lookup."""

from __future__ import annotations

import uuid

from nats.js import JetStreamContext

from notifier.sent_log import Record, SentLog
from streams import subjects


async def sent_log(js: JetStreamContext) -> SentLog:
    return SentLog(await js.key_value(subjects.SENT_BUCKET), js)


async def test_a_first_mark_is_written_where_no_record_exists(js: JetStreamContext) -> None:
    log, event_id = await sent_log(js), str(uuid.uuid4())
    assert await log.sending([event_id], 2.0, first=[event_id]) == set()
    assert await log.lookup(event_id) is Record.SENDING


async def test_a_first_mark_leaves_an_existing_record_alone_and_says_so(js: JetStreamContext) -> None:
    """A consumer made anew replays events already sent, with a delivery count of 1: the record stays `sent`
    and the caller learns it must look the event up, in the round trip the mark costs anyway."""
    log = await sent_log(js)
    sent, lost, new = (str(uuid.uuid4()) for _ in range(3))
    await log.sent([sent])
    log.lost([lost])
    await log.sending([lost], 2.0)  # a mark after the lost answer: chained, lands after it
    assert await log.sending([sent, lost, new], 2.0, first=[sent, lost, new]) == {sent, lost}
    assert [await log.lookup(event_id) for event_id in (sent, lost, new)] == [
        Record.SENT,
        Record.SENDING,
        Record.SENDING,
    ]


async def test_a_plain_mark_overwrites_what_the_caller_has_read(js: JetStreamContext) -> None:
    log, event_id = await sent_log(js), str(uuid.uuid4())
    log.lost([event_id])
    assert await log.sending([event_id], 2.0) == set()
    assert await log.lookup(event_id) is Record.SENDING


async def test_a_mark_that_cannot_be_stored_is_reported(js: JetStreamContext) -> None:
    log, event_id = await sent_log(js), str(uuid.uuid4())
    await js.delete_key_value(subjects.SENT_BUCKET)
    assert await log.sending([event_id], 1.0, first=[event_id]) is None
