"""PaceState survives bad clocks and corrupt KV values, and keeps sane states exactly as before (no servers)."""

from __future__ import annotations

import itertools
import json
import random

import pytest
from structlog.testing import capture_logs

from notifier.pacing import SLOT_MARGIN, PaceState
from notifier.settings import Rate

NOW = 1_700_000_000.0  # wall-clock times, as replicas write them
CHAT = (Rate(1, 1.0),)  # a private chat
GROUP = (Rate(1, 1.0), Rate(20, 60.0))  # a group or channel
STEP = {CHAT: 1.0 + SLOT_MARGIN, GROUP: 60.0 + SLOT_MARGIN}  # one period (and the margin) of the largest limit


def reference_reserve(sends: list[float], paused_until: float, limits: tuple[Rate, ...], now: float) -> float:
    """PaceState.reserve before it repaired anything: what a sane state must still get, to the last bit."""
    slot = max(now, paused_until, sends[-1] if sends else 0.0)
    for rate in limits:
        if len(sends) >= rate.count:
            slot = max(slot, sends[-rate.count] + rate.period + SLOT_MARGIN)
    sends.append(slot)
    del sends[: -max(rate.count for rate in limits)]
    return slot


def through_kv(state: PaceState, now: float) -> PaceState:
    """What the next replica reads after this one wrote."""
    return PaceState.from_bytes(state.to_bytes(), now=now)


# --- a slot far ahead: a fast clock, a corrupt value -----------------------------------------------------


@pytest.mark.parametrize("limits", [CHAT, GROUP], ids=["chat", "group"])
def test_slot_of_a_fast_clock_is_dropped_not_slept_on(limits):
    state = PaceState()
    state.reserve(limits, now=NOW - 10)
    fast = state.reserve(limits, now=NOW + 600)  # a replica whose clock runs 10 minutes fast
    assert fast == NOW + 600
    state = through_kv(state, NOW)
    assert state.sends[-1] == NOW + 600  # what every other replica reads

    assert NOW <= state.next_slot(limits, NOW) <= NOW + STEP[limits]
    slot = state.reserve(limits, NOW)
    assert slot == NOW  # the last sane send was 10 s ago: this one goes at once
    assert NOW + 600 not in state.sends
    assert NOW + 600 not in state.reserved_at
    assert state.sends == ([NOW] if limits == CHAT else [NOW - 10, NOW])
    assert through_kv(state, NOW).sends == state.sends  # the repair is what gets written back


@pytest.mark.parametrize("limits", [CHAT, GROUP], ids=["chat", "group"])
def test_far_slot_written_without_reservation_times_is_dropped(limits):
    """A state written by an older replica (no `reserved_at`), or corrupt: a slot more than one period ahead."""
    state = PaceState.from_bytes(json.dumps({"sends": [NOW - 5, NOW + 600], "paused_until": 0}).encode(), now=NOW)
    assert state.next_slot(limits, NOW) == NOW
    assert state.reserve(limits, NOW) == NOW
    assert NOW + 600 not in state.sends


def test_slots_chained_on_a_fast_slot_go_with_it():
    """An older replica reserved right after the fast slot: that slot, reserved now, is as wrong as it."""
    state = PaceState(sends=[NOW - 5, NOW + 600, NOW + 601.05], reserved_at=[NOW - 5, NOW + 600, NOW - 1])
    assert state.reserve(GROUP, NOW) == NOW
    assert state.sends == [NOW - 5, NOW]
    assert state.reserved_at == [NOW - 5, NOW]


def test_absurd_slot_with_a_plausible_reservation_time_is_dropped():
    state = PaceState(sends=[1e12], reserved_at=[NOW - 1])
    assert state.reserve(GROUP, NOW) == NOW
    assert state.sends == [NOW]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_slots_are_dropped(bad):
    state = PaceState(sends=[NOW - 0.5, bad], reserved_at=[NOW - 0.5, NOW])
    assert state.next_slot(CHAT, NOW) == NOW - 0.5 + 1.0 + SLOT_MARGIN
    state = PaceState(sends=[NOW - 0.5, NOW - 0.2], reserved_at=[NOW - 0.5, bad])
    assert state.next_slot(CHAT, NOW) == NOW - 0.5 + 1.0 + SLOT_MARGIN
    assert state.reserve(CHAT, NOW) == NOW - 0.5 + 1.0 + SLOT_MARGIN
    assert state.sends == [NOW - 0.5 + 1.0 + SLOT_MARGIN]


def test_an_unordered_log_is_put_in_order():
    state = PaceState(sends=[NOW + 0.5, NOW - 10], reserved_at=[NOW + 0.5, NOW - 10])
    assert state.reserve(CHAT, NOW) == NOW + 0.5 + 1.0 + SLOT_MARGIN


