"""Reading a Server-Sent Events stream (/api/events) the way a browser's EventSource does."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Message:
    """One dispatched message, or a comment-only block (a heartbeat): `comments` holds its comment lines."""

    event: str = "message"
    data: list[str] = field(default_factory=list)
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        return json.loads("\n".join(self.data))


async def next_message(response: aiohttp.ClientResponse, timeout: float = 10.0) -> Message:
    """The next block of the stream (up to a blank line) that holds something; EOFError when the stream ends."""
    message = Message()
    async with asyncio.timeout(timeout):
        while True:
            raw = await response.content.readline()
            if not raw:
                raise EOFError("the event stream ended")
            line = raw.decode().removesuffix("\n").removesuffix("\r")
            if not line:
                if message.data or message.comments or message.retry is not None:
                    return message
                continue
            if line.startswith(":"):
                message.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                message.event = value
            elif name == "data":
                message.data.append(value)
            elif name == "id":
                message.id = value
            elif name == "retry":
                message.retry = int(value)


async def next_event(response: aiohttp.ClientResponse, timeout: float = 10.0) -> Message:
    """The next message with data (skipping the `retry:` block and heartbeats)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await next_message(response, timeout)
            if message.data:
                return message


async def wait_for_status(response: aiohttp.ClientResponse, state: str, timeout: float = 10.0) -> None:
    """Read until a `status` event says `state`; fail on any other kind of event on the way."""
    async with asyncio.timeout(timeout):
        while True:
            message = await next_event(response, timeout)
            assert message.event == "status", message
            if message.json == {"events": state}:
                return
