"""The SMTP front proxy against a small scripted asyncio upstream (fast; no Postfix).

Each test runs one event loop holding three parties: a ``FakePostfix`` upstream that records
every byte it receives, the proxy (``ProxyService`` on a free loopback port) and a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from smtp_policy.adapters.proxy import (
    ConfiguredTexts,
    ProxyService,
    ProxySettings,
    ReplyTexts,
    tls_context,
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


# -- the tests --------------------------------------------------------------------------------


def test_greeting_and_goodbye_are_the_admins() -> None:
    """The client hears [banner]'s 220 and 221; both are recorded with Postfix's originals."""

    async def scenario() -> None:
        async with harness(configured()) as h:
            client = await h.connect()
            greeting = await client.reply()
            assert greeting == ServerReply(220, ("mx.fake.test ESMTP Welcome to the proxy",))
            bye = await client.command(b"QUIT")
            assert bye == ServerReply(221, ("2.0.0 See you soon",))
            assert await client.closed()
            first, last = h.events()
            assert first["stage"] == "connect"
            assert first["text"] == "220 mx.fake.test ESMTP Postfix"
            assert first["friendly"] == "mx.fake.test ESMTP Welcome to the proxy"
            assert first["source"] == "proxy"
            assert first["direction"] == "upstream"
            assert last["command"] == "QUIT"
            assert last["text"] == "221 2.0.0 Bye"
            assert last["friendly"] == "See you soon"
            assert last["rewritten"] is True

    run(scenario())


def test_xclient_passes_the_real_client() -> None:
    """The proxy's first command upstream is XCLIENT with the client's address, port, name."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            await client.command(b"QUIT")
            first = h.upstream.lines[0]
            assert first == (
                f"XCLIENT NAME={CLIENT_NAME} ADDR=127.0.0.1 PORT={client.port}\r\n".encode()
            )

    run(scenario())


def test_pipelined_replies_keep_their_order() -> None:
    """A pipelined group gets its replies in command order, the proxy's own among them."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            await client.command(b"EHLO client.test")
            client.writer.write(
                b"MAIL FROM:<s@fake.test>\r\nRCPT TO:<bad@fake.test>\r\n"
                b"XCLIENT ADDR=192.0.2.66\r\nRCPT TO:<ok@fake.test>\r\n" + b"x" * 600 + b"\r\n"
                b"RCPT TO:<ok2@fake.test>\r\nDATA\r\n"
            )
            codes = [(await client.reply()).code for _ in range(7)]
            assert codes == [250, 550, 502, 250, 500, 250, 354]
            client.writer.write(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
            assert (await client.reply()).code == 250
            assert (await client.reply()).code == 221
            commands = [e["command"] for e in h.events()]
            assert commands == [
                *(None, "EHLO", "MAIL", "RCPT", "XCLIENT", "RCPT", None, "RCPT"),
                *("DATA", ".", "QUIT"),
            ]

    run(scenario())


def test_client_xclient_and_xforward_never_reach_postfix() -> None:
    """A client's XCLIENT/XFORWARD get 502 5.5.1 and are not forwarded."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            for line in (b"XCLIENT ADDR=192.0.2.66 NAME=trusted.test", b"xforward ADDR=1.2.3.4"):
                reply = await client.command(line)
                assert reply.code == 502
                assert reply.lines[0].startswith("5.5.1 ")
            await client.command(b"QUIT")
            forwarded = h.upstream.lines[1:]
            assert not [ln for ln in forwarded if ln.upper().startswith((b"XCLIENT", b"XFORW"))]
            assert [e["origin"] for e in h.events()][1:3] == ["proxy", "proxy"]

    run(scenario())


def test_data_is_passed_through_byte_exact() -> None:
    """The message reaches Postfix exactly as sent; the client hears Postfix's 250."""
    message = (
        b"Subject: dots\r\n\r\n..stuffed\r\n. not the end\r\nbare\nlf\n\xff 8-bit\r\n"
        + b"long " * 20_000
        + b"\r\n.\r\n"
    )

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            for line in (b"EHLO c.test", b"MAIL FROM:<s@fake.test>", b"RCPT TO:<a@fake.test>"):
                assert (await client.command(line)).code == 250
            assert (await client.command(b"DATA")).code == 354
            for i in range(0, len(message), 777):
                client.writer.write(message[i : i + 777])
            done = await client.reply()
            assert done == ServerReply(250, ("2.0.0 Ok: queued as 4ABCDEF",))
            await client.command(b"QUIT")
            assert h.upstream.messages == [message]
            eom = h.events()[-2]
            assert eom["stage"] == "eom"
            assert eom["queue_id"] == "4ABCDEF"
            assert eom["sender"] == "<s@fake.test>"

    run(scenario())


