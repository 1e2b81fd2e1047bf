"""A small scripted asyncio upstream (``FakePostfix``), the proxy on a free loopback port and a
client, for the proxy's tests (tests/unit/test_proxy_unit.py, tests/integration/test_proxy_tls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import ssl
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from smtp_policy.adapters.proxy import (
    ConfiguredTexts,
    ProxyService,
    ProxySettings,
    ReplyTexts,
)
from smtp_policy.config import BannerConfig
from smtp_policy.core.texts import TextsConfig, TextSet
from smtp_policy.data import default_knowledge
from smtp_policy.emit import EventWriter
from smtp_policy.wire.smtp import ReplyReader, ServerReply

T = TypeVar("T")
EHLO_REPLY = (
    b"250-mx.fake.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n"
    b"250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-XCLIENT NAME ADDR PROTO HELO\r\n"
    b"250-XFORWARD NAME ADDR\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n"
    b"250-SMTPUTF8\r\n250 CHUNKING\r\n"
)
TEXTS = TextsConfig(
    enhanced={
        "4.3.0": TextSet(external="We are down for maintenance, please retry in a while"),
        "5.1.1": TextSet(external="Nobody called {recipient} lives here"),
    },
    code={502: TextSet(external="Not here, sorry")},
)
BANNER = BannerConfig(greeting="{hostname} ESMTP Welcome to the proxy", goodbye="See you soon")
CLIENT_NAME = "client.example.test"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test's coroutine with a hard time limit."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


# -- the scripted upstream --------------------------------------------------------------------


@dataclass
class FakePostfix:
    """A scripted upstream smtpd; ``received`` holds every byte sent to it, per connection."""

    greeting: bytes = b"220 mx.fake.test ESMTP Postfix\r\n"
    received: list[bytearray] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> FakePostfix:
        """Listen on a free loopback port."""
        self.server = await asyncio.start_server(self._session, "127.0.0.1", 0, limit=1 << 20)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def lines(self) -> list[bytes]:
        """Every line received, over all connections."""
        return [line for data in self.received for line in bytes(data).splitlines(True)]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        self.received.append(got)
        writer.write(self.greeting)
        state = {"mail": 0, "rcpts": 0}
        try:
            while line := await reader.readline():
                got += line
                if not await self._answer(line, state, reader, writer, got):
                    break
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.closed.set()

    async def _answer(
        self,
        line: bytes,
        state: dict[str, int],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        got: bytearray,
    ) -> bool:
        verb = (line.split() or [b""])[0].upper()
        reply = _SIMPLE.get(verb)
        if verb == b"XCLIENT":
            reply = self.greeting
        elif verb == b"MAIL":
            state["mail"] = 1
        elif verb == b"RCPT" and not state["mail"]:
            reply = b"503 5.5.1 Error: need MAIL command\r\n"
        elif verb == b"RCPT" and b"bad" in line:
            await asyncio.sleep(0.05)  # a slow reply must not let later ones overtake it
            reply = b"550 5.1.1 <bad@fake.test>: Recipient address rejected: User unknown\r\n"
        elif verb == b"RCPT":
            state["rcpts"] += 1
        elif verb == b"DATA" and state["rcpts"]:
            writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            message = await _read_message(reader, got)
            self.messages.append(message)
            reply = b"250 2.0.0 Ok: queued as 4ABCDEF\r\n"
        elif verb == b"AUTH":
            writer.write(b"334 UGFzc3dvcmQ6\r\n")
            got += await reader.readline()
        elif verb == b"DIE":
            return False
        elif verb == b"SLOW":  # silent for a second, then an answer
            await asyncio.sleep(1.0)
            reply = b"250 2.0.0 Ok, at last\r\n"
        writer.write(reply or b"502 5.5.2 Error: command not recognized\r\n")
        return verb != b"QUIT"


_SIMPLE = {
    b"EHLO": EHLO_REPLY,
    b"HELO": b"250 mx.fake.test\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"DATA": b"554 5.5.1 Error: no valid recipients\r\n",
    b"AUTH": b"235 2.7.0 Authentication successful\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n",
}


async def _read_message(reader: asyncio.StreamReader, got: bytearray) -> bytes:
    """The message up to its "." line (any CRs before the LF end it, as in Postfix)."""
    start = len(got)
    while line := await reader.readline():
        got += line
        if line.rstrip(b"\n").rstrip(b"\r") == b".":
            return bytes(got[start:])
    raise ConnectionResetError("lost connection in DATA")


# -- the client -------------------------------------------------------------------------------


class Client:
    """A raw SMTP client: send bytes, read whole replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.replies = ReplyReader()

    @classmethod
    async def connect(cls, port: int) -> Client:
        """Connect to the proxy."""
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def reply(self) -> ServerReply:
        """The next whole reply."""
        while (reply := self.replies.next_reply()) is None:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError("the proxy closed the connection")
            self.replies.feed(data)
        return reply

    async def command(self, line: bytes) -> ServerReply:
        """Send one command line and read its reply."""
        self.writer.write(line + b"\r\n")
        return await self.reply()

    async def closed(self) -> bool:
        """Whether the proxy closes the connection (EOF) with nothing more to say."""
        return await self.reader.read() == b""

    @property
    def port(self) -> int:
        """The client's own port."""
        return int(self.writer.get_extra_info("sockname")[1])

    async def start_tls(self) -> None:
        """Upgrade to TLS (trusting any certificate)."""
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        await self.writer.start_tls(ctx, server_hostname="mx.fake.test")


