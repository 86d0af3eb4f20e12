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

Bad clocks and bad values never stop a chat: each slot also records when it was reserved, on the
reserving replica's clock (`reserved_at`), and before every reservation the log is repaired: a slot
reserved more than one step ahead of this replica's clock (a replica whose clock runs fast), chained on
such a slot, not finite, or further ahead than MAX_AHEAD is dropped; a `paused_until` further ahead
than MAX_PAUSE is ignored; an unreadable value is a clean state. Every repair is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from notifier.chats import ChatGate
from notifier.settings import ChatId, Rate
from streams.subjects import PACE_KEYS, chat_of_pace_key, pace_key

log = structlog.get_logger(__name__)
SLOT_MARGIN = 0.05
# Sanity bounds on the shared pace state, so that a corrupt KV value or a replica with a bad clock cannot stop
# a chat (PaceState._repaired). Telegram's retry_after for sendMessage is seconds to minutes.
MAX_PAUSE = 3600.0  # a pause further ahead is not believed: paused_until is reset to 0
MAX_AHEAD = 3600.0  # nor a slot further ahead than this past the pause: a backlog of 1,200 messages at 20/min
CLOCK_TOLERANCE = 1.0  # the least lead of another replica's clock taken for a bad clock (for tiny periods)
_INFINITY = float("inf")
CAS_ATTEMPTS = 50
WATCH_RETRY = 1.0


def is_group(chat_id: ChatId) -> bool:
    """Negative ids are groups and supergroups, @names channels; positive ids are private chats."""
    return isinstance(chat_id, str) or chat_id < 0


