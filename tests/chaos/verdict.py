"""What a scenario must show: the rules both `just chaos` and the test suite apply to a report."""

from __future__ import annotations

from tests.chaos.audit import Audit
from tests.chaos.scenarios import SETTLE_TIMEOUT, Duplicates, Report, Scenario


def duplicate_problem(a: Audit, allowed: Duplicates) -> str:
    """The duplicates the scenario does not accept, in words ("" when none)."""
    if allowed is Duplicates.NONE and a.duplicates:
        return f"{a.duplicates} duplicates ({a.flagged_duplicates} flagged as may-repeat): this fault allows none"
    if allowed is Duplicates.FLAGGED and a.unflagged_duplicates:
        return f"{a.unflagged_duplicates} duplicates not flagged as may-repeat ({a.flagged_duplicates} flagged)"
    if allowed is Duplicates.EXPLAINED and a.unexplained_duplicates:
        return f"{a.unexplained_duplicates} duplicates neither flagged as may-repeat nor explained by a fault"
    return ""


def problems(report: Report, scenario: Scenario) -> list[str]:
    """Every broken rule, in words; empty when the scenario passed."""
    a = report.audit
    outage = scenario.name == "postgres"
    duplicates = duplicate_problem(a, scenario.duplicates)
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
        (a.inconsistent, f"{a.inconsistent} todos half-written (database and events disagree)"),
        (report.outbox_left, f"{report.outbox_left} outbox rows left"),
        (report.dead_letters, f"{report.dead_letters} dead letters"),
        (report.server_errors, f"5xx answers other than 503: {report.server_errors}"),
        (report.unexpected, f"unexpected answers: {report.unexpected[:5]}"),
        (outage and not report.statuses.get(503), "no 503 seen while PostgreSQL was down"),
        (not outage and report.statuses.get(503), "503 answers without a database outage"),
        (duplicates, duplicates),
        (a.committed < report.changes * 0.9, f"only {a.committed} of {report.changes} changes committed"),
    ]
    return [message for broken, message in rules if broken] + scenario.rules(report)
