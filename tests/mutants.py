"""Each promise of the README broken on purpose, and the test that must catch it.

Every row of the README's "Delivery guarantees" and "Failure policy of the notifier" tables names
the tests that assert it (tests/README.md). This script shows those tests can fail: for each row it
applies a small change to the code that breaks the promise (a *mutant*), runs the row's tests, and
expects them to fail; then it puts the code back, whatever happens. A mutant that survives (its
tests still pass) means the row is not really tested.

    python -m tests.mutants            # every mutant (about 5 minutes on 2 cores)
    python -m tests.mutants --list     # what would be run
    python -m tests.mutants NAME ...   # some of them

Writes bench/results/mutants.json. Run it on a clean tree: it edits the source files in place and
restores them byte for byte.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "mutants.json"
TIMEOUT = 600.0
WEB, NOTIFIER = "tests/web", "tests/notifier"


@dataclass(frozen=True)
class Mutant:
    name: str
    row: str  # the README row it breaks
    path: str  # file changed, relative to the repo
    old: str  # exact text, found exactly once
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail
    more: tuple[tuple[str, str], ...] = ()  # further (old, new) changes in the same file

    @property
    def changes(self) -> tuple[tuple[str, str], ...]:
        return ((self.old, self.new), *self.more)


MUTANTS: list[Mutant] = [
    Mutant(
        "create-not-atomic",
        "guarantees: API → database",
        "web/todos.py",
        "        await client.execute_query(_CREATE_WITH_EVENT, values)\n",
        "        await client.execute_query(\n"
        '            "INSERT INTO todos (id, user_id, task, done, created_at, updated_at)"\n'
        '            " VALUES ($1, NULL, $2, $3, $4, $4)", values[:4])\n'
        "        await client.execute_query(\n"
        '            "INSERT INTO outbox (event_id, subject, payload, created_at) VALUES ($1, $2, $3, $4)",\n'
        "            [*values[4:], at])\n",
        (f"{WEB}/test_atomicity.py::test_a_change_whose_event_cannot_be_written_is_not_committed[postgres]",),
    ),
    Mutant(
        "two-relays",
        "guarantees: database → stream (one relay per database)",
        "web/relay.py",
        '"SELECT pg_try_advisory_xact_lock($1) AS locked", [RELAY_LOCK_KEY]',
        '"SELECT $1::bigint IS NOT NULL AS locked", [RELAY_LOCK_KEY]',
        (f"{WEB}/test_relay_processes.py::test_two_api_processes_on_one_database_publish_each_event_once",),
        # and no leader either: each replica relays as if it were alone (either layer is enough on its own)
        more=(
            (
                "leadership = None if settings.is_sqlite else Leadership(settings.database_url, wakeup)",
                "leadership = None",
            ),
        ),
    ),
    Mutant(
        "candidates-ask-per-commit",
        "guarantees: database → stream (replicas that do not relay pay nothing per commit)",
        "web/leader.py",
        "if not now and time.monotonic() - self._tried_at < self.claim_interval:",
        "if False:",
        (f"{WEB}/test_leader.py::test_one_replica_leads_hears_every_commit_and_hands_over_when_its_session_ends",),
    ),
    Mutant(
        "no-outbox-notify",
        "guarantees: database → stream (the leader hears every replica's commits)",
        "web/migrations/0002_outbox_notify.py",
        "await editor.client.execute_script(sql)",
        "return",
        (f"{WEB}/test_leader.py::test_one_replica_leads_hears_every_commit_and_hands_over_when_its_session_ends",),
    ),
    Mutant(
        "new-msg-id-per-publish",
        "guarantees: database → stream (retries keep the Nats-Msg-Id)",
        "web/publisher.py",
        "headers = {MSG_ID_HEADER: str(event.event_id)}",
        "headers = {MSG_ID_HEADER: str(__import__('uuid').uuid4())}",
        (
            f"{WEB}/test_relay_processes.py::test_relay_killed_between_publish_and_delete_republishes_and_the_stream_keeps_one_copy",
        ),
    ),
    Mutant(
        "outbox-forgets-unacked",
        "guarantees: NATS down or refusing (events wait in the outbox)",
        "web/relay.py",
        "await OutboxEvent.filter(id__in=[event.id for event in events[:acked]])",
        "await OutboxEvent.filter(id__in=[event.id for event in events])",
        (f"{WEB}/test_relay.py::test_a_batch_nats_takes_only_in_part_keeps_the_rest",),
    ),
    Mutant(
        "no-in-progress",
        "guarantees: stream → Telegram (held with in_progress())",
        "notifier/jetstream.py",
        "            await msg.in_progress()\n",
        "            pass\n",
        (f"{NOTIFIER}/test_handover.py::test_a_send_slower_than_the_ack_wait_stays_with_its_replica",),
    ),
    Mutant(
        "record-failure-naks",
        "guarantees: after Telegram's ok (never nak'ed because NATS failed)",
        "notifier/pipeline.py",
        "                        break\n                    await self._source.wait_connected(NATS_RETRY)\n",
        "                        break\n                    await self._enact(batch, Outcome(Decision.RETRY, 'x'))\n"
        "                    return\n",
        (f"{NOTIFIER}/test_pipeline.py::test_an_accepted_event_is_never_nakked_when_its_record_fails",),
    ),
    Mutant(
        "lease-never-lapses",
        "guarantees: replicas (a lapsed lease lets the event go)",
        "notifier/pipeline.py",
        "        return held.epoch != self._source.epoch or time.monotonic() - held.renewed > self._lease\n",
        "        return False\n",
        (f"{NOTIFIER}/test_pipeline_units.py::test_a_lease_that_lapses_during_the_lookup_is_let_go_not_sent",),
    ),
    Mutant(
        "sent-log-ignored",
        "guarantees: redelivery (todos_sent checked before every send)",
        "notifier/pipeline.py",
        "            if record is Record.SENT:\n",
        "            if False:\n",
        (f"{NOTIFIER}/test_delivery.py::test_already_sent_event_is_not_sent_again",),
    ),
    Mutant(
        "first-mark-overwrites",
        "guarantees: redelivery (a first delivery's mark is written only where no record exists)",
        "notifier/sent_log.py",
        "        headers = _ABSENT if if_absent else None\n",
        "        headers = None\n",
        (f"{NOTIFIER}/test_delivery.py::test_already_sent_event_is_not_sent_again",),
    ),
    Mutant(
        "no-outage",
        "guarantees: long faults; policy: the 3rd transient failure in a row",
        "notifier/policy.py",
        "OUTAGE_AFTER = 3\n",
        "OUTAGE_AFTER = 1000\n",
        (f"{NOTIFIER}/test_pipeline.py::test_a_long_outage_holds_the_events_instead_of_dead_lettering",),
    ),
    Mutant(
        "sending-mark-forgotten",
        "guarantees: lost answer (a copy after a crash says it may repeat)",
        "notifier/sent_log.py",
        "        if value == SENDING:\n            return Record.SENDING\n",
        "        if value == SENDING:\n            return Record.NOT_SENT\n",
        (f"{NOTIFIER}/test_delivery.py::test_a_grouped_message_repeated_after_a_crash_says_it_may_repeat",),
    ),
    Mutant(
        "lost-answer-unflagged",
        "guarantees: lost answer (a timeout's resend says it may repeat)",
        "notifier/pipeline.py",
        "        if answer_lost(error):  # if sent again from here",
        "        if False:  # if sent again from here",
        (f"{NOTIFIER}/test_failures.py::test_server_errors_and_timeouts_are_retried",),
    ),
    Mutant(
        "retry-after-ignored",
        "policy: 429 RetryAfter",
        "notifier/policy.py",
        "return Outcome(Decision.WAIT, reason, delay=_seconds(error.retry_after))",
        "return Outcome(Decision.WAIT, reason, delay=0.0)",
        (f"{NOTIFIER}/test_rate_limits.py::test_a_429_holds_every_replica_until_retry_after",),
    ),
    Mutant(
        "migration-not-followed",
        "policy: ChatMigrated",
        "notifier/pipeline.py",
        "                try:\n"
        "                    await self._route.migrate(outcome.new_chat_id)\n"
        "                except",
        "                try:\n                    pass\n                except",
        (f"{NOTIFIER}/test_failures.py::test_chat_migration_is_followed_and_shared",),
    ),
    Mutant(
        "forbidden-dead-letters",
        "policy: Forbidden, kicked, not enough rights ... (held, not dead-lettered)",
        "notifier/policy.py",
        "        case Forbidden() | InvalidToken():\n            return Outcome(Decision.PAUSE, reason)\n",
        "        case Forbidden() | InvalidToken():\n            return Outcome(Decision.DEAD_LETTER, reason)\n",
        (f"{NOTIFIER}/test_failures.py::test_kicked_bot_pauses_too",),
    ),
    Mutant(
        "group-not-split",
        "policy: BadRequest for this message (only the poison event dies)",
        "notifier/policy.py",
        "        case BadRequest() if events > 1:\n            return Outcome(Decision.SPLIT, reason)\n",
        "        case BadRequest() if events > 1:\n            return Outcome(Decision.DEAD_LETTER, reason)\n",
        (f"{NOTIFIER}/test_rate_limits.py::test_poison_event_in_a_group_dies_alone",),
    ),
    Mutant(
        "transient-acked",
        "policy: 5xx, network error, TimedOut (nak'ed, retried)",
        "notifier/pipeline.py",
        "                    await self._source.nak(held.msg, outcome.delay)\n",
        "                    await self._source.ack(held.msg)\n",
        (f"{NOTIFIER}/test_failures.py::test_server_errors_and_timeouts_are_retried",),
    ),
    Mutant(
        "last-delivery-let-go",
        "policy: a transient failure at the last delivery (dead-lettered with the reason)",
        "notifier/policy.py",
        "            if max_deliver > 0 and deliveries >= max_deliver:\n",
        "            if False:\n",
        (f"{NOTIFIER}/test_pipeline.py::test_last_delivery_is_terminated_with_the_reason",),
    ),
    Mutant(
        "sigterm-no-nak",
        "policy: (SIGTERM) an event still held (released at once)",
        "notifier/pipeline.py",
        "                    await self._source.nak(held.msg, 0)\n",
        "                    pass\n",
        (f"{NOTIFIER}/test_handover.py::test_sigterm_hands_a_paced_backlog_to_a_running_replica_at_once",),
    ),
    Mutant(
        "sigterm-keeps-pulling",
        "policy: (SIGTERM) released events reach another replica, not its own open pull request",
        "notifier/pipeline.py",
        # finish() naks while its pull subscription still takes deliveries and a fetch is under way, as before
        "        await self._stop_fetching()\n"
        "        with contextlib.suppress(TimeoutError):  # a fetch under way returns (and releases) what it got\n"
        "            await asyncio.wait_for(self._not_fetching.wait(), FETCH_PATIENCE)\n",
        "",
        (f"{NOTIFIER}/test_handover.py::test_sigterm_while_a_pull_request_is_open_hands_everything_over",),
        more=(("            await self._stop_fetching()\n        leftover", "            pass\n        leftover"),),
    ),
]


@dataclass
class Result:
    name: str
    row: str
    tests: tuple[str, ...]
    killed: bool
    seconds: float
    tail: str


def run(mutant: Mutant) -> Result:
    path = REPO / mutant.path
    original = path.read_bytes()
    text = original.decode()
    for old, new in mutant.changes:
        found = text.count(old)
        if found != 1:
            raise SystemExit(f"{mutant.name}: the text to change occurs {found} times in {mutant.path}, not once")
        text = text.replace(old, new)
    started = time.monotonic()
    try:
        path.write_text(text)
        try:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-x",
                    "-p",
                    "no:cacheprovider",
                    "-p",
                    "no:randomly",
                    *mutant.tests,
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
            killed, output = done.returncode != 0, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            killed, output = True, f"timed out after {TIMEOUT}s (counted as caught)"
    finally:
        path.write_bytes(original)
    lines = [line for line in output.splitlines() if line.strip()]
    return Result(
        mutant.name, mutant.row, mutant.tests, killed, round(time.monotonic() - started, 1), "\n".join(lines[-3:])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and their tests")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        raise SystemExit(f"unknown mutants: {', '.join(sorted(unknown))}")
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name:32} {mutant.row}\n{'':32} {' '.join(mutant.tests)}")
        return
    results = []
    for mutant in chosen:
        result = run(mutant)
        results.append(result)
        verdict = "caught" if result.killed else "SURVIVED"
        print(f"{verdict:8} {result.seconds:6.1f}s  {mutant.name:32} {mutant.row}", flush=True)
        if not result.killed:
            print(result.tail)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps([asdict(r) for r in results], indent=2, ensure_ascii=False) + "\n")
    survived = [r.name for r in results if not r.killed]
    print(
        f"\n{len(results) - len(survived)}/{len(results)} mutants caught"
        + (f"; survived: {survived}" if survived else "")
    )
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
