"""The chaos audit's rules, on hand-made runs: no processes, no servers, well under a second.

A duplicate is allowed only when the send before it lost its answer (the fake recorded it, or the
replica that sent it was SIGKILLed or SIGSTOPped while it was under way) and the copy says it may
repeat; being close in time to a fault explains nothing any more. The stream must hold each todo's
events in commit order. The final rows are read from the database, in the API's JSON shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from notifier.formatting import Event, render_fitting
from streams import subjects
from streams.subjects import Change
from tests.chaos.audit import Audit, Cause, Evidence, StreamEvent, audit
from tests.chaos.load import Attempt, Ledger, Outcome
from tests.chaos.scenarios import BY_NAME, SCENARIOS, Duplicates, Report, duplicates_cell
from tests.chaos.system import Fault, Sender, read_todos
from tests.chaos.verdict import duplicate_problems, problems
from tests.fake_telegram import Sent
from tests.processes import start_web

TODO_ID = "6f1c0e6e-9a8e-4c36-9d43-0d9c6f1b2a11"


def _todo(task: str, *, at: str = "2026-11-28T23:15:54.808Z", done: bool = False) -> dict[str, Any]:
    return {"id": TODO_ID, "userId": None, "task": task, "done": done, "createdAt": "2026-11-28T23:15:54.808Z",
            "updatedAt": at}  # fmt: skip


def _message(message_id: int, change: Change, payload: dict[str, Any], *, at: float, flagged: bool = False,
             answer_lost: bool = False) -> Sent:  # fmt: skip
    """A message as the notifier renders it (the may-repeat line when `flagged`), as the fake records it."""
    _, text = render_fitting([Event(change, payload, may_repeat=flagged)], 1)
    return Sent(at, "-1", text, message_id, answer_lost=answer_lost)


def _created_twice(*sent: Sent, evidence: Evidence | None = None) -> Audit:
    """One committed create, once in the stream, delivered by `sent` (built from `_created()`)."""
    payload = _todo("buy milk")
    ledger = Ledger(attempts=[Attempt(Change.CREATED, None, "buy milk", Outcome.COMMITTED, 201, payload, 0.0)])
    stream = [StreamEvent(1, Change.CREATED, payload, "event-1")]
    return audit(ledger, rows={TODO_ID: payload}, stream=stream, sent=list(sent), evidence=evidence)


def _created(message_id: int, at: float, *, flagged: bool = False, answer_lost: bool = False) -> Sent:
    return _message(message_id, Change.CREATED, _todo("buy milk"), at=at, flagged=flagged, answer_lost=answer_lost)


def _report(result: Audit, scenario: str) -> Report:
    return Report(
        scenario=scenario, title="", changes=1, audit=result, statuses={503: 1} if scenario == "postgres" else {},
        errors={}, unexpected=[], dead_letters=0, outbox_left=0, faults=[], injected={}, settled=True, seconds=1.0,
    )  # fmt: skip


# --- duplicates and their causes ----------------------------------------------------------------------


def test_a_flagged_copy_of_a_lost_answer_is_allowed() -> None:
    """The fake posted #1 but its client was gone (answer_lost): the flagged copy #2 is the one accepted kind."""
    result = _created_twice(_created(1, 10.0, answer_lost=True), _created(2, 11.0, flagged=True))
    assert (result.duplicates, result.flagged_duplicates, result.allowed_duplicates) == (1, 1, 1)
    assert result.unexplained_duplicates == 0
    assert result.duplicate_causes == {"lost answer": 1}
    assert result.details == []
    assert result.explained[0].startswith("duplicate (allowed): #1 at +10.00s by ? (answer lost)")
    assert duplicate_problems(result, Duplicates.LOST_ANSWERS) == []
    assert duplicates_cell(result) == "1 (1 lost answer, flagged)"
    # where the fault allows none, even an allowed kind fails
    assert duplicate_problems(result, Duplicates.NONE) == [
        "1 duplicates (1 lost answer; 1 flagged): this fault allows none"
    ]


def test_a_slow_answer_of_the_faulty_fake_is_a_lost_answer() -> None:
    result = _created_twice(_created(1, 10.0), _created(2, 11.0, flagged=True), evidence=Evidence(slow_ids={1}))
    assert result.duplicate_causes == {"lost answer": 1}
    assert result.allowed_duplicates == 1


