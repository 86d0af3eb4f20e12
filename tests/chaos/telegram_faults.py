"""The fake Telegram with random faults: a share of 500s, bursts of 429s, and answers slower than the client waits.

A slow answer is given after the message was accepted (as Telegram does when the network is slow):
the client times out, retries, and the chat gets the message twice. Those messages are remembered
in `slow_ids`, and a message whose client was gone by the time its answer was written (timed out,
killed) is marked `Sent.answer_lost`, so a duplicate can be traced back to its cause. `HookedTelegram`
runs a hook (a fault elsewhere) between accepting a chosen message and answering it; `by_method` and
`refused_sends` count what the notifiers asked.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiohttp import web

from tests.fake_telegram import CLIENT_GONE, RECORD, FakeTelegram, Request, TelegramError


@dataclass
class FaultyTelegram(FakeTelegram):
    """FakeTelegram plus random faults per sendMessage, reproducible through `seed`."""

    share_500: float = 0.0  # this share of sendMessage calls answers 500
    burst_every: int = 0  # every Nth sendMessage starts a burst of `burst_size` 429s (retry_after)
    burst_size: int = 0
    share_slow: float = 0.0  # this share of accepted messages is answered only after `slow_delay`
    slow_delay: float = 0.0
    answer_delay: float = 0.0  # every sendMessage is accepted, then answered after this long
    seed: int = 0
    slow_ids: set[int] = field(default_factory=set)
    injected: dict[str, int] = field(default_factory=lambda: {"500": 0, "429": 0, "slow": 0})

    def __post_init__(self) -> None:
        super().__post_init__()
        self._rng = random.Random(self.seed)
        self._calls = 0

    def _refusal(self, chat_id: str, text: str) -> None:
        self._calls += 1
        if self.burst_every and self._calls % self.burst_every == 0:
            self.fail_429 += self.burst_size
        if self.fail_429 > 0:
            self.injected["429"] += 1
        elif self.share_500 and self._rng.random() < self.share_500:
            self.injected["500"] += 1
            raise TelegramError(500, "Internal Server Error")
        super()._refusal(chat_id, text)

    async def _handle(self, request: web.Request) -> web.Response:
        response = await super()._handle(request)
        message = request[RECORD].sent
        if message is None or response.status != 200:
            return response
        wait = self.answer_delay
        if self.share_slow and self._rng.random() < self.share_slow:
            self.injected["slow"] += 1
            self.slow_ids.add(message.message_id)
            wait = self.slow_delay
        if wait and not await self._hold_answer(request, wait):  # the client gave up meanwhile
            return web.Response(status=CLIENT_GONE)
        return response


Hook = Callable[[], Awaitable[None]]


@dataclass
class HookedTelegram(FaultyTelegram):
    """FaultyTelegram that runs a hook when it accepts a chosen message, before answering it.

    `before_answering(n, hook)`: the nth accepted message (message_id n) is recorded as sent, then
    `hook` runs, and only then does the notifier read Telegram's ok (e.g. the hook stops nats-server,
    so the sender sees the ok and cannot record or ack it).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self._hooks: dict[int, Hook] = {}
        self.hooked: dict[int, float] = {}  # message_id -> when its hook returned (monotonic)

    def before_answering(self, message_id: int, hook: Hook) -> None:
        self._hooks[message_id] = hook

    async def _handle(self, request: web.Request) -> web.Response:
        response = await super()._handle(request)
        message = request[RECORD].sent
        if message is None or response.status != 200:
            return response
        hook = self._hooks.pop(message.message_id, None)
        if hook is not None:
            await hook()
            self.hooked[message.message_id] = time.monotonic()
            if self._answer_lost(request):  # e.g. the hook killed the sender
                return web.Response(status=CLIENT_GONE)
        return response


def by_method(requests: Iterable[Request]) -> Counter[str]:
    """How many requests of each Bot API method (lower case, as method names are case-insensitive)."""
    return Counter(request.method.lower() for request in requests)


def refused_sends(requests: Iterable[Request], start: float = 0.0, end: float = float("inf")) -> list[Request]:
    """The sendMessage requests Telegram answered with an error (not those the client gave up on), in [start, end]."""
    return [
        request
        for request in requests
        if request.method.lower() == "sendmessage"
        and request.status not in (200, CLIENT_GONE)
        and start <= request.at <= end
    ]
