"""python-telegram-bot's HTTP transport on aiohttp instead of httpx.

httpx slows down as concurrent requests grow (measured here against the fake: ~100 sends/s with 64
connections, ~400/s one at a time), which would cap a replica far below 1,000 events/s. PTB lets the
transport be replaced (`telegram.request.BaseRequest`); this one keeps PTB's error mapping and adds
no logging of URLs (which hold the token).

A proxy is given explicitly (`proxy`, from notifier.settings): the session ignores the environment
(aiohttp's trust_env is off, so no HTTPS_PROXY nor ~/.netrc is read behind the settings' back), where
PTB's own httpx transport would read HTTPS_PROXY/ALL_PROXY itself.
"""

from __future__ import annotations

from urllib.parse import urlencode

import aiohttp
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class TransportError(NetworkError):
    """No answer from the Bot API. `maybe_delivered`: the request went out, so Telegram may have accepted it."""

    def __init__(self, message: str, *, maybe_delivered: bool) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class AiohttpRequest(BaseRequest):
    """Form-encoded POSTs over one pooled aiohttp session with explicit connect and read timeouts."""

    def __init__(
        self, *, pool_size: int, read_timeout: float, connect_timeout: float, proxy: str | None = None
    ) -> None:
        self._pool_size = pool_size
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._proxy = proxy  # http(s)://[user:password@]host:port; its credentials go as Proxy-Authorization
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float:
        return self._read_timeout

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": self.USER_AGENT}, cookie_jar=aiohttp.DummyCookieJar()
            )

    async def shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def do_request(  # noqa: PLR0913, PLR0917 (BaseRequest's signature)
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        del write_timeout, pool_timeout  # bodies are small; the connector's limit queues requests
        if self._session is None:
            raise RuntimeError("AiohttpRequest is not initialized")
        if request_data is not None and request_data.contains_files:
            raise NetworkError("uploading files is not supported by this transport")
        read = self._read_timeout if isinstance(read_timeout, DefaultValue) or read_timeout is None else read_timeout
        connect = (
            self._connect_timeout
            if isinstance(connect_timeout, DefaultValue) or connect_timeout is None
            else connect_timeout
        )
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
        # encoded here: aiohttp's own FormData path costs ~40% more CPU per request
        body = urlencode(request_data.json_parameters) if request_data is not None else ""
        try:
            async with self._session.request(
                method, url, data=body, headers=_FORM, timeout=timeout, proxy=self._proxy
            ) as response:
                return response.status, await response.read()
        except TimeoutError as error:
            raise TimedOut from error
        except aiohttp.ClientError as error:
            # the URL holds the token: never let it into the message
            message = str(error).replace(url, "<bot api url>")
            # refused or unresolvable: the request never left; anything later may have reached Telegram
            sent = not isinstance(error, aiohttp.ClientConnectorError)
            raise TransportError(f"aiohttp.{type(error).__name__}: {message}", maybe_delivered=sent) from error