def test_an_unflagged_copy_with_no_cause_fails() -> None:
    result = _created_twice(_created(1, 10.0), _created(2, 11.0))
    assert (result.duplicates, result.unexplained_duplicates, result.allowed_duplicates) == (1, 1, 0)
    assert result.details[0].startswith("DUPLICATE (no cause, not flagged as may-repeat): #1 at +10.00s")
    assert "copy #2 +1.00s by ?; no todos_sent write seen; cause: no cause" in result.details[0]
    found = duplicate_problems(result, Duplicates.LOST_ANSWERS)
    assert found[0].startswith("1 duplicates with no cause")
    assert found[1].startswith("1 duplicates not flagged as may-repeat")
    assert duplicates_cell(result) == "1 (1 no cause, not flagged)"
    assert "1 duplicates with no cause" in " ".join(problems(_report(result, "kills"), BY_NAME["kills"]))


def test_a_flagged_copy_with_no_cause_fails() -> None:
    """The notifier's own "may repeat" line explains nothing: the audit wants a cause it saw itself."""
    result = _created_twice(_created(1, 10.0), _created(2, 11.0, flagged=True))
    assert (result.flagged_duplicates, result.unexplained_duplicates, result.allowed_duplicates) == (1, 1, 0)
    assert duplicate_problems(result, Duplicates.LOST_ANSWERS) == [
        "1 duplicates with no cause (no lost answer, no stopped sender behind them)"
    ]


def _old_window_explains(first: Sent, faults: list[Fault]) -> bool:
    """The rule this audit replaced: any fault within 2 s before to 3 s after the first copy (the PostgreSQL
    outage, the rights loss, the Telegram outage and the consumer's deletion excepted)."""
    return any(f.start - 2 <= first.at <= f.end + 3 for f in faults if f.replica or f.nats_down)


def test_a_copy_close_to_a_fault_with_no_cause_now_fails() -> None:
    """#1 was sent by notifier-1, which nothing hit; notifier-0 was SIGKILLed 0.3 s later.

    Under the old rule this passed: the first copy (at 10.0) lies within 2 s before to 3 s after the kill
    (at 10.3), the kill of a notifier "explained duplicates", so the unflagged copy counted as explained and
    the kills scenario (Duplicates.EXPLAINED) accepted it; at 150 changes and 50/s every message of the run
    was that close to one of the four kills. `_old_window_explains` replays that rule. Now the kill must
    have hit the replica that sent #1, while #1 was under way.
    """
    kill = Fault("SIGKILL notifier-0", 10.3, 10.3, replica="notifier-0", signal="SIGKILL")
    evidence = Evidence(faults=[kill], senders={1: Sender("notifier-1", 10.02), 2: Sender("notifier-2", 11.0)})
    first, copy = _created(1, 10.0), _created(2, 11.0)
    assert _old_window_explains(first, [kill])  # the old audit called it explained
    result = _created_twice(first, copy, evidence=evidence)
    assert (result.unexplained_duplicates, result.allowed_duplicates) == (1, 0)
    assert "by notifier-1, answered +0.02s" in result.details[0]
    assert "nearest fault: SIGKILL notifier-0 +0.30s" in result.details[0]
    assert duplicate_problems(result, Duplicates.LOST_ANSWERS)[0].startswith("1 duplicates with no cause")


def test_a_kill_of_the_sender_while_its_send_was_under_way_explains_the_copy() -> None:
    """notifier-0 sent #1 and was SIGKILLed before its `sent` record reached todos_sent: the copy is caused."""
    kill = Fault("SIGKILL notifier-0", 10.05, 10.05, replica="notifier-0", signal="SIGKILL")
    evidence = Evidence(faults=[kill], senders={1: Sender("notifier-0", 10.02)})
    result = _created_twice(_created(1, 10.0), _created(2, 16.0, flagged=True), evidence=evidence)
    assert result.duplicate_causes == {"sender SIGKILLed": 1}
    assert result.allowed_duplicates == 1
    # the same, unflagged: caused, but the chat was not told
    plain = _created_twice(_created(1, 10.0), _created(2, 16.0), evidence=evidence)
    assert (plain.unexplained_duplicates, plain.allowed_duplicates) == (0, 0)
    assert duplicate_problems(plain, Duplicates.LOST_ANSWERS) == [
        "1 duplicates not flagged as may-repeat (1 sender SIGKILLed)"
    ]


