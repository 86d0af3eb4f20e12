"""The event loop every process runs on: uvloop (libuv) where it is installed, else asyncio's own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop (measured in `just bench`: about 1.5x the notifier's events/s, and a faster API),
    or asyncio's default loop on a platform uvloop does not support."""
    try:
        import uvloop  # noqa: PLC0415 (optional: not built for Windows)
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