@dataclass
class PaceState:
    """What every replica knows about one chat: recent send slots (ascending) and any 429 pause.

    `reserved_at[i]` is the `now` at which `sends[i]` was reserved, on the reserving replica's clock
    (a state written without it, by an older replica, counts each slot as reserved at its own time).

    The state is shared, so it may be wrong: written by a replica whose clock runs fast, or corrupt.
    Every reservation repairs it first (`_repaired`), so no replica sleeps on a slot no sane state holds.
    How far ahead of `now` a sane slot may be has no bound of its own: next_slot puts a slot at most one
    step (the largest period + SLOT_MARGIN) after the slot before it, its reservation's `now` or the
    pause, so slots reserved faster than they pass pile up a step after another (one sender per replica
    with a backlog: about a step per replica, 3.15 s ahead for a private chat at 1/1s with 3 replicas;
    70 reservations at once reach 190 s at 1/1s + 20/60s), and the log keeps only the last slots, not
    where their chain started. What does bound a sane slot is the clock that reserved it: every
    reservation happened before `now`, and clocks agree within milliseconds.
    """

    sends: list[float] = field(default_factory=list)
    paused_until: float = 0.0
    reserved_at: list[float] = field(default_factory=list)

    @classmethod
    def from_bytes(cls, data: bytes | None, now: float | None = None) -> PaceState:
        """The state stored in KV. Unreadable data (not JSON, not an object, a value not a finite number)
        gives a clean state, and a pause further than MAX_PAUSE past `now` (default: the wall clock) none;
        the next write repairs the key."""
        if not data:
            return cls()
        try:
            state = cls._parse(json.loads(data))
        except (ValueError, TypeError, ArithmeticError, RecursionError) as error:
            log.warning("pacing.repaired", problem="unreadable state", error=str(error) or type(error).__name__)
            return cls()
        when = time.time() if now is None else now
        if not cls._pause_believable(state.paused_until, when):
            log.warning("pacing.repaired", problem="pause too long", paused_until=state.paused_until, now=when)
            state.paused_until = 0.0
        return state

    def to_bytes(self) -> bytes:
        state = {"sends": self.sends, "reserved_at": self.reserved_at, "paused_until": self.paused_until}
        return json.dumps(state).encode()

    def next_slot(self, limits: tuple[Rate, ...], now: float) -> float:
        """The earliest time a message may go without breaking a limit or a pause; slots never go back.
        Slots and a pause no sane state holds are ignored (`reserve` drops them)."""
        repaired = self._repaired(limits, now)
        return self._earliest(repaired.sends, repaired.paused_until, limits, now)

    def reserve(self, limits: tuple[Rate, ...], now: float) -> float:
        """Take the next slot, repairing the state first; the log keeps what the largest limit looks at."""
        repaired = self._repaired(limits, now)
        dropped = len(self.sends) - len(repaired.sends)
        if dropped or repaired.paused_until != self.paused_until:
            log.warning(
                "pacing.repaired",
                dropped_slots=dropped,
                latest_slot=max(self.sends, default=None),
                paused_until=self.paused_until,
                now=now,
            )
        slot = self._earliest(repaired.sends, repaired.paused_until, limits, now)
        keep = max(rate.count for rate in limits)
        self.sends[:] = [*repaired.sends, slot][-keep:]
        self.reserved_at[:] = [*repaired.reserved_at, now][-keep:]
        self.paused_until = repaired.paused_until
        return slot

    @staticmethod
    def _earliest(sends: list[float], paused_until: float, limits: tuple[Rate, ...], now: float) -> float:
        slot = max(now, paused_until, sends[-1] if sends else 0.0)
        for rate in limits:
            if len(sends) >= rate.count:
                slot = max(slot, sends[-rate.count] + rate.period + SLOT_MARGIN)
        return slot

    def _repaired(self, limits: tuple[Rate, ...], now: float) -> PaceState:
        """This state without what no sane state holds, at `now`:

        - a pause not finite or further ahead than MAX_PAUSE (reset to 0);
        - a slot not finite, or further than MAX_AHEAD past `now` and the pause;
        - a slot reserved more than one step (at least CLOCK_TOLERANCE) after `now`: its replica's clock
          ran ahead (a slot without `reserved_at` stands for its reservation: it may be one step ahead);
        - a slot later than next_slot could have put it after the previous slot kept (`_latest_after`),
          as when a fast slot was chained on; the oldest has no previous slot in the log to judge it by.

        Nothing is dropped from a sane state: `_latest_after` adds what `_earliest` adds, in the same
        order, to the previous slot, which is no earlier than the slots `_earliest` added them to
        (float addition is monotonic, so the bound holds to the last bit); a 429 pause only grows.
        """
        step = max((rate.period + SLOT_MARGIN for rate in limits), default=0.0)
        latest_reservation = now + max(step, CLOCK_TOLERANCE)
        repaired = PaceState(paused_until=self.paused_until if self._pause_believable(self.paused_until, now) else 0.0)
        latest_slot = max(now, repaired.paused_until) + MAX_AHEAD
        reserved = self.reserved_at if len(self.reserved_at) == len(self.sends) else self.sends
        pairs = zip(self.sends, reserved, strict=True)
        entries = sorted((slot, at) for slot, at in pairs if self._finite(slot) and self._finite(at))
        for index, (slot, at) in enumerate(entries):
            if slot > latest_slot or at > latest_reservation:
                continue
            if index and slot > self._latest_after(repaired.sends, repaired.paused_until, limits, at):
                continue
            repaired.sends.append(slot)
            repaired.reserved_at.append(at)
        return repaired

    @staticmethod
    def _latest_after(sends: list[float], paused_until: float, limits: tuple[Rate, ...], at: float) -> float:
        """The latest slot next_slot can give a reservation made at `at` after `sends`."""
        latest = max(at, paused_until)
        if sends:
            last = sends[-1]
            latest = max(latest, last, *(last + rate.period + SLOT_MARGIN for rate in limits))
        return latest

    @staticmethod
    def _pause_believable(paused_until: float, now: float) -> bool:
        return PaceState._finite(paused_until) and paused_until <= now + MAX_PAUSE

    @classmethod
    def _parse(cls, raw: object) -> PaceState:
        if not isinstance(raw, dict):
            raise TypeError(f"a JSON object expected, not {type(raw).__name__}")
        sends = [cls._number(value) for value in cls._list(raw.get("sends", []))]
        reserved = [cls._number(value) for value in cls._list(raw.get("reserved_at", []))]
        if len(reserved) != len(sends):
            reserved = []  # no sound record of the reservations: the slots stand for them
        return cls(sends=sends, paused_until=cls._number(raw.get("paused_until", 0)), reserved_at=reserved)

    @staticmethod
    def _list(value: object) -> list[object]:
        if not isinstance(value, list):
            raise TypeError(f"a JSON array expected, not {type(value).__name__}")
        return value

    @staticmethod
    def _number(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"a number expected, not {type(value).__name__}")
        number = float(value)
        if not PaceState._finite(number):
            raise ValueError(f"a finite number expected, not {number}")
        return number

    @staticmethod
    def _finite(value: float) -> bool:
        return -_INFINITY < value < _INFINITY


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
                watcher = await self._kv.watch(PACE_KEYS)
                async for entry in watcher:
                    if entry is not None and entry.value:
                        self._learn(chat_of_pace_key(entry.key), PaceState.from_bytes(entry.value))
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("pacing.watch_failed", error=str(error) or type(error).__name__)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            await asyncio.sleep(WATCH_RETRY)
