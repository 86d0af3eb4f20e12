"""`just bench --profile`: py-spy flame graphs of a process under load, and where its CPU time goes by layer.

Two py-spy samplers attach to the process at once (non-blocking, so the process is not paused for a
sample): one writes the flame graph (SVG), the other the collapsed stacks, from which `layers()`
attributes every sample to one layer, the frame closest to the leaf that belongs to a known library or
to our code deciding (work done inside the relay counts as the relay's).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

RATE = 100  # samples per second

# (layer, markers of a frame's file): the first layer whose marker a frame holds, looking from the leaf
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("database driver and ORM (asyncpg, tortoise)", ("asyncpg/", "tortoise/", "pypika")),
    ("NATS client (nats-py)", ("nats/",)),
    ("Bot API client (python-telegram-bot)", ("telegram/",)),
    ("HTTP (aiohttp: parsing, writing, client and server)", ("aiohttp/", "multidict/", "yarl/")),
    ("validation and JSON (pydantic, json)", ("pydantic", "json/")),
    ("logs and metrics (structlog, prometheus_client, logging)", ("structlog/", "prometheus_client/", "logging/")),
    ("our code (web/, notifier/, streams/)", ("web/", "notifier/", "streams/")),
    ("event loop and sockets (asyncio, selectors)", ("asyncio/", "selectors.py", "uvloop", "socket.py", "ssl.py")),
)
# stacks that run inside these frames are charged to them, whatever library does the work
OWNERS = (("the outbox relay (web/relay.py, web/publisher.py)", ("web/relay.py", "web/publisher.py")),)
OTHER = "other"


def _frame_file(frame: str) -> str:
    # "function (path/to/file.py:123)"
    return frame.rpartition(" (")[2]


def layers(collapsed: str) -> dict[str, float]:
    """Share of the samples (0..1) by layer, from py-spy's raw (collapsed stacks) output."""
    counts: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        files = [_frame_file(frame) for frame in stack.split(";")]
        owner = next((name for name, marks in OWNERS if any(m in f for f in files for m in marks)), None)
        layer = owner or next(
            (name for f in reversed(files) for name, marks in LAYERS if any(mark in f for mark in marks)), OTHER
        )
        counts[layer] += int(number)
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.most_common()}


@contextlib.asynccontextmanager
async def profiled(pid: int, seconds: float, svg: Path) -> AsyncIterator[dict[str, float]]:
    """Sample `pid` for `seconds` while the body runs; on exit, `svg` is written and the dict holds `layers()`."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("py-spy is not installed (it is in the dev extras: just install)")
    svg.parent.mkdir(parents=True, exist_ok=True)
    raw = svg.with_suffix(".txt")
    common = ["record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", str(RATE)]
    samplers = []
    for fmt, path in (("flamegraph", svg), ("raw", raw)):
        args = [*common, "--nonblocking", "--format", fmt, "--output", str(path)]
        samplers.append(
            await asyncio.create_subprocess_exec(
                spy, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
        )
    shares: dict[str, float] = {}
    yield shares
    for sampler in samplers:
        _, error = await sampler.communicate()
        if sampler.returncode != 0:
            raise RuntimeError(f"py-spy failed: {error.decode(errors='replace').strip()}")
    shares.update(layers(raw.read_text()))
