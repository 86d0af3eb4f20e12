"""The load: todo changes through the HTTP API, and a ledger of what the API answered.

A change is committed when the API answered 2xx. A 503 or a refused connection means nothing
was written, and the change is tried again (with a new task text, so each attempt is
recognisable in the stream). A request whose answer was lost (the API died, the connection broke)
may or may not have committed: it is UNKNOWN, its todo is retired (never touched again), so the
final state of the database tells afterwards what happened. Each worker owns its todos, so no two
requests race on one todo and a 404 is always a bug.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from types import SimpleNamespace
from typing import Any

import aiohttp

from streams.subjects import Change

REQUEST_TIMEOUT = 10.0
RETRY_PAUSE = 0.1


def _sent_trace() -> aiohttp.TraceConfig:
    """Notes in a request's trace context that its headers went out (so it may have reached the API)."""

    async def headers_sent(_session: object, context: SimpleNamespace, _params: object) -> None:
        context.trace_request_ctx.sent = True

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(headers_sent)
    return trace


class Outcome(StrEnum):
    COMMITTED = "committed"  # 2xx
    REJECTED = "rejected"  # an answer that says nothing was written (503, 4xx, connection refused)
    UNKNOWN = "unknown"  # no answer: may have committed


@dataclass
class Attempt:
    change: Change
    todo_id: str | None
    task: str | None  # the unique task text of a create or update
    outcome: Outcome
    status: int | None
    answer: dict[str, Any] | None
    at: float
    body: dict[str, Any] | None = None


@dataclass
class Ledger:
    attempts: list[Attempt] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)  # answers no request should get (500, 404 ...)

    @property
    def committed(self) -> int:
        return sum(1 for attempt in self.attempts if attempt.outcome is Outcome.COMMITTED)

    @property
    def unknown(self) -> list[Attempt]:
        return [attempt for attempt in self.attempts if attempt.outcome is Outcome.UNKNOWN]


@dataclass
class Load:
    base_url: str
    changes: int
    rate: float  # changes started per second, over all workers
    workers: int = 8
    seed: int = 0
    label: str = "chaos"
    ledger: Ledger = field(default_factory=Ledger)

    # more API replicas behind one Service: requests go round-robin over `endpoints` (base_url first)
    more_urls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.endpoints = [self.base_url, *self.more_urls]
        self._turns = itertools.count()
        self._slots = itertools.count()
        self._done = 0
        self._started = 0.0

    @property
    def done(self) -> int:
        """Changes finished so far (committed, or left unknown)."""
        return self._done

    async def reached(self, share: float) -> None:
        """Return once `share` of the changes are done."""
        while self._done < share * self.changes:
            await asyncio.sleep(0.01)

    async def run(self) -> Ledger:
        self._started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        connector = aiohttp.TCPConnector(limit=self.workers)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, trace_configs=[_sent_trace()]
        ) as session:
            await asyncio.gather(*(self._worker(session, n) for n in range(self.workers)))
        return self.ledger

    async def _worker(self, session: aiohttp.ClientSession, worker: int) -> None:
        rng = random.Random(f"{self.seed}-{worker}")
        todos: dict[str, dict[str, Any]] = {}  # this worker's live todos
        while (slot := next(self._slots)) < self.changes:
            delay = self._started + slot / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            change = Change.CREATED
            if len(todos) >= 3:
                change = rng.choices([Change.CREATED, Change.UPDATED, Change.DELETED], [4, 4, 2])[0]
            todo_id = rng.choice(sorted(todos)) if change is not Change.CREATED else None
            while True:
                attempt = await self._attempt(session, self._request(change, todo_id, f"{worker}.{slot}", rng))
                self.ledger.attempts.append(attempt)
                if attempt.outcome is Outcome.COMMITTED:
                    assert attempt.answer is not None
                    if change is Change.DELETED:
                        del todos[attempt.answer["id"]]
                    else:
                        todos[attempt.answer["id"]] = attempt.answer
                    break
                if attempt.outcome is Outcome.UNKNOWN or attempt.status not in (None, 503):
                    # retired: its final state tells whether an unknown attempt committed
                    todos.pop(todo_id or "", None)
                    if attempt.status is not None:
                        self.ledger.unexpected.append(f"{change.value} {todo_id}: HTTP {attempt.status}")
                    break
                await asyncio.sleep(RETRY_PAUSE)  # 503 or refused connection: nothing written, try again
            self._done += 1

    def _request(self, change: Change, todo_id: str | None, name: str, rng: random.Random) -> Attempt:
        """A new attempt (not yet sent); creates and updates get a unique task text."""
        if change is Change.DELETED:
            return Attempt(change, todo_id, None, Outcome.UNKNOWN, None, None, 0.0)
        # unique, and with characters Telegram's HTML needs escaped
        task = f'{self.label} #{name} <{uuid.uuid4().hex[:10]}> & "done" ✓'
        attempt = Attempt(change, todo_id, task, Outcome.UNKNOWN, None, None, 0.0)
        attempt.body = {"task": task} if change is Change.CREATED else {"task": task, "done": rng.random() < 0.5}
        return attempt

    async def _attempt(self, session: aiohttp.ClientSession, attempt: Attempt) -> Attempt:
        """Send it and record what came back."""
        method = {Change.CREATED: "POST", Change.UPDATED: "PUT", Change.DELETED: "DELETE"}[attempt.change]
        endpoint = self.endpoints[next(self._turns) % len(self.endpoints)]
        url = f"{endpoint}/api/todos" + (f"/{attempt.todo_id}" if attempt.todo_id else "")
        attempt.at = time.monotonic()
        trace = SimpleNamespace(sent=False)
        try:
            async with session.request(method, url, json=attempt.body, trace_request_ctx=trace) as response:
                attempt.status = response.status
                if response.status < 300:
                    attempt.answer = await response.json(content_type=None)
        except aiohttp.ClientConnectorError as error:
            self.ledger.errors[type(error).__name__] += 1
            if trace.sent:  # aiohttp resends a PUT or DELETE once after a broken connection: the first may have landed
                return attempt
            attempt.outcome = Outcome.REJECTED
            return attempt
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:  # sent, answer lost (or cut short)
            self.ledger.errors[type(error).__name__] += 1
            attempt.status, attempt.answer = None, None
            return attempt
        self.ledger.statuses[attempt.status] += 1
        if 200 <= attempt.status < 300:
            attempt.outcome = Outcome.COMMITTED
            attempt.todo_id = str(attempt.answer["id"]) if attempt.answer else attempt.todo_id
        else:
            attempt.outcome = Outcome.REJECTED
        return attempt
