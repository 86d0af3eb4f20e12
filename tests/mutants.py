"""Each promise of the README broken on purpose, and the test that must catch it.

Every row of the README's "Delivery guarantees" and "Failure policy of the notifier" tables names
the tests that assert it (tests/README.md). This script shows those tests can fail: for each row it
applies a small change to the code that breaks the promise (a *mutant*), runs the row's tests, and
expects them to fail; then it puts the code back, whatever happens. A mutant that survives (its
tests still pass) means the row is not really tested.

    python -m tests.mutants            # every mutant (about 10 minutes on 2 cores)
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


@dataclass(frozen=True)
class Mutant:
    name: str
    row: str  # the README row it breaks
    path: str  # file changed, relative to the repo
    old: str  # exact text, found exactly once
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail


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
        ("tests/web/test_atomicity.py::test_a_change_whose_event_cannot_be_written_is_not_committed[postgres]",),
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
    found = text.count(mutant.old)
    if found != 1:
        raise SystemExit(f"{mutant.name}: the text to change occurs {found} times in {mutant.path}, not once")
    started = time.monotonic()
    try:
        path.write_text(text.replace(mutant.old, mutant.new))
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