def test_a_kill_of_the_sender_after_its_sent_record_explains_nothing() -> None:
    """Once `sent` is in todos_sent a redelivery must be suppressed: a kill after it is no cause."""
    kill = Fault("SIGKILL notifier-0", 10.5, 10.5, replica="notifier-0", signal="SIGKILL")
    writes = {subjects.sent_key("event-1"): [(9.99, "sending"), (10.03, "sent")]}
    evidence = Evidence(faults=[kill], senders={1: Sender("notifier-0", 10.02)}, sent_log_writes=writes)
    result = _created_twice(_created(1, 10.0), _created(2, 16.0, flagged=True), evidence=evidence)
    assert result.unexplained_duplicates == 1
    assert "todos_sent writes: sending -0.01s, sent +0.03s" in result.details[0]
    # a kill before the next copy but before the record: in flight
    early = Fault("SIGKILL notifier-0", 10.025, 10.025, replica="notifier-0", signal="SIGKILL")
    caused = _created_twice(_created(1, 10.0), _created(2, 16.0, flagged=True), evidence=Evidence(
        faults=[early], senders={1: Sender("notifier-0", 10.02)}, sent_log_writes=writes))  # fmt: skip
    assert caused.duplicate_causes == {"sender SIGKILLed": 1}


def test_a_freeze_of_the_sender_spanning_its_send_explains_the_copy() -> None:
    """SIGSTOP for 15 s from 10.01: #1 (accepted at 10.0, answered into a frozen socket) is caused; a copy sent
    by the frozen replica after it woke, of an event another replica sent meanwhile, is not."""
    freeze = Fault("SIGSTOP notifier-1", 10.01, 25.01, replica="notifier-1", signal="SIGSTOP")
    senders = {1: Sender("notifier-1", 10.05), 2: Sender("notifier-0", 15.2), 3: Sender("notifier-1", 25.3)}
    evidence = Evidence(faults=[freeze], senders=senders)
    result = _created_twice(_created(1, 10.0), _created(2, 15.1, flagged=True), evidence=evidence)
    assert result.duplicate_causes == {"sender SIGSTOPped": 1}
    stale = _created_twice(_created(1, 10.0), _created(2, 15.1, flagged=True), _created(3, 25.2), evidence=evidence)
    assert stale.duplicate_causes == {"sender SIGSTOPped": 1, "no cause": 1}
    assert stale.details[0].startswith("DUPLICATE (no cause, not flagged as may-repeat): #2 at +15.10s by notifier-0")
    assert duplicates_cell(stale) == "2 (1 sender SIGSTOPped, 1 no cause; 1 flagged)"


def test_nats_down_between_the_ok_and_the_record_is_a_cause_but_never_allowed() -> None:
    """README: an event Telegram accepted is never sent again because NATS failed."""
    result = _created_twice(_created(1, 10.0), _created(2, 20.0, flagged=True), evidence=Evidence(hooked_ids={1}))
    assert result.duplicate_causes == {Cause.NATS_AT_RECORD.value: 1}
    assert (result.unexplained_duplicates, result.allowed_duplicates) == (0, 0)
    assert result.details[0].startswith("DUPLICATE (NATS down at the record: README says")
    assert duplicate_problems(result, Duplicates.LOST_ANSWERS) == [
        "1 duplicates of a message Telegram accepted while NATS was down at the record"
    ]
    assert duplicate_problems(result, Duplicates.NONE)
    # any send under way when NATS went down: its record waited for NATS (here #1, stopped 0.05 s after it)
    outage = Fault("nats-server restart", 10.05, 18.0, nats_down=True)
    during = _created_twice(_created(1, 10.0), _created(2, 18.5, flagged=True), evidence=Evidence(faults=[outage]))
    assert during.duplicate_causes == {Cause.NATS_AT_RECORD.value: 1}
    # but not a send recorded before NATS went down
    writes = {subjects.sent_key("event-1"): [(10.01, "sent")]}
    before = _created_twice(
        _created(1, 10.0), _created(2, 18.5, flagged=True), evidence=Evidence(faults=[outage], sent_log_writes=writes)
    )
    assert before.duplicate_causes == {Cause.NONE.value: 1}


def test_the_restart_and_outage_scenarios_allow_no_duplicate() -> None:
    allowing = {scenario.name for scenario in SCENARIOS if scenario.duplicates is not Duplicates.NONE}
    assert allowing == {"kills", "telegram", "sigstop"}
    for name in ("nats", "paced", "postgres"):
        result = _created_twice(_created(1, 10.0, answer_lost=True), _created(2, 11.0, flagged=True))
        assert any("this fault allows none" in problem for problem in problems(_report(result, name), BY_NAME[name]))