@pytest.mark.parametrize("limits", [CHAT, (Rate(1, 0.02),)], ids=["chat", "tiny-period"])
def test_a_clock_a_little_ahead_is_still_believed(limits):
    """Clocks within a period (and at least CLOCK_TOLERANCE) of each other: the slot is kept and waited for."""
    state = PaceState()
    state.reserve(limits, NOW + 0.5)
    assert through_kv(state, NOW).reserve(limits, NOW) == NOW + 0.5 + limits[0].period + SLOT_MARGIN


def test_slot_within_one_period_written_without_reservation_times_is_kept():
    """An older replica's state: a group slot 30 s ahead (the 20/60s window) is a sane one."""
    state = PaceState.from_bytes(json.dumps({"sends": [NOW - 5, NOW + 30], "paused_until": 0}).encode(), now=NOW)
    assert state.reserve(GROUP, NOW) == NOW + 30 + 1.0 + SLOT_MARGIN
    assert state.sends == [NOW - 5, NOW + 30, NOW + 30 + 1.0 + SLOT_MARGIN]


def test_repair_is_logged_once_and_sane_states_log_nothing():
    state = PaceState()
    state.reserve(GROUP, NOW + 600)
    with capture_logs() as logs:
        state.reserve(GROUP, NOW)
        state.reserve(GROUP, NOW)
    assert [entry["event"] for entry in logs] == ["pacing.repaired"]
    assert logs[0]["dropped_slots"] == 1


# --- the 429 pause ---------------------------------------------------------------------------------------


def test_absurd_pause_is_ignored_and_reset():
    state = PaceState(sends=[NOW - 5], reserved_at=[NOW - 5], paused_until=1e12)
    assert state.next_slot(GROUP, NOW) == NOW
    assert state.reserve(GROUP, NOW) == NOW
    assert state.paused_until == 0.0


def test_absurd_pause_read_from_kv_is_none():
    """What the Pacer holds its gate by (and every replica's watch learns) is read through from_bytes."""
    assert PaceState.from_bytes(b'{"sends": [], "paused_until": 1e12}', now=NOW).paused_until == 0.0
    assert PaceState.from_bytes(json.dumps({"paused_until": NOW + 5000}).encode(), now=NOW).paused_until == 0.0
    assert PaceState.from_bytes(json.dumps({"paused_until": NOW + 3000}).encode(), now=NOW).paused_until == NOW + 3000


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pause_is_ignored(bad):
    state = PaceState(paused_until=bad)
    assert state.reserve(CHAT, NOW) == NOW
    assert state.paused_until == 0.0


def test_a_real_pause_holds_and_slots_after_it_are_kept():
    state = PaceState(paused_until=NOW + 30)  # Telegram said retry_after=30
    slots = [state.reserve(CHAT, NOW) for _ in range(3)]
    reference: list[float] = []
    assert slots == [reference_reserve(reference, NOW + 30, CHAT, NOW) for _ in range(3)]
    assert slots[0] == NOW + 30
    state = through_kv(state, NOW + 1)
    assert state.paused_until == NOW + 30
    assert state.reserve(CHAT, NOW + 1) == slots[-1] + 1.0 + SLOT_MARGIN  # 31 s ahead, and kept


# --- corrupt bytes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"nonsense",
        b"[]",
        b'"text"',
        b"\xff\xfe\x00",
        b"[" * 100_000,
        b'{"sends": ["x"]}',
        b'{"sends": [NaN]}',
        b'{"sends": [1e400]}',
        b'{"sends": [' + b"9" * 400 + b"]}",
        b'{"sends": [true]}',
        b'{"sends": [[1]]}',
        b'{"sends": 5}',
        b'{"paused_until": "soon"}',
        b'{"paused_until": null}',
        b'{"paused_until": Infinity}',
        b'{"sends": [1, 2], "reserved_at": ["x", "y"]}',
    ],
)
def test_corrupt_bytes_give_a_clean_usable_state(data):
    state = PaceState.from_bytes(data, now=NOW)
    assert state == PaceState()
    assert state.reserve(GROUP, NOW) == NOW
    assert through_kv(state, NOW) == PaceState(sends=[NOW], reserved_at=[NOW])


def test_state_round_trips_through_bytes():
    state = PaceState(sends=[NOW - 1, NOW + 2], reserved_at=[NOW - 2, NOW], paused_until=NOW + 7)
    assert through_kv(state, NOW) == state
    assert PaceState.from_bytes(None) == PaceState()
    assert PaceState.from_bytes(b"") == PaceState()


