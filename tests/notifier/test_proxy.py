"""HTTPS_PROXY / HTTP_PROXY / NO_PROXY for the Bot API, through a real forward proxy on 127.0.0.1.

The fake Telegram speaks plain http://, so the proxy only forwards absolute-URI requests (no CONNECT):
what a client sends an HTTP proxy for an http:// URL. It records every request it forwards.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Self

import aiohttp
import pytest_asyncio
from aiohttp import web

from tests.notifier.conftest import publish, wait_until
from tests.services import LOCALHOST

# headers that concern one hop only: never forwarded (RFC 9110 7.6.1), plus what aiohttp sets itself
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length"}  # fmt: skip
PROXY_USER, PROXY_PASSWORD = "todo", "proxy-pw-7f3a9c"


@dataclass
class Forwarded:
    method: str
    url: str
    proxy_authorization: str | None


class ForwardProxy:
    """A forward HTTP proxy: absolute-URI GET/POST passed on to their target, each one recorded."""

    def __init__(self) -> None:
        self.forwarded: list[Forwarded] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    async def __aenter__(self) -> Self:
        self._client = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOCALHOST, 0).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        # an absolute-URI request line ("POST http://host:port/path HTTP/1.1"): request.url is the target
        self.forwarded.append(Forwarded(request.method, str(request.url), request.headers.get("Proxy-Authorization")))
        assert self._client is not None
        headers = {key: value for key, value in request.headers.items() if key.lower() not in HOP_BY_HOP}
        async with self._client.request(
            request.method, request.url, headers=headers, data=await request.read(), allow_redirects=False
        ) as upstream:
            body = await upstream.read()
            kept = {key: value for key, value in upstream.headers.items() if key.lower() not in HOP_BY_HOP}
            return web.Response(status=upstream.status, body=body, headers=kept)


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    """A forward proxy on a free port of 127.0.0.1."""
    async with ForwardProxy() as running:
        yield running


def with_credentials(url: str) -> str:
    return url.replace("http://", f"http://{PROXY_USER}:{PROXY_PASSWORD}@", 1)


async def test_bot_api_requests_go_through_http_proxy(fake, js, replicas, proxy):
    """HTTP_PROXY (the fake is http://): every Bot API call goes through the proxy, with the proxy's
    credentials as Proxy-Authorization; the message arrives; the password reaches no log line."""
    replica = replicas(fake, HTTP_PROXY=with_credentials(proxy.url))
    await replica.wait_ready()
    await publish(js)
    await wait_until(lambda: len(fake.sent) == 1, what="the message, through the proxy")
    methods = [forwarded.url.rsplit("/", 1)[-1].lower() for forwarded in proxy.forwarded]
    assert "sendmessage" in methods
    assert {"getchat", "getchatmember"} <= set(methods)  # the start-up probe went through it too
    assert len(proxy.forwarded) == len(fake.requests)  # not one request around it
    assert all(forwarded.url.startswith(fake.base_url + "/bot") for forwarded in proxy.forwarded)
    expected = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
    assert {forwarded.proxy_authorization for forwarded in proxy.forwarded} == {expected}
    [starting] = [line for line in replica.log_lines() if line.get("event") == "notifier.starting"]
    assert starting["proxy"] == f"http://{PROXY_USER}:***@{LOCALHOST}:{proxy.port}"
    assert PROXY_PASSWORD not in replica.log()


async def test_no_proxy_naming_the_host_goes_around_the_proxy(fake, js, replicas, proxy):
    """NO_PROXY=localhost,127.0.0.1: the Bot API is reached directly, the proxy sees nothing."""
    replica = replicas(fake, HTTP_PROXY=proxy.url, NO_PROXY=f"localhost, {LOCALHOST}")
    await replica.wait_ready()
    await publish(js)
    await wait_until(lambda: len(fake.sent) == 1, what="the message, directly")
    assert proxy.forwarded == []
    [starting] = [line for line in replica.log_lines() if line.get("event") == "notifier.starting"]
    assert starting["proxy"] is None


async def test_https_proxy_is_for_https_only(fake, js, replicas, proxy):
    """HTTPS_PROXY alone does not apply to an http:// Bot API (as curl and httpx choose)."""
    replica = replicas(fake, HTTPS_PROXY=proxy.url)
    await replica.wait_ready()
    await publish(js)
    await wait_until(lambda: len(fake.sent) == 1, what="the message, directly")
    assert proxy.forwarded == []
