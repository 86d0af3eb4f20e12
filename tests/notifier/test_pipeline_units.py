"""The pipeline with stand-ins for NATS and Telegram: races too narrow to hit reliably from outside."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import KeyNotFoundError
from telegram.error import BadRequest, NetworkError, TimedOut

from notifier import replica
from notifier.chats import ChatGate, ChatRoute
from notifier.metrics import Metrics
from notifier.pacing import Pacer
from notifier.pipeline import Pipeline, Shape, event_id_of
from notifier.sent_log import Record
from streams import subjects

ACK_WAIT = 1.0  # lease: 0.8 s


class Msg:
    subject = "todos.created"
    reply = "reply"

    def __init__(self, event_id: str) -> None:
        self.headers = {subjects.MSG_ID_HEADER: event_id}
        self.data = json.dumps({"id": event_id, "task": "x"}).encode()

    @property
    def metadata(self) -> Any:
        raise AttributeError


class Source:
    connected, epoch, ready, max_deliver, ack_wait = True, 0, True, 30, ACK_WAIT

    def __init__(self, *event_ids: str) -> None:
        self.waiting = [Msg(event_id) for event_id in event_ids]
        self.calls: list[str] = []
        self.delivered_since = time.monotonic()

    async def fetch(self, batch: int) -> list[Msg]:
        if not self.waiting:
            await asyncio.sleep(0.05)
            return []
        self.delivered_since = time.monotonic()
        taken, self.waiting = self.waiting[:batch], self.waiting[batch:]
        return taken

    async def stop_fetching(self) -> list[Msg]:
        return []

    async def ack(self, msg: Msg) -> None:
        self.calls.append("ack")

    async def nak(self, msg: Msg, delay: float) -> None:
        self.calls.append("nak")

    async def term(self, msg: Msg, reason: str) -> None:
        self.calls.append("term")

    async def in_progress(self, msg: Msg) -> None:
        self.calls.append("in_progress")

    async def wait_connected(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class SentLog:
    def __init__(self, record: Record = Record.NOT_SENT, freeze: float = 0.0) -> None:
        self.record, self.freeze = record, freeze
        self.writes: list[tuple[str, str]] = []
        self.looked_up: list[str] = []

    async def lookup_all(self, event_ids: Any) -> list[Record]:
        ids = list(event_ids)
        self.looked_up += ids
        if self.freeze:
            time.sleep(self.freeze)
            self.freeze = 0.0
        return [self.record for _ in ids]

    async def sending(self, event_ids: Any, patience: float, *, first: Any = ()) -> set[str]:
        # as todos_sent does: a first delivery's mark is written only where no record exists
        recorded = {event_id for event_id in first if self.record is not Record.NOT_SENT}
        self.writes += [("sending", event_id) for event_id in event_ids if event_id not in recorded]
        return recorded

    def lost(self, event_ids: Any) -> None:
        self.writes += [("lost", event_id) for event_id in event_ids]

    def refused(self, event_ids: Any) -> None:
        self.writes += [("refused", event_id) for event_id in event_ids]

    async def sent(self, event_ids: Any) -> None:
        self.writes += [("sent", event_id) for event_id in event_ids]


class Sink:
    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.texts: list[str] = []

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, chat_id: Any, text: str, *, reply_to: int | None = None) -> int | None:
        self.texts.append(text)
        if self.failures:
            raise self.failures.pop(0)
        return len(self.texts)

    async def probe(self, chat_id: Any) -> None: ...


async def run_for(
    seconds: float, source: Source, sink: Sink, sent_log: SentLog, then: Callable[[], None] | None = None
) -> Pipeline:
    gate = ChatGate()
    shape = Shape(paced=False, senders=1, max_events=1, capacity=4, fetch_batch=4, probe_interval=1.0,
                  max_retry_delay=1.0)  # fmt: skip
    pipeline = Pipeline(source=source, sink=sink, route=ChatRoute(-100123, None), gate=gate,  # type: ignore[arg-type]
                        pacer=Pacer(None, gate, None, None), sent_log=sent_log, metrics=Metrics(), shape=shape)  # type: ignore[arg-type]  # fmt: skip
    tasks = [asyncio.create_task(loop) for loop in pipeline.tasks().values()]
    await asyncio.sleep(seconds)
    if then is not None:
        then()
        await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return pipeline


async def test_a_lease_that_lapses_during_the_lookup_is_let_go_not_sent():
    """Frozen (2 x the ack wait) while checking todos_sent: JetStream may have handed the event to another
    replica, so it is neither sent, nor acked, nor nak'ed, nor kept alive: let go."""
    source, sink, sent_log = Source("e1"), Sink(), SentLog(freeze=2.0)
    pipeline = await run_for(0.5, source, sink, sent_log)
    assert sink.texts == []
    assert [call for call in source.calls if call != "in_progress"] == []
    assert pipeline.held == 0