def test_refused_data_keeps_reading_commands() -> None:
    """When Postfix refuses DATA, what the client sends next is read as commands."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            await client.command(b"MAIL FROM:<s@fake.test>")
            assert (await client.command(b"DATA")).code == 554
            assert (await client.command(b"NOOP")).code == 250
            await client.command(b"QUIT")
            assert h.upstream.messages == []

    run(scenario())


def test_ehlo_advertises_only_what_the_proxy_handles() -> None:
    """EHLO keeps SIZE, 8BITMIME, ... and drops XCLIENT, CHUNKING, STARTTLS, AUTH, ETRN."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            ehlo = await client.command(b"EHLO client.test")
            assert ehlo.lines == (
                "mx.fake.test",
                "PIPELINING",
                "SIZE 10240000",
                "ENHANCEDSTATUSCODES",
                "8BITMIME",
                "DSN",
                "SMTPUTF8",
            )
            assert (await client.command(b"BDAT 10 LAST")).code == 502
            assert (await client.command(b"STARTTLS")).code == 502
            await client.command(b"QUIT")

    run(scenario())


def test_failures_are_rewritten_and_recorded() -> None:
    """A 5xx gets the admin's text for its enhanced code; the event keeps both texts."""

    async def scenario() -> None:
        async with harness(configured()) as h:
            client = await h.client()
            assert (await client.command(b"RCPT TO:<x@fake.test>")).code == 503
            await client.command(b"MAIL FROM:<s@fake.test>")
            reply = await client.command(b"RCPT TO:<bad@fake.test>")
            assert reply == ServerReply(550, ("5.1.1 Nobody called bad@fake.test lives here",))
            await client.command(b"QUIT")
            rcpt = [e for e in h.events() if e["command"] == "RCPT"]
            assert rcpt[0]["code"] == 503
            assert rcpt[0]["rewritten"] is True
            assert rcpt[1]["text"].startswith("550 5.1.1 <bad@fake.test>: Recipient address")
            assert rcpt[1]["friendly"] == "Nobody called bad@fake.test lives here"
            assert rcpt[1]["reason"] == "user_unknown"
            assert rcpt[1]["recipient"] == "<bad@fake.test>"
            assert rcpt[1]["client_name"] == CLIENT_NAME

    run(scenario())


def test_upstream_down_gives_421_with_the_admins_text() -> None:
    """No upstream: 421 4.3.0 with the admin's text, an error event, and the door closes."""

    async def scenario() -> None:
        async with harness(configured(), upstream_down=True) as h:
            client = await h.connect()
            reply = await client.reply()
            assert reply == ServerReply(
                421, ("4.3.0 We are down for maintenance, please retry in a while",)
            )
            assert await client.closed()
            (error,) = h.events("error")
            assert "unavailable" in error["text"]
            (answer,) = h.events()
            assert answer["origin"] == "proxy"
            assert answer["enhanced"] == "4.3.0"

    run(scenario())


def test_upstream_lost_mid_session_gives_421() -> None:
    """Postfix closing mid-session: the client hears 421 4.3.0, then the proxy closes."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            reply = await client.command(b"DIE")
            assert reply.code == 421
            assert reply.lines[0].startswith("4.3.0 ")
            assert await client.closed()
            assert "upstream lost" in h.events("error")[0]["text"]

    run(scenario())


def test_client_drop_sends_quit_upstream() -> None:
    """A client that hangs up between commands: the proxy says QUIT to Postfix."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            await client.command(b"NOOP")
            client.writer.close()
            await asyncio.wait_for(h.upstream.closed.wait(), 5)
            assert h.upstream.lines[-1] == b"QUIT\r\n"

    run(scenario())


def test_client_drop_mid_message_sends_nothing_more() -> None:
    """A client that hangs up inside DATA: no QUIT, no end of data; Postfix drops the mail."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            await client.command(b"MAIL FROM:<s@fake.test>")
            await client.command(b"RCPT TO:<a@fake.test>")
            await client.command(b"DATA")
            client.writer.write(b"Subject: half\r\n\r\nhal")
            await client.writer.drain()
            await asyncio.sleep(0.05)
            client.writer.close()
            await asyncio.wait_for(h.upstream.closed.wait(), 5)
            assert h.upstream.messages == []
            assert bytes(h.upstream.received[0]).endswith(b"Subject: half\r\n\r\nhal")

    run(scenario())


def test_connection_limit() -> None:
    """Beyond max_connections a client gets 421 4.7.0 and nothing reaches Postfix."""

    async def scenario() -> None:
        async with harness(max_connections=1) as h:
            first = await h.client()
            second = await h.connect()
            reply = await second.reply()
            assert reply.code == 421
            assert reply.lines[0].startswith("4.7.0 ")
            assert await second.closed()
            await first.command(b"QUIT")
            assert len(h.upstream.received) == 1

    run(scenario())


def test_idle_timeout() -> None:
    """A silent client gets 421 4.4.2 and Postfix gets QUIT."""

    async def scenario() -> None:
        async with harness(idle_timeout=0.2) as h:
            client = await h.client()
            reply = await client.reply()
            assert reply.code == 421
            assert reply.lines[0].startswith("4.4.2 ")
            assert await client.closed()
            await asyncio.wait_for(h.upstream.closed.wait(), 5)
            assert h.upstream.lines[-1] == b"QUIT\r\n"

    run(scenario())


def test_auth_continuation_is_relayed_but_never_recorded() -> None:
    """A 334 makes the next line an AUTH continuation; no event carries the secret."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            assert (await client.command(b"AUTH LOGIN dXNlcg==")).code == 334
            assert (await client.command(b"c2VjcmV0LXBhc3N3b3Jk")).code == 235
            await client.command(b"QUIT")
            assert b"c2VjcmV0LXBhc3N3b3Jk\r\n" in h.upstream.lines
            assert "c2VjcmV0" not in h.out.getvalue()
            assert "dXNlcg" not in h.out.getvalue()
            assert [e["command"] for e in h.events()][1:3] == ["AUTH", "AUTH"]

    run(scenario())


