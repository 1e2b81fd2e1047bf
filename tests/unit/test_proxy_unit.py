"""The SMTP front proxy against a small scripted asyncio upstream (fast; no Postfix).

Each test runs one event loop holding three parties: a ``FakePostfix`` upstream that records
every byte it receives, the proxy (``ProxyService`` on a free loopback port) and a client.
"""

from __future__ import annotations

import asyncio

import pytest

from smtp_policy.wire.smtp import ServerReply
from tests.proxy_harness import CLIENT_NAME, configured, harness, run

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
            assert first.get("stage") == "connect"
            assert first.get("text") == "220 mx.fake.test ESMTP Postfix"
            assert first.get("friendly") == "mx.fake.test ESMTP Welcome to the proxy"
            assert first["source"] == "proxy"
            assert first.get("direction") == "upstream"
            assert last["command"] == "QUIT"
            assert last.get("text") == "221 2.0.0 Bye"
            assert last.get("friendly") == "See you soon"
            assert last["rewritten"] is True

    run(scenario())


def test_xclient_passes_the_real_client() -> None:
    """The proxy's first command upstream is XCLIENT with the client's address, port, name."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            await client.command(b"EHLO client.test")
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


def test_data_is_passed_through_with_crlf_line_ends() -> None:
    """The message reaches Postfix as sent but for bare LFs, now CRLF; the client hears 250."""
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
            assert h.upstream.messages == [message.replace(b"bare\nlf\n", b"bare\r\nlf\r\n")]
            eom = h.events()[-2]
            assert eom.get("stage") == "eom"
            assert eom.get("queue_id") == "4ABCDEF"
            assert eom.get("sender") == "s@fake.test"

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
            assert rcpt[0].get("code") == 503
            assert rcpt[0]["rewritten"] is True
            assert rcpt[1]["text"].startswith("550 5.1.1 <bad@fake.test>: Recipient address")
            assert rcpt[1].get("friendly") == "Nobody called bad@fake.test lives here"
            assert rcpt[1].get("reason") == "user_unknown"
            assert rcpt[1].get("recipient") == "bad@fake.test"
            assert rcpt[1].get("client_name") == CLIENT_NAME

    run(scenario())


def test_upstream_down_gives_421_with_the_admins_text() -> None:
    """No upstream: the proxy greets, answers the first command 421 4.3.0 with the admin's
    text, writes an error event and closes."""

    async def scenario() -> None:
        async with harness(configured(), upstream_down=True) as h:
            client = await h.client()
            reply = await client.command(b"EHLO client.test")
            assert reply == ServerReply(
                421, ("4.3.0 We are down for maintenance, please retry in a while",)
            )
            assert await client.closed()
            (error,) = h.events("error")
            assert "unavailable" in error["text"]
            greeting, answer = h.events()
            assert greeting["code"] == 220
            assert answer["command"] == "EHLO"
            assert answer["origin"] == "proxy"
            assert answer.get("enhanced") == "4.3.0"

    run(scenario())


def test_upstream_lost_mid_session_gives_421() -> None:
    """Postfix closing mid-session: the client hears 421 4.3.0, then the proxy closes."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            await client.command(b"EHLO client.test")
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
            await first.command(b"EHLO client.test")
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
            await client.command(b"EHLO client.test")
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
        async with harness(offer_auth=True) as h:
            client = await h.client()
            assert "AUTH PLAIN LOGIN" in (await client.command(b"EHLO c.test")).lines
            assert (await client.command(b"AUTH LOGIN dXNlcg==")).code == 334
            assert (await client.command(b"c2VjcmV0LXBhc3N3b3Jk")).code == 235
            await client.command(b"QUIT")
            assert b"c2VjcmV0LXBhc3N3b3Jk\r\n" in h.upstream.lines
            assert "c2VjcmV0" not in h.out.getvalue()
            assert "dXNlcg" not in h.out.getvalue()
            assert [e["command"] for e in h.events()][2:4] == ["AUTH", "AUTH"]

    run(scenario())


