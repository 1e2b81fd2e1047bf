"""The SMTP codec of the proxy: whole, byte by byte, with trailing data, and on random bytes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.core.errors import ProtocolError
from smtp_policy.wire.smtp import (
    MAX_COMMAND_LINE,
    MAX_CONTINUATION_LINE,
    MAX_EXTENDED_LINE,
    ClientEvent,
    Command,
    CommandReader,
    Continuation,
    Data,
    LineTooLong,
    ReplyReader,
    ServerReply,
    _has_bare_line_end,  # the DATA scan's fast path
    encode_command,
    filter_ehlo,
    has_control,
    mail_path,
    xclient_command,
    xtext,
)

EHLO = (
    b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-XCLIENT NAME ADDR\r\n"
    b"250-CHUNKING\r\n250 SMTPUTF8\r\n"
)


def replies(reader: ReplyReader) -> list[ServerReply]:
    out = []
    while (reply := reader.next_reply()) is not None:
        out.append(reply)
    return out


def events(reader: CommandReader) -> list[ClientEvent]:
    out = []
    while (event := reader.next_event()) is not None:
        out.append(event)
    return out


class TestReplyReader:
    """Server bytes become whole replies."""

    def test_whole(self) -> None:
        """A single-line reply fed at once comes out whole."""
        reader = ReplyReader()
        reader.feed(b"250 2.1.0 Ok\r\n")
        assert replies(reader) == [ServerReply(250, ("2.1.0 Ok",))]
        assert reader.buffered == 0

    def test_byte_by_byte(self) -> None:
        """A multi-line reply fed one byte at a time appears only after its last line."""
        reader = ReplyReader()
        for i in range(len(EHLO) - 1):
            reader.feed(EHLO[i : i + 1])
            assert reader.next_reply() is None
        reader.feed(EHLO[-1:])
        (reply,) = replies(reader)
        assert reply.code == 250
        assert reply.lines[0] == "mx.example.test"
        assert reply.lines[-1] == "SMTPUTF8"
        assert len(reply.lines) == 6

    def test_trailing_data(self) -> None:
        """Bytes after a reply stay buffered for the next one."""
        reader = ReplyReader()
        reader.feed(b"250 2.1.5 Ok\r\n550-5.1.1 no such\r\n550 5.1.1 us")
        assert replies(reader) == [ServerReply(250, ("2.1.5 Ok",))]
        assert reader.pending
        reader.feed(b"er\r\n")
        assert replies(reader) == [ServerReply(550, ("5.1.1 no such", "5.1.1 user"))]

    def test_bare_lf_and_bare_code(self) -> None:
        """A bare LF ends a line; a reply may be the code alone."""
        reader = ReplyReader()
        reader.feed(b"250\n354 go ahead\n")
        assert replies(reader) == [ServerReply(250, ("",)), ServerReply(354, ("go ahead",))]

    def test_text_round_trip(self) -> None:
        """``text`` puts the reply back into its wire form (LF-separated)."""
        reply = ServerReply(550, ("5.1.1 a", "5.1.1 b"))
        assert reply.text == "550-5.1.1 a\n550 5.1.1 b"

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"hello\r\n", id="not-a-reply"),
            pytest.param(b"25 x\r\n", id="two-digits"),
            pytest.param(b"650 x\r\n", id="class-6"),
            pytest.param(b"250x\r\n", id="no-separator"),
            pytest.param(b"250-a\r\n550 b\r\n", id="mixed-codes"),
        ],
    )
    def test_malformed(self, data: bytes) -> None:
        """Anything that is not an SMTP reply is a ProtocolError."""
        reader = ReplyReader()
        reader.feed(data)
        with pytest.raises(ProtocolError):
            replies(reader)

    def test_over_long_line(self) -> None:
        """A reply line over the limit is refused before its end arrives."""
        reader = ReplyReader(max_line=100)
        reader.feed(b"250 " + b"x" * 100)
        with pytest.raises(ProtocolError, match="longer"):
            reader.next_reply()

    def test_too_many_lines(self) -> None:
        """A reply of more lines than allowed is refused."""
        reader = ReplyReader(max_lines=3)
        reader.feed(b"250-a\r\n" * 4)
        with pytest.raises(ProtocolError, match="lines"):
            reader.next_reply()


class TestCommandReader:
    """Client bytes become commands, limits enforced."""

    def test_whole_byte_by_byte_and_trailing(self) -> None:
        """Commands come out the same however the bytes are split."""
        data = b"EHLO client.test\r\nMAIL FROM:<a@b.test> SIZE=10\r\nRCPT TO:<c@d.test>\nQUIT\r\nNO"
        expected = [
            Command(b"EHLO client.test"),
            Command(b"MAIL FROM:<a@b.test> SIZE=10"),
            Command(b"RCPT TO:<c@d.test>"),
            Command(b"QUIT"),
        ]
        whole = CommandReader()
        whole.feed(data)
        assert events(whole) == expected
        assert whole.buffered == 2
        split = CommandReader()
        got: list[ClientEvent] = []
        for i in range(len(data)):
            split.feed(data[i : i + 1])
            got += events(split)
        assert got == expected

    def test_verb_and_argument(self) -> None:
        """The verb is upper-cased; the argument is what follows it."""
        cmd = Command(b"mail FROM:<a@b>  ")
        assert cmd.verb == "MAIL"
        assert cmd.argument == b"FROM:<a@b>"
        assert Command(b"").verb == ""
        assert Command(b"NOOP").argument == b""

    def test_line_too_long_then_recovers(self) -> None:
        """An over-long line is reported once and skipped; the next command is read."""
        reader = CommandReader()
        reader.feed(b"NOOP " + b"x" * 600)
        assert events(reader) == [LineTooLong(MAX_COMMAND_LINE)]
        assert reader.buffered == 0
        reader.feed(b"y" * 5000)
        assert events(reader) == []
        reader.feed(b"zz\r\nRSET\r\n")
        assert events(reader) == [Command(b"RSET")]

    def test_limit_includes_crlf(self) -> None:
        """512 octets with the CRLF pass; 513 do not (RFC 5321 4.5.3.1.4)."""
        reader = CommandReader()
        ok = b"NOOP " + b"x" * (MAX_COMMAND_LINE - 7)
        reader.feed(ok + b"\r\n" + ok + b"x\r\n")
        assert events(reader) == [Command(ok), LineTooLong(MAX_COMMAND_LINE)]

    def test_mail_and_rcpt_get_the_extension_allowance(self) -> None:
        """MAIL and RCPT may be longer: SIZE and DSN parameters (RFC 1870, RFC 3461)."""
        reader = CommandReader()
        rcpt = b"RCPT TO:<a@b> ORCPT=rfc822;" + b"x" * 800
        reader.feed(rcpt + b"\r\n" + b"RCPT " + b"x" * MAX_EXTENDED_LINE + b"\r\n")
        assert events(reader) == [Command(rcpt), LineTooLong(MAX_EXTENDED_LINE)]

    def test_continuation(self) -> None:
        """After a 334 the next line is a continuation, up to 12288 octets, then commands."""
        reader = CommandReader()
        reader.expect_continuation()
        secret = b"A" * 5000
        reader.feed(secret + b"\r\nNOOP\r\n")
        assert events(reader) == [Continuation(secret), Command(b"NOOP")]
        reader.expect_continuation()
        reader.feed(b"A" * (MAX_CONTINUATION_LINE + 1))
        assert events(reader) == [LineTooLong(MAX_CONTINUATION_LINE)]
        reader.feed(b"AAA\r\nNOOP\r\n")  # the over-long answer is skipped; commands follow
        assert events(reader) == [Command(b"NOOP")]

    def test_one_cr_belongs_to_the_line_end(self) -> None:
        """CRLF and a bare LF end a line; any other CR stays in it, where has_control sees it."""
        reader = CommandReader()
        reader.feed(b"NOOP\r\nRSET\nMAIL FROM:<a@b>\r\r\nNO\rOP\r\n")
        got = events(reader)
        assert got == [
            Command(b"NOOP"),
            Command(b"RSET"),
            Command(b"MAIL FROM:<a@b>\r"),
            Command(b"NO\rOP"),
        ]
        assert [has_control(c.line) for c in got if isinstance(c, Command)] == [
            False,
            False,
            True,
            True,
        ]

    @pytest.mark.parametrize("byte", [*range(0x20), 0x7F])
    def test_every_control_is_found(self, byte: int) -> None:
        """C0 controls and DEL anywhere in a command line; printable and 8-bit bytes pass."""
        assert has_control(b"XCLIENT" + bytes([byte]) + b" ADDR=192.0.2.1")
        assert not has_control(b"MAIL FROM:<\xc3\xa9@x.test> SMTPUTF8 ~")

    @pytest.mark.parametrize(
        ("argument", "path"),
        [
            pytest.param(b"FROM:<a@b.test> SIZE=10", "<a@b.test>", id="plain"),
            pytest.param(b"FROM:<>", "<>", id="null"),
            pytest.param(b'TO:<"a>b"@x.test>', '<"a>b"@x.test>', id="quoted-gt"),
            pytest.param(b'TO:<"a\\">"@x.test> NOTIFY=NEVER', '<"a\\">"@x.test>', id="escape"),
            pytest.param(b'TO:<"a b"@x.test>', '<"a b"@x.test>', id="quoted-space"),
            pytest.param(b'TO:<"abc@x.test>', '<"abc@x.test>', id="unbalanced"),
            pytest.param(b"TO:a@x.test", None, id="no-brackets"),
            pytest.param(b"TO:<" + b"a" * 600 + b">", None, id="too-long"),
        ],
    )
    def test_mail_path(self, argument: bytes, path: str | None) -> None:
        """The whole path, quoted local parts included (RFC 5321 4.1.2)."""
        assert mail_path(argument) == path

    def test_discard_buffer(self) -> None:
        """What was pipelined after STARTTLS can be dropped."""
        reader = CommandReader()
        reader.feed(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
        assert reader.next_event() == Command(b"STARTTLS")
        assert reader.discard_buffer() == len(b"MAIL FROM:<evil@x>\r\n")
        assert reader.next_event() is None


def pass_through(reader: CommandReader, chunks: list[bytes]) -> tuple[bytes, bool, list[object]]:
    """Feed DATA-mode chunks; return the bytes passed, whether the end was seen, and after."""
    out = bytearray()
    ended = False
    after: list[object] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (event := reader.next_event()) is not None:
            if ended:
                after.append(event)
                continue
            assert isinstance(event, Data)
            out += event.data
            ended = event.last
    return bytes(out), ended, after


MESSAGE = (
    b"Subject: dots\r\n\r\n..stuffed line\r\n. \r\nnot the end\r\n"
    b".x\r\n 8-bit \xff\xfe\r\n" + b"long " * 3000 + b"\r\n"
)
#: The four sequences that ended a message on Debian 12's Postfix 3.7 (issue 16), and kin.
SMUGGLING = [
    pytest.param(b"\n.\n", id="lf-dot-lf"),
    pytest.param(b"\n.\r\n", id="lf-dot-crlf"),
    pytest.param(b"\r\n.\n", id="crlf-dot-lf"),
    pytest.param(b"\r\n.\r\r\n", id="dot-cr-cr-lf"),
    pytest.param(b"\r\n.\r", id="crlf-dot-cr"),
    pytest.param(b"\r.\r", id="cr-dot-cr"),
]
BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class TestData:
    """DATA mode ends only at CRLF.CRLF and passes canonical lines: no smuggling."""

    @pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 100_000])
    def test_crlf_message_byte_exact_in_any_split(self, size: int) -> None:
        """A CRLF message passes unchanged, up to and including the dot, however split."""
        body = b"Subject: x\r\n\r\n..leading dot\r\n \r\n.\r\n"
        data = body + b"QUIT\r\n"
        reader = CommandReader()
        reader.start_data()
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        passed, ended, after = pass_through(reader, chunks)
        assert passed == body
        assert ended
        assert after == [Command(b"QUIT")]
        assert not reader.in_data

    @pytest.mark.parametrize(
        ("data", "passed"),
        [
            pytest.param(b".\r\n", b".\r\n", id="empty-message"),
            pytest.param(b"a\r\n..\r\n.\r\n", b"a\r\n..\r\n.\r\n", id="stuffed-then-end"),
            pytest.param(b"a\r\n\r\n.\r\n", b"a\r\n\r\n.\r\n", id="after-empty-line"),
            pytest.param(b"a.\r\n.x\r\n.\r\n", b"a.\r\n.x\r\n.\r\n", id="dot-not-alone"),
            pytest.param(b"a\nb\r\n.\r\n", b"a\r\nb\r\n.\r\n", id="bare-lf"),
            pytest.param(b"a\rb\r\n.\r\n", b"a\r\nb\r\n.\r\n", id="bare-cr"),
            pytest.param(b"a\r\r\n.\r\n", b"a\r\n\r\n.\r\n", id="cr-crlf-dot"),
            pytest.param(b"a\n\r\n.\r\n", b"a\r\n\r\n.\r\n", id="lf-crlf-dot"),
        ],
    )
    def test_end_of_data(self, data: bytes, passed: bytes) -> None:
        """Only CRLF "." CRLF ends the message; bare line ends go on as CRLF."""
        reader = CommandReader()
        reader.start_data()
        got, ended, after = pass_through(reader, [data + b"NOOP\r\n"])
        assert ended
        assert got == passed
        assert after == [Command(b"NOOP")]

    @pytest.mark.parametrize("sequence", SMUGGLING)
    def test_smuggling_sequence_is_content(self, sequence: bytes) -> None:
        """A "." line touched by a bare CR or LF is content: it goes on dot-stuffed as ".."."""
        smuggled = b"MAIL FROM:<x@evil.test>\r\nRCPT TO:<y@victim.test>\r\nDATA\r\nforged\r\n"
        data = b"Subject: one\r\n\r\nbody" + sequence + smuggled + b".\r\n"
        for size in (1, 2, 3, len(data)):
            reader = CommandReader()
            reader.start_data()
            chunks = [data[i : i + size] for i in range(0, len(data), size)]
            passed, ended, _ = pass_through(reader, chunks)
            assert ended
            assert passed.endswith(smuggled + b".\r\n")
            assert passed.count(b"\r\n.\r\n") == 1
            assert b"\r\n..\r\n" in passed
            assert not BARE.search(passed)

    def test_no_line_buffering(self) -> None:
        """A line without LF is passed on at once, never held back."""
        reader = CommandReader()
        reader.start_data()
        reader.feed(b"x" * 200_000)
        assert reader.next_event() == Data(b"x" * 200_000)
        assert reader.buffered == 0

    def test_only_a_final_dot_or_cr_waits(self) -> None:
        """A final "." or CR waits for the next byte, which decides what it is."""
        reader = CommandReader()
        reader.start_data()
        reader.feed(b"a\r\n.")
        assert reader.next_event() == Data(b"a\r\n")
        assert reader.buffered == 1
        reader.feed(b"\r")
        assert reader.next_event() is None
        reader.feed(b"\n")
        assert reader.next_event() == Data(b".\r\n", last=True)

    def test_message_example(self) -> None:
        """A realistic CRLF message with tricky lines goes through whole."""
        reader = CommandReader()
        reader.start_data()
        passed, ended, _ = pass_through(reader, [MESSAGE, b".\r\n"])
        assert ended
        assert passed == MESSAGE + b".\r\n"


def reference(data: bytes) -> tuple[bytes, int] | None:
    """The DATA rules line by line: (bytes passed on, bytes read) at the end, or None.

    A line ends at CRLF, a bare CR or a bare LF; every end goes on as CRLF. A "." line ends
    the message when CRLF (or the DATA line) precedes it and CRLF ends it; any other "." line
    is content and goes on as "..".
    """
    out = bytearray()
    pos, after_crlf = 0, True
    for match in re.finditer(rb"\r\n|\r|\n", data):
        line, crlf = data[pos : match.start()], match[0] == b"\r\n"
        if line == b".":
            if after_crlf and crlf:
                return bytes(out + b".\r\n"), match.end()
            line = b".."
        out += line + b"\r\n"
        pos, after_crlf = match.end(), crlf
    return None


class TestProperties:
    """Random input: only ProtocolError, and DATA agrees with a line-by-line reference."""

    @settings(max_examples=300)
    @given(st.lists(st.binary(max_size=300), max_size=20))
    def test_reply_reader_only_raises_protocol_error(self, chunks: list[bytes]) -> None:
        """Random bytes never make the reply reader raise anything but ProtocolError."""
        reader = ReplyReader(max_line=256, max_lines=10)
        try:
            for chunk in chunks:
                reader.feed(chunk)
                for reply in replies(reader):
                    assert 200 <= reply.code <= 599
        except ProtocolError:
            pass

    @settings(max_examples=300)
    @given(
        st.lists(st.binary(max_size=300), max_size=20),
        st.lists(st.sampled_from(["data", "continuation", "none"]), max_size=20),
    )
    def test_command_reader_never_raises(self, chunks: list[bytes], modes: list[str]) -> None:
        """Random bytes and mode switches never make the command reader raise."""
        reader = CommandReader(max_line=64, max_extended_line=128, max_continuation_line=128)
        for i, chunk in enumerate(chunks):
            mode = modes[i] if i < len(modes) else "none"
            if mode == "data":
                reader.start_data()
            elif mode == "continuation":
                reader.expect_continuation()
            reader.feed(chunk)
            for event in events(reader):
                if isinstance(event, Command | Continuation):
                    assert b"\n" not in event.line
            assert reader.buffered <= 128 + len(chunk)

    @settings(max_examples=500)
    @given(
        st.binary(max_size=200).map(
            lambda b: bytes(b".\r\nx"[x % 4] for x in b)  # mostly the interesting bytes
        ),
        st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=10),
    )
    def test_data_matches_reference(self, data: bytes, sizes: list[int]) -> None:
        """Split anywhere, DATA passes and ends as the line-by-line rules say; what goes on
        has CRLF line ends only, and CRLF "." CRLF only at its end."""
        data += b"\r\n.\r\nNOOP\r\n"  # every message ends
        chunks: list[bytes] = []
        pos = 0
        while pos < len(data):
            size = sizes[len(chunks) % len(sizes)]
            chunks.append(data[pos : pos + size])
            pos += size
        reader = CommandReader()
        reader.start_data()
        passed, ended, after = pass_through(reader, chunks)
        expected = reference(data)
        assert expected is not None
        assert ended
        assert passed == expected[0]
        assert not BARE.search(passed)
        assert (b"\r\n" + passed).find(b"\r\n.\r\n") == len(passed) - 3
        rest = CommandReader()
        rest.feed(data[expected[1] :])
        assert after == events(rest)

    @settings(max_examples=500)
    @given(
        st.binary(max_size=60).map(lambda b: bytes(b"\r\nx."[x % 4] for x in b)),
        st.integers(min_value=0, max_value=60),
    )
    def test_bare_line_end_check_matches_its_definition(self, data: bytes, size: int) -> None:
        """The counting fast path finds a bare CR or LF exactly where the pattern does."""
        size = min(size, len(data))
        expected = BARE.search(data, 0, size) is not None
        assert _has_bare_line_end(data, size) == expected


class TestEncoding:
    """Commands, xtext and the EHLO filter."""

    def test_encode_command(self) -> None:
        """A command gets its CRLF; CR or LF inside is refused."""
        assert encode_command(b"NOOP") == b"NOOP\r\n"
        with pytest.raises(ValueError, match="CR or LF"):
            encode_command(b"NOOP\r\nRSET")

    def test_xtext(self) -> None:
        """RFC 3461 xtext: "+", "=", spaces, controls and 8-bit bytes become +HH."""
        assert xtext("mx.example.test") == "mx.example.test"
        assert xtext("a+b=c d\x01") == "a+2Bb+3Dc+20d+01"
        assert xtext("\u00e9") == "+C3+A9"

    def test_xclient_command(self) -> None:
        """XCLIENT attributes in order, values xtext-encoded."""
        cmd = xclient_command({"ADDR": "192.0.2.1", "PORT": "4711", "NAME": "[UNAVAILABLE]"})
        assert cmd == b"XCLIENT ADDR=192.0.2.1 PORT=4711 NAME=[UNAVAILABLE]\r\n"
        with pytest.raises(ValueError, match="attribute"):
            xclient_command({})

    def test_filter_ehlo(self) -> None:
        """Only the kept keywords stay, the server name first, additions last and once."""
        lines = ("mx.test", "PIPELINING", "SIZE 100", "XCLIENT NAME ADDR", "CHUNKING", "STARTTLS")
        kept = filter_ehlo(lines, ("SIZE", "PIPELINING"), ("STARTTLS",))
        assert kept == ("mx.test", "PIPELINING", "SIZE 100", "STARTTLS")
        assert filter_ehlo(lines, ("STARTTLS",), ("STARTTLS",)) == ("mx.test", "STARTTLS")
