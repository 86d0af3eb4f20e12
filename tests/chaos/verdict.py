"""What a scenario must show: the rules both `just chaos` and the test suite apply to a report.

Duplicates: none with no cause anywhere; none at all where the scenario allows none (the NATS
restarts, the PostgreSQL outage, the long Telegram faults, NATS down at the record, the consumer
recreated); elsewhere only flagged copies of a send whose answer was lost (tests.chaos.audit).
"""

from __future__ import annotations

from tests.chaos.audit import Audit, Cause
from tests.chaos.scenarios import SETTLE_TIMEOUT, Duplicates, Report, Scenario


def _causes(a: Audit) -> str:
    return ", ".join(f"{count} {cause}" for cause, count in sorted(a.duplicate_causes.items()))


def duplicate_problems(a: Audit, allowed: Duplicates) -> list[str]:
    """The duplicates the scenario does not accept, in words (empty when none)."""
    found = []
    if a.unexplained_duplicates:
        found.append(
            f"{a.unexplained_duplicates} duplicates with no cause (no lost answer, no stopped sender behind them)"
        )
    if allowed is Duplicates.NONE and a.duplicates:
        found.append(
            f"{a.duplicates} duplicates ({_causes(a)}; {a.flagged_duplicates} flagged): this fault allows none"
        )
    elif allowed is Duplicates.LOST_ANSWERS:
        if a.unflagged_duplicates:
            found.append(f"{a.unflagged_duplicates} duplicates not flagged as may-repeat ({_causes(a)})")
        after_ok = a.duplicate_causes.get(Cause.NATS_AT_RECORD.value, 0)
        if after_ok:
            found.append(f"{after_ok} duplicates of a message Telegram accepted while NATS was down at the record")
    return found


def problems(report: Report, scenario: Scenario) -> list[str]:
    """Every broken rule, in words; empty when the scenario passed."""
    a = report.audit
    outage = scenario.name == "postgres"
    rules = [
        (
            not report.settled,
            (
                f"the system did not settle within {SETTLE_TIMEOUT:.0f} s ({report.settle_state}); "
                f"{a.undelivered} committed changes not delivered by then (not counted as lost)"
            ),
        ),
        (a.lost, f"{a.lost} committed changes never reached Telegram"),
        (a.phantoms, f"{a.phantoms} events for changes that were not committed"),
        (a.stream_duplicates, f"{a.stream_duplicates} events stored twice in the stream"),
        (a.out_of_order, f"{a.out_of_order} events out of order in the stream (per todo, against commit order)"),
        (a.inconsistent, f"{a.inconsistent} todos half-written (database and events disagree)"),
        (report.outbox_left, f"{report.outbox_left} outbox rows left"),
        (report.dead_letters, f"{report.dead_letters} dead letters"),
        (report.server_errors, f"5xx answers other than 503: {report.server_errors}"),
        (report.unexpected, f"unexpected answers: {report.unexpected[:5]}"),
        (outage and not report.statuses.get(503), "no 503 seen while PostgreSQL was down"),
        (not outage and report.statuses.get(503), "503 answers without a database outage"),
        (a.committed < report.changes * 0.9, f"only {a.committed} of {report.changes} changes committed"),
    ]
    found = [message for broken, message in rules if broken]
    return found + duplicate_problems(a, scenario.duplicates) + scenario.rules(report)