@dataclass
class Harness:
    """The three parties of one test and the events the proxy wrote."""

    upstream: FakePostfix
    service: ProxyService
    port: int
    out: io.StringIO
    clients: list[Client] = field(default_factory=list)

    def events(self, kind: str = "reply") -> list[dict[str, Any]]:
        """The events of one kind, in order."""
        found = [json.loads(line) for line in self.out.getvalue().splitlines()]
        return [e for e in found if e["event"] == kind]

    async def connect(self) -> Client:
        """A connected client (closed when the test ends)."""
        client = await Client.connect(self.port)
        self.clients.append(client)
        return client

    async def client(self) -> Client:
        """A connected client that has read its greeting."""
        client = await self.connect()
        greeting = await client.reply()
        assert greeting.code == 220, greeting
        return client


async def fake_name(addr: str) -> str | None:
    """A resolver that knows every client by the same name."""
    return CLIENT_NAME


@asynccontextmanager
async def harness(
    texts: ReplyTexts | None = None, upstream_down: bool = False, **options: Any
) -> AsyncIterator[Harness]:
    """Start the fake upstream and the proxy; stop both afterwards."""
    upstream = await FakePostfix().start()
    port = upstream.port
    if upstream_down:
        assert upstream.server is not None
        upstream.server.close()
        await upstream.server.wait_closed()
    out = io.StringIO()
    settings = ProxySettings(upstream_port=port, **options)
    service = ProxyService(settings, default_knowledge(), EventWriter(out), texts, fake_name)
    if not upstream_down:  # the proxy asks Postfix for its greeting once: not part of a test
        await service.greeting()
        await asyncio.wait_for(upstream.closed.wait(), 5)
        upstream.received.clear()
        upstream.closed.clear()
    server = await asyncio.start_server(service.handle, "127.0.0.1", 0)
    h = Harness(upstream, service, server.sockets[0].getsockname()[1], out)
    try:
        yield h
    finally:
        for client in h.clients:
            client.writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await client.writer.wait_closed()
        server.close()
        await server.wait_closed()
        if upstream.server is not None:
            upstream.server.close()


def configured() -> ConfiguredTexts:
    """The admin's texts of these tests."""
    return ConfiguredTexts(TEXTS, BANNER)
