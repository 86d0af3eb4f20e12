"""The notifier's reference: bare aiohttp POSTing the notifier's own sendMessage requests to a Bot API.

`python bench/bare.py BASE_URL TOKEN CHAT_ID EVENTS CONCURRENCY` sends EVENTS sendMessage requests
(form-encoded as the notifier encodes them, the text an event rendered as the notifier renders it),
CONCURRENCY at a time over one pooled session, on the same event loop as the notifier (uvloop), and
prints {"seconds", "per_s"} as JSON. No JetStream, no de-duplication, no python-telegram-bot: what
is left is what the notifier adds, which `just bench` reports as the ratio of the two rates.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from notifier.formatting import Event, render_event
from streams.runtime import loop_factory
from streams.subjects import Change

_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def body(chat_id: int, n: int) -> str:
    payload = {
        "id": str(uuid.uuid4()),
        "userId": None,
        "task": f"event {n}",
        "done": False,
        "createdAt": "2026-11-30T12:00:00.000Z",
        "updatedAt": "2026-11-30T12:00:00.000Z",
    }
    text = render_event(Event(change=Change.CREATED, payload=payload))
    return urlencode(
        {"chat_id": chat_id, "text": text, "parse_mode": "HTML", "link_preview_options": '{"is_disabled": true}'}
    )


async def run(base_url: str, token: str, chat_id: int, events: int, concurrency: int) -> dict[str, float]:
    url = f"{base_url}/bot{token}/sendMessage"
    bodies = [body(chat_id, n) for n in range(events)]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(bodies)

        async def worker() -> None:
            for data in queue:
                async with session.post(url, data=data, headers=_FORM) as response:
                    answer = json.loads(await response.read())
                    if not answer.get("ok"):
                        raise RuntimeError(f"the Bot API said no: {answer}")

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.monotonic() - started
    return {"seconds": seconds, "per_s": events / seconds}


def main() -> None:
    base_url, token, chat_id, events, concurrency = sys.argv[1:6]
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(run(base_url, token, int(chat_id), int(events), int(concurrency)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
