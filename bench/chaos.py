"""`just chaos`: every fault scenario at 1,000 todo changes, against the real processes; prints a table.

Usage: python bench/chaos.py [--changes 1000] [--rate 100] [--only kills,nats,rights,sigstop ...]
                             [--notifier-env TELEGRAM_GROUP_RATE=20/4s ...]
The table shows, per scenario, what was lost, the duplicates by cause (a lost answer, a sender
SIGKILLed or SIGSTOPped while its send was under way, NATS down at the record, or no cause) and how
many were flagged in the chat as "may repeat", e.g. "1 (1 lost answer, flagged)", the dead letters,
the deliveries beyond each event's first (redelivered) and the sendMessage requests Telegram refused.
The long faults (rights, telegram_outage, sigstop) are scaled in time (tests/chaos/scenarios.py says
how) and last as long at any size.
Writes bench/results/chaos.json (and the processes' logs of a failed scenario under
bench/results/chaos-logs/). Exits 1 when a change was lost or a scenario broke its rules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.chaos.scenarios import BY_NAME, SCENARIOS, Report, run, table  # noqa: E402
from tests.chaos.verdict import problems  # noqa: E402
from tests.services import Postgres  # noqa: E402

RESULTS = ROOT / "bench" / "results"


async def main(args: argparse.Namespace) -> int:
    chosen = [BY_NAME[name] for name in args.only.split(",")] if args.only else SCENARIOS
    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        work = Path(tmp)
        with Postgres(work / "pg") as postgres:
            for scenario in chosen:
                print(f"running {scenario.name}: {scenario.heading()} ({args.changes} changes)", flush=True)
                env = dict(item.split("=", 1) for item in args.notifier_env)
                report = await run(
                    scenario, args.changes, postgres, work / scenario.name, rate=args.rate, notifier_env=env
                )
                reports.append(report)
                for line in problems(report, scenario) or ["ok"]:
                    print(f"  {line}", flush=True)
                if problems(report, scenario):
                    kept = RESULTS / "chaos-logs" / scenario.name
                    shutil.rmtree(kept, ignore_errors=True)
                    shutil.copytree(work / scenario.name / "logs", kept)
                    print(f"  logs kept in {kept}", flush=True)
                for detail in [*report.audit.details, *report.audit.explained]:
                    print(f"  {detail}", flush=True)
                if report.facts:
                    print(f"  facts: {report.facts}", flush=True)
    print()
    print(table(reports))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "chaos.json").write_text(json.dumps([report.as_dict() for report in reports], indent=2))
    failed = [report.scenario for report, scenario in zip(reports, chosen, strict=True) if problems(report, scenario)]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore", module="platformdirs")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="changes started per second")
    parser.add_argument(
        "--notifier-env", action="append", default=[], metavar="NAME=VALUE", help="extra notifier setting"
    )
    parser.add_argument("--only", default="", help="comma-separated scenario names: " + ", ".join(BY_NAME))
    sys.exit(asyncio.run(main(parser.parse_args())))