# --- per-todo order in the stream ---------------------------------------------------------------------


def _changes() -> tuple[Ledger, list[StreamEvent], dict[str, dict[str, Any]]]:
    """A todo created, updated twice and deleted; the stream in commit order."""
    created = _todo("a")
    first = _todo("b", at="2026-11-28T23:15:55.000Z")
    second = _todo("c", at="2026-11-28T23:15:56.000Z", done=True)
    changes = [(Change.CREATED, created), (Change.UPDATED, first), (Change.UPDATED, second), (Change.DELETED, second)]
    ledger = Ledger(attempts=[
        Attempt(change, TODO_ID, payload["task"], Outcome.COMMITTED, 200, payload, float(n))
        for n, (change, payload) in enumerate(changes)
    ])  # fmt: skip
    stream = [StreamEvent(n + 1, change, payload, f"e{n}") for n, (change, payload) in enumerate(changes)]
    return ledger, stream, {}


def _order_audit(ledger: Ledger, events: list[StreamEvent]) -> Audit:
    """The audit of a stream holding `events` in this order (numbered again), each delivered once."""
    stream = [StreamEvent(n + 1, event.change, event.payload, event.msg_id) for n, event in enumerate(events)]
    sent = [_message(n + 1, event.change, event.payload, at=float(n)) for n, event in enumerate(stream)]
    return audit(ledger, rows={}, stream=stream, sent=sent)


def test_events_in_commit_order_pass() -> None:
    ledger, stream, _ = _changes()
    result = _order_audit(ledger, stream)
    assert (result.out_of_order, result.lost, result.duplicates, result.inconsistent) == (0, 0, 0, 0)


def test_updates_stored_out_of_commit_order_are_caught() -> None:
    ledger, stream, _ = _changes()
    created, first, second, deleted = stream
    result = _order_audit(ledger, [created, second, first, deleted])
    assert result.out_of_order == 1
    assert result.details == [
        f"OUT OF ORDER {TODO_ID}: updated at seq 3 committed before the updated at seq 2, stored after it"
    ]
    assert "1 events out of order in the stream" in " ".join(problems(_report(result, "nats"), BY_NAME["nats"]))


def test_an_event_after_the_deletion_or_before_the_creation_is_caught() -> None:
    ledger, stream, _ = _changes()
    created, first, second, deleted = stream
    after_delete = _order_audit(ledger, [created, first, deleted, second])
    assert after_delete.out_of_order == 1
    assert f"OUT OF ORDER {TODO_ID}: updated at seq 4 after its deletion (seq 3)" in after_delete.details
    assert after_delete.inconsistent == 1  # and the todo's last event is no longer its deletion
    created_late = _order_audit(ledger, [first, created, second, deleted])
    assert created_late.out_of_order == 1
    assert created_late.details == [f"OUT OF ORDER {TODO_ID}: created at seq 2 created after 1 other events of it"]


# --- the final rows, from the database ----------------------------------------------------------------


async def test_rows_read_from_sqlite_are_the_apis_json(tmp_path: Path) -> None:
    """Written by the API (a process on SQLite, its migrations), read back by SQL: equal to its answers."""
    path = tmp_path / "todos.sqlite3"
    proc = start_web(database_url=f"sqlite://{path}", nats_url=None, log_dir=tmp_path)
    try:
        await proc.ready()
        async with aiohttp.ClientSession(base_url=proc.url) as session:

            async def call(method: str, url: str, **body: Any) -> dict[str, Any]:
                async with session.request(method, url, json=body or None) as response:
                    assert response.status in (200, 201), await response.text()
                    answer: dict[str, Any] = await response.json()
                    return answer

            kept = await call("POST", "/api/todos", task='x <&> "✓"', done=True)
            changed = await call("POST", "/api/todos", task="y")
            changed = await call("PUT", f"/api/todos/{changed['id']}", done=True)
            gone = await call("POST", "/api/todos", task="z")
            await call("DELETE", f"/api/todos/{gone['id']}")
    finally:
        await proc.stop()
    rows = await read_todos(f"sqlite://{path}")
    assert rows == {kept["id"]: kept, changed["id"]: changed}
