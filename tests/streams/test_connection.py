"""streams.connection.connect notices a dead server in seconds, not the minutes of nats-py's defaults."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from typing import Self

import pytest

from streams import connection
from streams.connection import NatsSettings
from tests.services import LOCALHOST, NatsServer


class FreezableProxy:
    """A TCP proxy to nats-server whose open connections can be frozen.

    Freezing stops forwarding in both directions while both sockets stay open: what a client sees of a
    server behind a dead network path or a crashed host (a half-open connection, no FIN, no RST).
    Connections made after the freeze are forwarded normally, so a client can reconnect.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, LOCALHOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self.freeze()
        for writer in self._writers:
            writer.close()
        # closed and collected while the loop runs: a StreamWriter collected after it warns (ResourceWarning)
        await asyncio.gather(*(writer.wait_closed() for writer in self._writers), return_exceptions=True)
        self._writers.clear()
        await self._server.wait_closed()
        gc.collect()

    @property
    def url(self) -> str:
        return f"nats://{LOCALHOST}:{self.port}"

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_reader, server_writer = await asyncio.open_connection(LOCALHOST, self.upstream_port)
        self._writers += [client_writer, server_writer]
        for reader, writer in ((client_reader, server_writer), (server_reader, client_writer)):
            pump = asyncio.create_task(self._pump(reader, writer))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def freeze(self) -> None:
        """Stop forwarding on every open connection; leave the sockets open."""
        pumps = list(self._pumps)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


def test_a_stale_connection_is_declared_within_ten_seconds() -> None:
    """nats-py declares the connection stale when a tick finds more than max_outstanding_pings unanswered.

    So the worst case is (MAX_OUTSTANDING_PINGS + 1) * PING_INTERVAL after the server stops answering.
    """
    assert connection.PING_INTERVAL * connection.MAX_OUTSTANDING_PINGS <= 10
    assert (connection.MAX_OUTSTANDING_PINGS + 1) * connection.PING_INTERVAL <= 10
    # a server under load still has a few seconds to answer a ping before we give up on it
    assert connection.MAX_OUTSTANDING_PINGS * connection.PING_INTERVAL >= 4


async def test_half_open_connection_is_noticed_and_replaced(nats_server: NatsServer) -> None:
    """A server that stops answering (sockets still open) is dropped, and the client reconnects.

    Causal rather than timed: the client runs with PING_INTERVAL and MAX_OUTSTANDING_PINGS (checked
    above to bound the wait by 9 s), and with the proxy frozen (no FIN, no RST, no byte) only its own
    unanswered pings can tell it the server is gone. The wait's limit only keeps a client with nats-py's
    defaults (minutes) from passing or hanging the test.
    """
    disconnected = asyncio.Event()
    reconnected = asyncio.Event()

    async def on_disconnected() -> None:
        disconnected.set()

    async def on_reconnected() -> None:
        reconnected.set()

    async with FreezableProxy(nats_server.port) as proxy:
        settings = NatsSettings.model_validate({"NATS_URL": proxy.url})
        nc = await connection.connect(
            settings,
            name="test-half-open",
            identity="streams",
            on_disconnected=on_disconnected,
            on_reconnected=on_reconnected,
        )
        try:
            assert nc.options["ping_interval"] == connection.PING_INTERVAL
            assert nc.options["max_outstanding_pings"] == connection.MAX_OUTSTANDING_PINGS
            await nc.flush(timeout=2)
            assert nc.is_connected
            await proxy.freeze()
            bound = (connection.MAX_OUTSTANDING_PINGS + 1) * connection.PING_INTERVAL
            await asyncio.wait_for(disconnected.wait(), timeout=2 * bound)
            assert proxy.connections == 1, "the client noticed without a new connection being made"
            await asyncio.wait_for(reconnected.wait(), timeout=2 * bound)
            await nc.flush(timeout=2)  # the new connection works
        finally:
            await nc.close()
            gc.collect()  # nats-py's stale transport, collected while the loop still runs

    assert proxy.connections == 2


def test_redact_url_hides_every_password_and_token_of_a_list() -> None:
    given = "nats://web:s3cret-one@n1:4222, nats://TOKEN-abc123@[fd00::2]:4222,tls://n3.example:4443"
    assert connection.redact_url(given) == "nats://web:***@n1:4222,nats://***@[fd00::2]:4222,tls://n3.example:4443"
    assert connection.url_secrets(given) == ["s3cret-one", "TOKEN-abc123"]


def test_redact_url_never_raises_and_keeps_what_it_cannot_read_out() -> None:
    assert connection.redact_url("nats://u:pw@[::1]:4222") == "nats://u:***@[::1]:4222"  # brackets kept
    assert connection.redact_url("nats://u:pw@host:99999x") == "nats://u:***@host:99999x"  # bad port: no traceback
    assert connection.redact_url("nats://[::1") == "<unparsable URL>"
    # as the server receives it, and as written (a library that quotes the URL shows it percent-encoded)
    assert connection.url_secrets("nats://u:p%40ss@h") == ["p@ss", "p%40ss"]


def test_a_bad_server_in_a_list_is_named_by_position_not_by_content(monkeypatch) -> None:
    monkeypatch.setenv("NATS_URL", "nats://a:pw-one@h1:4222,nats://b:pw-two@h2:notaport")
    try:
        NatsSettings.from_env()
    except SystemExit as stop:
        message = str(stop)
    else:
        raise AssertionError("a port that is no number must be refused")
    assert "server 2 of the list" in message
    assert "pw-" not in message


async def test_connect_registers_the_passwords_of_every_server_for_redaction(nats_server: NatsServer) -> None:
    """A library error quoting a server URL would carry its password: every log line is scrubbed of it."""
    from streams.logs import redact  # noqa: PLC0415

    url = f"nats://user:pw-{id(nats_server)}@127.0.0.1:1,{nats_server.url}"
    nc = await connection.connect(
        NatsSettings(NATS_URL=url), name="redaction-test", identity="streams", max_reconnect_attempts=1
    )
    try:
        assert (
            redact(f"error at nats://user:pw-{id(nats_server)}@127.0.0.1:1")
            == "error at nats://user:[REDACTED]@127.0.0.1:1"
        )
    finally:
        await nc.close()


async def test_a_tls_url_never_sends_its_credentials_to_a_server_that_does_not_offer_tls() -> None:
    """A server (or someone in between) that answers a tls:// URL with a plain INFO: the client refuses
    right after INFO, so CONNECT, and the password in it, never leave the machine. nats-py alone would
    send CONNECT in clear text and only then could anyone notice."""
    received = bytearray()

    async def plain_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'INFO {"server_id":"x","version":"2.10.0","proto":1,"max_payload":1048576,"headers":true}\r\n')
        await writer.drain()
        with contextlib.suppress(Exception):
            while chunk := await asyncio.wait_for(reader.read(4096), timeout=2):
                received.extend(chunk)
        writer.close()

    server = await asyncio.start_server(plain_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = NatsSettings(NATS_URL=f"tls://web:pw-never-sent@127.0.0.1:{port}")
        with pytest.raises(connection.PlainTextRefusedError):
            await connection.connect(settings, name="tls-test", identity="web", max_reconnect_attempts=1)
    finally:
        server.close()
        await server.wait_closed()
    assert b"CONNECT" not in received
    assert b"pw-never-sent" not in received
