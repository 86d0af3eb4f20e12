"""`python -m streams tail`: follow the events live, one line each, from an ordered ephemeral consumer.

An ordered consumer is JetStream's read-only cursor: push, no acks, in memory, deleted by the server
once nobody listens. It shares nothing with the durable `todos_broadcasters`, so tailing never takes an
event from a notifier nor moves its pending count or ack floor. nats-py recreates it from the last
sequence seen when a gap or a silence (missed heartbeats) shows it was lost, e.g. across a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any, TextIO

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from streams import subjects
from streams.connection import connect
from streams.payload import format_timestamp
from streams.permissions import STREAMS
from streams.settings import Settings

FOLLOWED = f"{subjects.SUBJECT_PREFIX}.>"
CONNECT_TIMEOUT = 3.0  # per server of NATS_URL, as the other commands
CLOSE_TIMEOUT = 2.0
# the server's "still here" to the ordered consumer; two missed ones make nats-py recreate it (a NATS restart
# loses it: in memory), so events resume within seconds of a reconnect rather than nats-py's 10-20 s
HEARTBEAT = 1.0


def event_line(msg: Msg) -> str:
    """`<stored at> <subject> <todo id> <task as a JSON string>`: one line whatever the task holds."""
    stored = format_timestamp(msg.metadata.timestamp) if msg.reply else "-"
    try:
        todo: Any = json.loads(msg.data)
    except ValueError:
        todo = None
    if not isinstance(todo, dict):
        return f"{stored} {msg.subject} - (not a todo: {len(msg.data)} bytes)"
    task = todo.get("task")
    shown = json.dumps(task, ensure_ascii=False) if isinstance(task, str) else "-"
    return f"{stored} {msg.subject} {todo.get('id') or '-'} {shown}"


def json_line(data: bytes) -> str:
    """The payload as published when it is one line of JSON; else re-encoded on one line (a JSON string
    for bytes that are not JSON)."""
    try:
        parsed = json.loads(data)
        text = data.decode()
    except ValueError:  # UnicodeDecodeError included
        return json.dumps(data.decode(errors="replace"), ensure_ascii=False)
    if "\n" in text or "\r" in text:
        return json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))
    return text


class Printer:
    """Writes one line per event, flushed at once (the output may be a pipe); a closed pipe stops the tail."""

    def __init__(self, stop: asyncio.Event, *, as_json: bool, out: TextIO = sys.stdout) -> None:
        self.stop = stop
        self.as_json = as_json
        self.out = out

    async def print_event(self, msg: Msg) -> None:  # a coroutine function: nats-py refuses other callables
        if self.stop.is_set():
            return
        try:
            self.out.write((json_line(msg.data) if self.as_json else event_line(msg)) + "\n")
            self.out.flush()
        except BrokenPipeError:  # `... | head`: the reader is gone
            # point stdout at /dev/null so the interpreter's last flush does not complain again
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.out.fileno())
            os.close(devnull)
            self.stop.set()


async def _first(work: asyncio.Future[Any], stop: asyncio.Event) -> bool:
    """Wait for `work` or `stop`, whichever comes first; True when `work` finished (its result is ready)."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if work.done():
        return True
    work.cancel()
    with contextlib.suppress(BaseException):
        await work
    return False


async def tail(settings: Settings, *, as_json: bool, from_start: bool) -> int:
    """Print every event of the stream as it arrives until SIGINT or SIGTERM (or stdout closes); 0 then.

    Raises (TimeoutError, NoServersError...) when NATS does not answer at first; after that it reconnects for
    ever."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    connecting = asyncio.ensure_future(
        asyncio.wait_for(
            # one try per server of NATS_URL, as the other commands: a NATS that is not there is said at once
            connect(settings, name="streams-tail", identity=STREAMS, max_reconnect_attempts=1),
            timeout=CONNECT_TIMEOUT * (len(settings.servers) + 1),
        )
    )
    if not await _first(connecting, stop):
        return 0
    nc = connecting.result()
    # once following, a lost connection is retried for ever (nats-py reads this option at each reconnect),
    # and the ordered consumer resumes after the last event shown
    nc.options["max_reconnect_attempts"] = -1
    try:
        js = nc.jetstream()
        subscribing = asyncio.ensure_future(
            js.subscribe(
                FOLLOWED,
                stream=subjects.STREAM,
                cb=Printer(stop, as_json=as_json).print_event,
                ordered_consumer=True,
                idle_heartbeat=HEARTBEAT,
                deliver_policy=DeliverPolicy.ALL if from_start else DeliverPolicy.NEW,
            )
        )
        if not await _first(subscribing, stop):
            return 0
        try:
            subscription = subscribing.result()
        except NotFoundError:
            raise LookupError(f"no stream {subjects.STREAM} on NATS: run `python -m streams bootstrap`") from None
        where = "from the start of the stream" if from_start else "new events only"
        sys.stderr.write(f"following {FOLLOWED} on stream {subjects.STREAM} ({where}); Ctrl-C stops\n")
        sys.stderr.flush()
        await stop.wait()
        with contextlib.suppress(Exception):
            consumer = (await asyncio.wait_for(subscription.consumer_info(), CLOSE_TIMEOUT)).name
            await subscription.unsubscribe()
            # the server would drop it after its inactivity threshold anyway; at once is tidier
            await asyncio.wait_for(js.delete_consumer(subjects.STREAM, consumer), CLOSE_TIMEOUT)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)
    return 0
