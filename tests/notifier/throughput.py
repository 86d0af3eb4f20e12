"""Quick figure: events/s of one notifier replica against a fake Telegram that answers at once.

    python -m tests.notifier.throughput [events]

Publishes a backlog into a fresh JetStream, starts one `python -m notifier`, and times the first to
the last message the fake accepted. (The proper benchmark is bench/; this is the notifier's smoke figure.)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nats
import psutil

from streams import topology
from streams.subjects import MSG_ID_HEADER, Change
from tests.fake_telegram import FakeTelegram
from tests.notifier.conftest import CHAT_ID, REPO, make_todo
from tests.services import NatsServer, free_port


async def measure(events: int) -> float:
    with tempfile.TemporaryDirectory() as tmp, NatsServer(Path(tmp) / "nats") as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await topology.bootstrap(js)
        acks = [await js.publish_async(Change.CREATED.subject, json.dumps(make_todo()).encode(),
                                       headers={MSG_ID_HEADER: str(uuid.uuid4())}) for _ in range(events)]  # fmt: skip
        await asyncio.gather(*acks)
        async with FakeTelegram() as fake:
            env = os.environ | {
                "NATS_URL": server.url, "NOTIFIER_PORT": str(free_port()), "LOG_LEVEL": "warning",
                "TELEGRAM_ACCESS_TOKEN": fake.token, "TELEGRAM_CHAT_ID": str(CHAT_ID),
                "TELEGRAM_API_BASE_URL": fake.base_url, "TELEGRAM_CHAT_RATE": "off", "TELEGRAM_GROUP_RATE": "off",
            }  # fmt: skip
            replica = subprocess.Popen([sys.executable, "-m", "notifier"], cwd=REPO, env=env)
            try:
                while len(fake.sent) < events:
                    await asyncio.sleep(0.05)
                    if replica.poll() is not None:
                        raise RuntimeError("the replica exited")
                cpu = psutil.Process(replica.pid).cpu_times()
                print(f"replica cpu {cpu.user + cpu.system:.1f} s, fake+bench cpu {sum(os.times()[:2]):.1f} s")
            finally:
                replica.terminate()
                replica.wait(15)
            took = fake.sent[-1].at - fake.sent[0].at
        await nc.close()
    return (events - 1) / took


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    started = time.monotonic()
    rate = asyncio.run(measure(events))
    print(f"{events} events, 1 replica: {rate:,.0f} events/s (run took {time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