def test_reservation_times_not_matching_the_slots_are_not_trusted():
    """Then the slots stand for their reservations: one ahead of now by more than one period goes."""
    data = json.dumps({"sends": [NOW - 5, NOW + 600], "reserved_at": [NOW - 5]}).encode()
    state = PaceState.from_bytes(data, now=NOW)
    assert state.sends == [NOW - 5, NOW + 600]
    assert state.reserve(CHAT, NOW) == NOW
    assert state.sends == [NOW]


# --- sane states: exactly as before ----------------------------------------------------------------------


def test_back_to_back_slots_keep_both_limits_exactly():
    state = PaceState()
    slots = [state.reserve(GROUP, NOW) for _ in range(25)]
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(slots))
    # no 60 s window holds 21 slots: any 21 in a row span at least 60 s
    assert all(slots[i + 20] - slots[i] >= 60.0 for i in range(len(slots) - 20))
    assert max(sum(1 for s in slots if start <= s < start + 60) for start in slots) == 20
    assert slots[0] == NOW
    assert slots[20] == NOW + 60 + SLOT_MARGIN  # the 21st waits for the window, not longer
    reference: list[float] = []
    assert slots == [reference_reserve(reference, 0.0, GROUP, NOW) for _ in range(25)]


def test_legitimately_piled_up_slots_are_not_dropped():
    """25 slots reserved at once reach 61 s ahead, past one period: all are kept, and the next follows them."""
    state = PaceState()
    for _ in range(25):
        state.reserve(GROUP, NOW)
    kept = list(state.sends)
    assert kept[-1] > NOW + 1 + STEP[GROUP]
    reference = list(kept)
    expected = reference_reserve(reference, 0.0, GROUP, NOW + 1)
    state = through_kv(state, NOW + 1)
    assert state.next_slot(GROUP, NOW + 1) == expected
    assert state.reserve(GROUP, NOW + 1) == expected
    assert state.sends == reference
    assert state.sends[:-1] == kept[1:]


def test_replicas_of_a_private_chat_pile_up_past_one_period():
    """3 replicas with a backlog, one slot each: the log (one slot) is 2.1 s ahead when the first sends again."""
    data, slots = PaceState().to_bytes(), []
    for _ in range(3):  # each replica takes a slot at once
        state = PaceState.from_bytes(data, now=NOW)
        slots.append(state.reserve(CHAT, NOW))
        data = state.to_bytes()
    assert slots == [NOW, NOW + 1.0 + SLOT_MARGIN, NOW + 1.0 + SLOT_MARGIN + 1.0 + SLOT_MARGIN]
    state = PaceState.from_bytes(data, now=NOW)  # the first sends, and reserves again
    assert state.sends == [slots[-1]]
    assert slots[-1] > NOW + STEP[CHAT]
    assert state.reserve(CHAT, NOW) == slots[-1] + 1.0 + SLOT_MARGIN  # not NOW: that slot is a replica's


@pytest.mark.parametrize("limits", [CHAT, GROUP, (Rate(1, 0.02), Rate(5, 1.0))], ids=["chat", "group", "fast"])
@pytest.mark.parametrize("seed", range(5))
def test_replicas_with_sane_clocks_get_exactly_the_slots_they_got_before(limits, seed):
    """Replicas with a backlog reserve, sleep until their slot, send and reserve again (with a 429 now and then),
    their clocks a few ms apart, every state read from and written to bytes: slots as before, to the last bit."""
    rng = random.Random(seed)
    replicas = 3 + seed
    clock = [rng.uniform(-0.005, 0.005) for _ in range(replicas)]
    data = PaceState().to_bytes()
    reference: list[float] = []
    reference_pause = 0.0
    due = [NOW + rng.uniform(0, 2) for _ in range(replicas)]  # when each replica next reserves (true time)
    slots: list[float] = []
    ahead = 0.0
    for _ in range(300):
        replica = min(range(replicas), key=due.__getitem__)
        now = due[replica] + clock[replica]
        state = PaceState.from_bytes(data, now=now)
        ahead = max(ahead, max(state.sends, default=now) - now)
        if rng.random() < 0.02:
            state.paused_until = reference_pause = max(reference_pause, now + rng.uniform(1, 30))
        slot = state.reserve(limits, now)
        assert slot == reference_reserve(reference, reference_pause, limits, now)
        assert state.sends == reference
        slots.append(slot)
        data = state.to_bytes()
        due[replica] = max(now, slot) - clock[replica] + rng.uniform(0, 0.3)  # sleeps, sends, takes the next
    if limits == CHAT:
        assert ahead > STEP[CHAT]  # the run did pile slots up past one period