@pytest.fixture(name="certificate", scope="module")
def _certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for mx.test (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=mx.test"),
            *("-days", "1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_starttls_is_terminated_by_the_proxy(certificate: tuple[Path, Path]) -> None:
    """STARTTLS: 220 from the proxy, TLS recorded, plaintext pipelined after it dropped."""
    cert, key = certificate

    async def scenario() -> None:
        async with harness(tls=tls_context(str(cert), str(key))) as h:
            client = await h.client()
            assert "STARTTLS" in (await client.command(b"EHLO client.test")).lines
            client.writer.write(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
            ready = await client.reply()
            assert ready == ServerReply(220, ("2.0.0 Ready to start TLS",))
            await client.start_tls()
            ehlo = await client.command(b"EHLO client.test")
            assert "STARTTLS" not in ehlo.lines
            assert (await client.command(b"STARTTLS")).code == 503
            await client.command(b"QUIT")
            assert not [ln for ln in h.upstream.lines if b"injected" in ln or b"STARTTLS" in ln]
            (tls,) = h.events("tls")
            assert tls["tls_version"].startswith("TLSv1.")
            assert tls["tls_cipher"]
            assert tls["dropped_plaintext"] == len(b"MAIL FROM:<injected@evil.test>\r\n")
            assert h.events()[-1]["tls_version"] == tls["tls_version"]

    run(scenario())


def test_every_reply_passes_the_sanitizer() -> None:
    """Upstream text with control bytes and 8-bit reaches the client as clean ASCII."""

    async def scenario() -> None:
        async with harness() as h:
            h.upstream.greeting = b"220 mx.fake.test \x01ESMTP\t\xc3\xa9t\xc3\xa9\r\n"
            client = await h.connect()
            raw = await client.reader.readline()
            assert raw == b"220 mx.fake.test ESMTP ete\r\n"
            await client.command(b"QUIT")

    run(scenario())


def test_many_pipelined_commands_are_bounded() -> None:
    """More pipelined commands than max_pipeline: all answered, in order."""

    async def scenario() -> None:
        async with harness(max_pipeline=4) as h:
            client = await h.client()
            client.writer.write(b"NOOP\r\n" * 50 + b"RSET\r\n")
            codes = [(await client.reply()).code for _ in range(51)]
            assert codes == [250] * 51
            await client.command(b"QUIT")
            assert len(h.upstream.lines) == 1 + 51 + 1

    run(scenario())


def test_over_long_auth_answer_cancels_the_exchange() -> None:
    """An AUTH answer over 12288 octets is replaced by "*" (RFC 4954 cancel), never forwarded."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            assert (await client.command(b"AUTH LOGIN")).code == 334
            await client.command(b"A" * 13000)
            assert (await client.command(b"NOOP")).code == 250
            await client.command(b"QUIT")
            assert b"*\r\n" in h.upstream.lines
            assert not [ln for ln in h.upstream.lines if b"AAAA" in ln]

    run(scenario())


def test_bare_lf_dot_ends_data_as_in_postfix() -> None:
    """ "<LF>.<LF>" ends the message for the proxy exactly as for Postfix: replies stay in step."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            await client.command(b"MAIL FROM:<s@fake.test>")
            await client.command(b"RCPT TO:<a@fake.test>")
            assert (await client.command(b"DATA")).code == 354
            client.writer.write(b"Subject: lf\n\nbody\n.\nMAIL FROM:<next@fake.test>\r\n")
            assert (await client.reply()).code == 250  # the message
            assert (await client.reply()).code == 250  # MAIL, a command again
            await client.command(b"QUIT")
            assert h.upstream.messages == [b"Subject: lf\n\nbody\n.\n"]

    run(scenario())