def test_every_reply_passes_the_sanitizer() -> None:
    """Upstream text with control bytes and 8-bit reaches the client as clean ASCII."""

    async def scenario() -> None:
        async with harness() as h:
            h.upstream.greeting = b"220 mx.fake.test \x01ESMTP\t\xc3\xa9t\xc3\xa9\r\n"
            first = await h.client()  # the proxy learns Postfix's greeting from each session
            await first.command(b"EHLO client.test")
            await first.command(b"QUIT")
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
        async with harness(offer_auth=True) as h:
            client = await h.client()
            assert (await client.command(b"AUTH LOGIN")).code == 334
            await client.command(b"A" * 13000)
            assert (await client.command(b"NOOP")).code == 250
            await client.command(b"QUIT")
            assert b"*\r\n" in h.upstream.lines
            assert not [ln for ln in h.upstream.lines if b"AAAA" in ln]

    run(scenario())


@pytest.mark.parametrize("sequence", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r\r\n", b"\r.\r"])
def test_smuggling_sequence_does_not_end_the_message(sequence: bytes) -> None:
    """A "." line next to a bare LF or CR is content: one message, sent on dot-stuffed."""
    smuggled = b"MAIL FROM:<next@fake.test>\r\nRCPT TO:<a@fake.test>\r\nDATA\r\nforged\r\n"

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            await client.command(b"MAIL FROM:<s@fake.test>")
            await client.command(b"RCPT TO:<a@fake.test>")
            assert (await client.command(b"DATA")).code == 354
            client.writer.write(b"Subject: lf\r\n\r\nbody" + sequence + smuggled + b".\r\n")
            assert (await client.reply()).code == 250  # the one message
            assert (await client.command(b"QUIT")).code == 221
            (message,) = h.upstream.messages
            assert message.startswith(b"Subject: lf\r\n\r\nbody\r\n..\r\n")
            assert message.endswith(smuggled + b".\r\n")
            assert [e["command"] for e in h.events()][-2:] == [".", "QUIT"]

    run(scenario())


def test_auth_is_refused_unless_offered() -> None:
    """Without offer_auth, AUTH is not advertised, gets 502 5.5.1 and never reaches Postfix."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            ehlo = await client.command(b"EHLO c.test")
            assert not [line for line in ehlo.lines if line.startswith("AUTH")]
            reply = await client.command(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==")
            assert reply.code == 502
            assert reply.lines[0].startswith("5.5.1 ")
            assert (await client.command(b"QUIT")).code == 221
            assert not [ln for ln in h.upstream.lines if ln.upper().startswith(b"AUTH")]

    run(scenario())


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"XCLIENT\x00 ADDR=192.0.2.66 NAME=trusted.test", id="nul-in-verb"),
        pytest.param(b"NO\rOP", id="bare-cr"),
        pytest.param(b"MAIL FROM:<a@b.test>\r", id="cr-cr-lf"),
        pytest.param(b"HELO a\x1bb.test", id="escape"),
        pytest.param(b"RCPT TO:<a@b.test>\x7f", id="del"),
        pytest.param(b"EHLO\tc.test", id="tab"),
    ],
)
def test_command_with_a_control_character_gets_500(line: bytes) -> None:
    """NUL, a stray CR or another control in a command: 500 5.5.2, never forwarded."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            reply = await client.command(line)
            assert reply.code == 500
            assert reply.lines[0].startswith("5.5.2 ")
            assert (await client.command(b"NOOP")).code == 250
            assert (await client.command(b"QUIT")).code == 221
            assert h.upstream.lines[1:] == [b"NOOP\r\n", b"QUIT\r\n"]
            assert not h.events("error")

    run(scenario())


def test_quoted_recipient_is_recorded_whole() -> None:
    """``<"a>b"@x>`` is one address (RFC 5321 quoted local part), in events without brackets."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            await client.command(b'MAIL FROM:<"s>t"@fake.test> SIZE=10')
            await client.command(b'RCPT TO:<"a>b"@fake.test> NOTIFY=NEVER')
            await client.command(b"QUIT")
            rcpt = h.events()[2]
            assert rcpt.get("recipient") == '"a>b"@fake.test'
            assert rcpt.get("sender") == '"s>t"@fake.test'

    run(scenario())


def test_banner_templates_are_cached_by_the_values_they_use() -> None:
    """A [banner] template renders once per value of its placeholders, and only plain ones
    are cached: the same lines as rendering it every time."""
    from smtp_policy.adapters.proxy import _BannerTemplate
    from smtp_policy.core.texts import render_template

    contexts = [
        {"hostname": host, "date": date, "client_addr": "192.0.2.1"}
        for host in ("mx1.example.test", "mx2.example.test")
        for date in ("Mon, 1 Jan 2024", "Tue, 2 Jan 2024")
    ]
    for template in ("{hostname} ESMTP", "{hostname} ESMTP {date}", "Bye", "{client_addr}"):
        banner = _BannerTemplate(template, 220)
        for context in contexts * 2:
            assert banner.render(context) == render_template(template, context, code=220)
    assert _BannerTemplate("{hostname} ESMTP", 220).names == ("hostname",)
    assert _BannerTemplate("{hostname:>{date}}", 220).names is None
    assert _BannerTemplate("{hostname[0]}", 220).names is None


def test_reply_events_failures_writes_failures_and_one_session_event() -> None:
    """reply_events="failures": 4xx/5xx replies keep their events; the others are counted
    in one session event per connection, with the messages and their queue ids."""

    async def scenario() -> None:
        async with harness(reply_events="failures") as h:
            client = await h.client()
            await client.command(b"EHLO client.test")
            await client.command(b"MAIL FROM:<s@fake.test>")
            assert (await client.command(b"RCPT TO:<bad@fake.test>")).code == 550
            await client.command(b"RCPT TO:<ok@fake.test>")
            assert (await client.command(b"DATA")).code == 354
            assert (await client.command(b"Subject: x\r\n\r\nhi\r\n.")).code == 250
            await client.command(b"QUIT")
            assert await client.closed()
            for _ in range(100):  # the session event is written as the session closes
                if h.events("session"):
                    break
                await asyncio.sleep(0.01)
            replies = h.events()
            assert [(e["command"], e.get("code")) for e in replies] == [("RCPT", 550)]
            (session,) = h.events("session")
            assert session["source"] == "proxy"
            assert session.get("stage") == "close"
            stages = ("connect", "helo", "mail", "rcpt", "data", "eom", "quit")
            assert session["replies"] == dict.fromkeys(stages, 1)
            assert session["messages"] == 1
            assert session["queue_ids"] == ["4ABCDEF"]
            assert session["duration_ms"] >= 0
            assert session.get("session") == replies[0].get("session")

    run(scenario())


def test_a_session_sent_before_the_greeting_is_answered_in_order() -> None:
    """What a client writes before the proxy greets it (and before the client's side is taken
    over from the server's stream) is handled after the greeting, every reply in order."""

    async def scenario() -> None:
        async with harness() as h:
            client = await h.connect()
            client.writer.write(
                b"EHLO c.test\r\nMAIL FROM:<s@fake.test>\r\nRCPT TO:<a@fake.test>\r\nDATA\r\n"
                b"Subject: early\r\n\r\nbody\r\n.\r\nQUIT\r\n"
            )
            codes = [(await client.reply()).code for _ in range(7)]
            assert codes == [220, 250, 250, 250, 354, 250, 221]
            assert h.upstream.messages == [b"Subject: early\r\n\r\nbody\r\n.\r\n"]
            assert await client.closed()

    run(scenario())


def test_a_message_pipelined_behind_data_waits_for_354_whole() -> None:
    """A client that sends a large message right behind DATA, without waiting for 354: the
    proxy stops reading while the bytes wait (back-pressure), then passes all of it on."""
    body = b"".join(b"line %06d of a large message\r\n" % i for i in range(40_000))

    async def scenario() -> None:
        async with harness() as h:
            client = await h.client()
            client.writer.write(
                b"EHLO c.test\r\nMAIL FROM:<s@fake.test>\r\nRCPT TO:<a@fake.test>\r\nDATA\r\n"
                + body
                + b".\r\nQUIT\r\n"
            )
            codes = [(await client.reply()).code for _ in range(6)]
            assert codes == [250, 250, 250, 354, 250, 221]
            assert h.upstream.messages == [body + b".\r\n"]

    run(scenario())


def test_a_client_gone_before_its_greeting_ends_its_session() -> None:
    """A client that connects and closes (or resets) at once: its session ends, none hangs."""

    async def scenario() -> None:
        async with harness() as h:
            for abort in (False, True):
                greeted = len(h.events())
                client = await h.connect()
                if abort:
                    client.writer.transport.abort()
                else:
                    client.writer.close()
                for _ in range(300):  # its greeting recorded (it ran), then its session over
                    if len(h.events()) > greeted and not h.service.active:
                        break
                    await asyncio.sleep(0.01)
                assert len(h.events()) > greeted
                assert h.service.active == 0

    run(scenario())


def test_a_busy_session_ends_at_its_total_time_limit() -> None:
    """A client that keeps talking (never idle) still gets 421 4.4.2 at session_timeout."""

    async def scenario() -> None:
        async with harness(session_timeout=0.5) as h:
            client = await h.client()
            assert (await client.command(b"EHLO c.test")).code == 250
            codes = []
            for _ in range(40):
                reply = await client.command(b"NOOP")
                codes.append(reply.code)
                if reply.code != 250:
                    break
                await asyncio.sleep(0.05)
            assert codes[-1] == 421 and set(codes[:-1]) == {250}
            assert reply.lines[0].startswith("4.4.2")
            assert await client.closed()

    run(scenario())


@pytest.mark.parametrize(
    "reply",
    [
        ServerReply(250, ("2.0.0 Ok: queued as 4ABCDEF0123",)),
        ServerReply(250, ("2.0.0 Ok: queued as 4dLkq60bQnz9vQ",)),
        ServerReply(250, ("2.0.0 Ok: queued as QQQQQQ (QQQQQQ)",)),
        ServerReply(250, ("2.0.0 Ok: queued as 4ABC", "id 4ABC again")),
        ServerReply(250, ("2.0.0 Ok: queued as 4ABCD " + "x" * 600,)),
    ],
)
def test_a_queue_id_reply_is_worked_out_as_without_the_masked_caches(reply: ServerReply) -> None:
    """What the proxy sends and records for a reply naming a queue id is what it would be
    without the caches that mask the id (the id does not make each reply a new text)."""
    import io
    import re

    from smtp_policy.adapters.proxy import ProxyService, ProxySettings
    from smtp_policy.core.events import described_fields
    from smtp_policy.core.explain import explain_text
    from smtp_policy.data import default_knowledge
    from smtp_policy.emit import EventWriter

    kb = default_knowledge()
    service = ProxyService(ProxySettings(), kb, EventWriter(io.StringIO()))
    found = re.search(r"queued as ([0-9A-Za-z]+)", reply.text)
    assert found is not None
    queue_id = found[1]
    for _ in range(2):  # worked out, then from the caches
        wire, friendly = service.render(reply, None, queue_id)
        assert (wire, friendly) == service._render(reply, None)
        explanation = service.explain(reply.text, queue_id)
        described = service.described(explanation, reply.text, friendly, queue_id)
        expected = described_fields(explain_text(reply.text, kb), reply.text, friendly)
        assert list(described.items()) == list(expected.items())  # key order included
