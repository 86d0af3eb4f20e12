"""Pacing shared by every replica: send slots per chat, reserved in the `todos_notifier` KV bucket.

Telegram allows about 1 message/s per chat and 20 messages/min per group or channel (TELEGRAM_CHAT_RATE,
TELEGRAM_GROUP_RATE). The state of a chat is one KV key, `chat.<id>.pace`: the times of the last sends
reserved (as many as the largest limit counts) and `paused_until`, set after a 429. A replica reserves
the next slot with compare-and-set (kv.create for the first write, kv.update(last=revision) after), so
any number of replicas together keep every limit, then waits until its slot and sends.

A log of send times rather than GCRA: Telegram's limits behave as sliding windows, and GCRA with a burst
of N lets up to 2N-1 messages through in one window, or with no burst delays the second message of a
quiet chat by a whole 3 s; the log is exact for both limits and tiny (20 floats). Slots are wall-clock
times (replicas on different hosts share them; NTP keeps clocks within milliseconds) and each is kept
SLOT_MARGIN after what the limit allows, because requests reach Telegram a little earlier or later than
planned. Every replica also watches the pace keys, so a 429 met by one holds all of them (ChatGate),
even with pacing off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from notifier.chats import ChatGate
from notifier.settings import ChatId, Rate

log = structlog.get_logger(__name__)
SLOT_MARGIN = 0.05
CAS_ATTEMPTS = 50
WATCH_RETRY = 1.0
_NUMERIC = re.compile(r"-?\d+")


def pace_key(chat_id: ChatId) -> str:
    return f"chat.{str(chat_id).lstrip('@')}.pace"


def chat_of_key(key: str) -> ChatId:
    name = key.split(".")[1]
    return int(name) if _NUMERIC.fullmatch(name) else f"@{name}"


def is_group(chat_id: ChatId) -> bool:
    """Negative ids are groups and supergroups, @names channels; positive ids are private chats."""
    return isinstance(chat_id, str) or chat_id < 0


@dataclass
class PaceState:
    """What every replica knows about one chat: recent send slots (ascending) and any 429 pause."""

    sends: list[float] = field(default_factory=list)
    paused_until: float = 0.0

    @classmethod
    def from_bytes(cls, data: bytes | None) -> PaceState:
        if not data:
            return cls()
        raw = json.loads(data)
        return cls(sends=[float(t) for t in raw.get("sends", [])], paused_until=float(raw.get("paused_until", 0)))

    def to_bytes(self) -> bytes:
        return json.dumps({"sends": self.sends, "paused_until": self.paused_until}).encode()

    def next_slot(self, limits: tuple[Rate, ...], now: float) -> float:
        """The earliest time a message may go without breaking a limit or a pause; slots never go back."""
        slot = max(now, self.paused_until, self.sends[-1] if self.sends else 0.0)
        for rate in limits:
            if len(self.sends) >= rate.count:
                slot = max(slot, self.sends[-rate.count] + rate.period + SLOT_MARGIN)
        return slot

    def reserve(self, limits: tuple[Rate, ...], now: float) -> float:
        slot = self.next_slot(limits, now)
        self.sends.append(slot)
        del self.sends[: -max(rate.count for rate in limits)]
        return slot


class Pacer:
    """Reserves send slots and shares 429 pauses between replicas (local only without a KV bucket)."""

    def __init__(self, kv: KeyValue | None, gate: ChatGate, chat_rate: Rate | None, group_rate: Rate | None) -> None:
        self._kv, self._gate = kv, gate
        self._chat_rate, self._group_rate = chat_rate, group_rate
        self._local: dict[str, PaceState] = {}

    def limits(self, chat_id: ChatId) -> tuple[Rate, ...]:
        rates = (self._chat_rate, self._group_rate if is_group(chat_id) else None)
        return tuple(rate for rate in rates if rate is not None)

    def paces(self, chat_id: ChatId) -> bool:
        return bool(self.limits(chat_id))

    async def reserve(self, chat_id: ChatId) -> float:
        """Take the chat's next send slot for this replica; return the seconds to wait for it."""
        limits = self.limits(chat_id)
        slot = await self._change(chat_id, lambda state, now: state.reserve(limits, now))
        return max(0.0, slot - time.time(), self._gate.remaining(chat_id))

    async def pause(self, chat_id: ChatId, seconds: float) -> None:
        """Telegram answered 429: no replica sends to the chat for `seconds`."""

        def extend(state: PaceState, now: float) -> float:
            state.paused_until = max(state.paused_until, now + seconds)
            return state.paused_until

        self._gate.hold(chat_id, seconds)
        await self._change(chat_id, extend)

    async def pause_left(self, chat_id: ChatId) -> float:
        """Seconds until the chat may be sent to again, as every replica sees it (one KV read)."""
        if self._kv is not None:
            try:
                entry = await self._kv.get(pace_key(chat_id))
            except KeyNotFoundError:
                return self._gate.remaining(chat_id)
            self._learn(chat_id, PaceState.from_bytes(entry.value))
        return self._gate.remaining(chat_id)

    async def _change(self, chat_id: ChatId, change: Callable[[PaceState, float], float]) -> float:
        key = pace_key(chat_id)
        if self._kv is None:
            state = self._local.setdefault(key, PaceState())
            return change(state, time.time())
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                state, revision = PaceState(), None
            else:
                state, revision = PaceState.from_bytes(entry.value), entry.revision
            result = change(state, time.time())
            try:
                if revision is None:
                    await self._kv.create(key, state.to_bytes())
                else:
                    await self._kv.update(key, state.to_bytes(), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another replica wrote first: read again
            self._learn(chat_id, state)
            return result
        raise RuntimeError(f"{key}: too much contention")

    def _learn(self, chat_id: ChatId, state: PaceState) -> None:
        left = state.paused_until - time.time()
        if left > 0:
            self._gate.hold(chat_id, left)

    async def follow(self) -> None:
        """Forever: mirror every replica's 429 pauses into this replica's ChatGate."""
        if self._kv is None:
            return
        while True:
            watcher = None
            try:
                watcher = await self._kv.watch("chat.*.pace")
                async for entry in watcher:
                    if entry is not None and entry.value:
                        self._learn(chat_of_key(entry.key), PaceState.from_bytes(entry.value))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("pacing.watch_failed", error=str(error) or type(error).__name__)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            await asyncio.sleep(WATCH_RETRY)