async def test_a_refusal_does_not_erase_an_earlier_lost_answer():
    """An event marked `sending` by an attempt whose answer was lost, refused now (400): it keeps its mark,
    so a later copy (a replay) still says it may repeat."""
    source, sink, sent_log = Source("e1"), Sink(BadRequest("Message is too long")), SentLog(Record.MAYBE_SENT)
    await run_for(0.3, source, sink, sent_log)
    assert "may repeat" in sink.texts[0]
    assert ("refused", "e1") not in sent_log.writes
    assert source.calls.count("term") == 1


async def test_a_plain_refusal_is_recorded_and_a_lost_answer_is_not():
    """Telegram's own refusal (400) says it was not delivered; a timeout or a 5xx (a gateway may answer
    after the Bot API took it) says nothing: the mark `sending` stays, and a resend says it may repeat."""
    failures = BadRequest("Message is too long"), TimedOut(), NetworkError("Bad Gateway")
    source, sink, sent_log = Source("e1", "e2", "e3"), Sink(*failures), SentLog()
    await run_for(0.3, source, sink, sent_log)
    assert ("refused", "e1") in sent_log.writes
    assert ("refused", "e2") not in sent_log.writes
    assert ("refused", "e3") not in sent_log.writes
    assert [write for write in sent_log.writes if write[0] == "sending"] == [("sending", e) for e in ("e1", "e2", "e3")]


async def test_an_accepted_event_is_recorded_then_acked():
    source, sink, sent_log = Source("e1"), Sink(), SentLog()
    pipeline = await run_for(0.3, source, sink, sent_log)
    assert sent_log.writes == [("sending", "e1"), ("sent", "e1")]
    assert source.calls == ["ack"]
    assert pipeline.held == 0


async def test_an_event_sent_before_is_acked_and_a_later_delivery_of_it_is_not_stuck():
    """A redelivery already in todos_sent is acked unsent; a later copy of the same event (a replay
    carrying its id) is looked up and settled too, not left waiting behind the first."""
    source, sink, sent_log = Source("e1"), Sink(), SentLog(Record.SENT)
    pipeline = await run_for(0.2, source, sink, sent_log, then=lambda: source.waiting.append(Msg("e1")))
    assert sink.texts == []
    assert source.calls == ["ack", "ack"]
    assert pipeline.held == 0


def test_an_event_without_nats_msg_id_is_known_by_its_place_and_time_in_the_stream():
    """Published without Nats-Msg-Id (say with `nats pub`): its id holds the stream sequence and the time it
    was stored, so a stream deleted and created again (numbering anew) cannot match an old record."""
    from nats.aio.msg import Msg as NatsMsg  # noqa: PLC0415

    def delivered(seq: int, stored_ns: int) -> NatsMsg:
        reply = f"$JS.ACK.TODOS.todos_broadcasters.1.{seq}.{seq}.{stored_ns}.0"
        return NatsMsg(_client=None, subject="todos.created", reply=reply, data=b"{}", headers=None)  # type: ignore[arg-type]

    first, again = (
        event_id_of(delivered(7, 1_700_000_000_000_000_000)),
        event_id_of(delivered(7, 1_800_000_000_000_000_000)),
    )
    assert first.startswith("TODOS.7.")
    assert first != again
    assert event_id_of(delivered(7, 1_700_000_000_000_000_000)) == first  # the same delivery, the same id


async def test_a_first_delivery_is_marked_without_a_lookup_and_a_found_record_is_then_read():
    """A first delivery costs no lookup (its mark is written only where no record exists); when the mark finds
    a record, the event is looked up before it is sent, as a redelivery is."""
    source, sink, sent_log = Source("e1"), Sink(), SentLog()
    await run_for(0.3, source, sink, sent_log)
    assert (sent_log.looked_up, sent_log.writes, source.calls) == ([], [("sending", "e1"), ("sent", "e1")], ["ack"])
    source, sink, sent_log = Source("e1"), Sink(), SentLog(Record.SENT)
    await run_for(0.3, source, sink, sent_log)
    assert (sent_log.looked_up, sent_log.writes, sink.texts, source.calls) == (["e1"], [], [], ["ack"])


async def test_the_chat_route_is_read_again_while_a_new_bucket_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Right after bootstrap on a cluster, the state bucket may still be electing its leader and a read
    times out: the replica waits and reads again (it used to exit 1, and `just up --cluster` with it)."""
    monkeypatch.setattr(replica, "TOPOLOGY_RETRY", 0.01)
    answers: list[BaseException] = [NatsTimeoutError(), NatsTimeoutError(), KeyNotFoundError()]

    class Bucket:
        async def get(self, key: str) -> object:
            raise answers.pop(0)

    route = ChatRoute(-100, Bucket())  # type: ignore[arg-type]
    assert await replica._load_route(route)
    assert answers == [], "read until the bucket answered"
    assert route.current == -100
