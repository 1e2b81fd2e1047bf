"""The SMTP codec of the proxy: whole, byte by byte, with trailing data, and on random bytes."""

from __future__ import annotations

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
    encode_command,
    filter_ehlo,
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
    b".x\r\n bare\nlf\n\xff\xfe 8-bit\r\n" + b"long " * 3000 + b"\r\n"
)


class TestData:
    """DATA mode passes bytes through unchanged and finds the end as Postfix does."""

    @pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 100_000])
    def test_byte_exact_in_any_split(self, size: int) -> None:
        """The bytes passed on are exactly the bytes received, up to and including the dot."""
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
        ("data", "end"),
        [
            pytest.param(b".\r\n", 3, id="dot-crlf"),
            pytest.param(b"a\r\n.\n", 5, id="dot-bare-lf"),
            pytest.param(b"a\n.\r\r\n", 6, id="dot-cr-cr-lf"),
            pytest.param(b"a\r\n..\r\n.\r\n", 10, id="stuffed-then-end"),
            pytest.param(b"a\r\n\r\n.\r\n", 8, id="after-empty-line"),
            pytest.param(b"a.\r\n.x\r\n.\r\n", 11, id="dot-not-at-start"),
            pytest.param(b"a\r.\r\nb\r\n.\r\n", 11, id="bare-cr-is-no-line-end"),
            pytest.param(b"a\r\n.\rx\n.\r\n", 11, id="dot-cr-other"),
        ],
    )
    def test_end_of_data(self, data: bytes, end: int) -> None:
        """Only a "." line (with any CRs before its LF) ends the message."""
        reader = CommandReader()
        reader.start_data()
        passed, ended, _ = pass_through(reader, [data + b"NOOP\r\n"])
        assert ended
        assert passed == data[:end]

    def test_no_line_buffering(self) -> None:
        """A line without LF is passed on at once, never held back."""
        reader = CommandReader()
        reader.start_data()
        reader.feed(b"x" * 200_000)
        assert reader.next_event() == Data(b"x" * 200_000)
        assert reader.buffered == 0

    def test_dot_line_longer_than_smtpd_reads_is_no_end(self) -> None:
        """smtpd reads 2048 octets at a time: "." + 2048 CRs + LF does not end the message."""
        reader = CommandReader(server_line_limit=2048)
        reader.start_data()
        long_dot = b"a\r\n." + b"\r" * 2048 + b"\n"
        passed, ended, _ = pass_through(reader, [long_dot])
        assert not ended
        assert passed == long_dot
        just_fits = b"." + b"\r" * 2047 + b"\n"
        passed, ended, _ = pass_through(reader, [just_fits])
        assert ended
        assert passed == just_fits

    def test_message_example(self) -> None:
        """A realistic message with tricky lines goes through whole."""
        reader = CommandReader()
        reader.start_data()
        passed, ended, _ = pass_through(reader, [MESSAGE, b".\r\n"])
        assert ended
        assert passed == MESSAGE + b".\r\n"


def reference_end(data: bytes, limit: int) -> int | None:
    """Postfix's reading of DATA, line by line: where the message ends, or None."""
    pos = 0
    while (nl := data.find(b"\n", pos)) >= 0:
        line = data[pos:nl]
        if line[:1] == b"." and not line[1:].strip(b"\r") and len(line) <= limit:
            return nl + 1
        pos = nl + 1
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
        st.integers(min_value=1, max_value=6),
    )
    def test_data_end_matches_reference(self, data: bytes, sizes: list[int], limit: int) -> None:
        """Split anywhere, DATA passes the exact bytes and ends where Postfix would."""
        chunks: list[bytes] = []
        pos = 0
        while pos < len(data):
            size = sizes[len(chunks) % len(sizes)]
            chunks.append(data[pos : pos + size])
            pos += size
        reader = CommandReader(server_line_limit=limit)
        reader.start_data()
        passed, ended, _ = pass_through(reader, chunks)
        end = reference_end(data, limit)
        assert ended == (end is not None)
        assert passed == (data if end is None else data[:end])


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
