"""The milter wire codec (smtp_policy.wire.milter): frames, commands, negotiation, replies."""

from __future__ import annotations

import struct

import pytest

from smtp_policy.core.errors import ProtocolError
from smtp_policy.wire import milter as w


def frames(data: bytes) -> list[w.Frame]:
    decoder = w.FrameDecoder()
    decoder.feed(data)
    out = []
    while (frame := decoder.next()) is not None:
        out.append(frame)
    return out


def test_a_frame_is_length_command_and_data() -> None:
    assert w.encode_frame(b"c") == b"\x00\x00\x00\x01c"
    assert w.Helo(b"mx.example").encode() == b"\x00\x00\x00\x0cHmx.example\x00"


def test_frames_arrive_in_pieces_and_together() -> None:
    data = w.Helo(b"a").encode() + w.Bare(b"T").encode() + w.Body(b"x" * 1000).encode()
    decoder = w.FrameDecoder()
    got = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        while (frame := decoder.next()) is not None:
            got.append(frame)
    assert got == frames(data) == [w.Frame(b"H", b"a\0"), w.Frame(b"T"), w.Frame(b"B", b"x" * 1000)]
    assert decoder.pending() == 0


@pytest.mark.parametrize("length", [0, w.MAX_DATA + 2, 2**32 - 1])
def test_a_frame_length_out_of_range_is_an_error(length: int) -> None:
    decoder = w.FrameDecoder()
    decoder.feed(struct.pack(">I", length) + b"B")
    with pytest.raises(w.MilterProtocolError):
        decoder.next()


def test_the_largest_frame_libmilter_takes_is_taken() -> None:
    chunk = b"y" * w.MAX_DATA
    assert frames(w.Body(chunk).encode()) == [w.Frame(b"B", chunk)]
    with pytest.raises(w.MilterProtocolError):
        w.Body(chunk + b"y").encode()


def test_the_mta_commands_parse() -> None:
    cases: list[w.Command] = [
        w.OptionNegotiation(6, 0x1FF, 0x1FFFFF),
        w.Macros(b"C", ((b"j", b"mx.local"), (b"{daemon_name}", b"mx"))),
        w.Connect(b"client.example", b"4", 40123, b"192.0.2.1"),
        w.Connect(b"v6.example", b"6", 25, b"IPv6:2001:db8::1"),
        w.Connect(b"local", b"L", 0, b"/tmp/socket"),
        w.Connect(b"unknown", b"U"),
        w.Helo(b"client.example"),
        w.Mail((b"<a@example.org>", b"SIZE=100", b"BODY=8BITMIME")),
        w.Rcpt((b"<b@example.org>",)),
        w.Bare(b"T"),
        w.Header(b"Subject", b"hello"),
        w.Bare(b"N"),
        w.Body(b"body text\r\n"),
        w.EndOfMessage(),
        w.Bare(b"A"),
        w.Unknown(b"XFOO bar"),
        w.Bare(b"K"),
        w.Bare(b"Q"),
    ]
    stream = b"".join(c.encode() for c in cases)
    assert [w.parse_command(f) for f in frames(stream)] == cases


def test_the_negotiation_answer_carries_the_macro_lists() -> None:
    answer = w.OptionNegotiation(6, w.SETSYMLIST, w.NR_RCPT, ((0, b"j v"), (3, b"{rcpt_addr}")))
    (frame,) = frames(answer.encode())
    assert frame.data[:12] == struct.pack(">III", 6, w.SETSYMLIST, w.NR_RCPT)
    assert frame.data[12:] == b"\0\0\0\0j v\0\0\0\0\x03{rcpt_addr}\0"
    assert w.OptionNegotiation.decode(frame.data) == answer


@pytest.mark.parametrize(
    "frame",
    [
        w.Frame(b"O", b"\0\0\0\x06"),
        w.Frame(b"D", b""),
        w.Frame(b"D", b"Cj\0"),  # a name without a value
        w.Frame(b"H", b"no terminator"),
        w.Frame(b"L", b"only a name\0"),
        w.Frame(b"C", b"host\0X\0\0addr\0"),
        w.Frame(b"C", b"host"),
        w.Frame(b"M", b"".join(b"a\0" for _ in range(w.MAX_ARGS + 1))),
        w.Frame(b"D", b"C" + b"n\0v\0" * (w.MAX_MACROS + 1)),
        w.Frame(b"Z", b""),
    ],
)
def test_malformed_commands_are_the_codecs_error(frame: w.Frame) -> None:
    with pytest.raises(w.MilterProtocolError) as caught:
        w.parse_command(frame)
    assert isinstance(caught.value, ProtocolError)


def test_the_milter_responses() -> None:
    assert w.response(w.CONTINUE) == b"\0\0\0\x01c"
    assert w.reply_code("550 5.7.1 no") == w.encode_frame(b"y", b"550 5.7.1 no\0")
    assert w.add_header("X-A", "b") == w.encode_frame(b"h", b"X-A\0b\0")
    assert w.insert_header(0, "X-A", "b") == w.encode_frame(b"i", b"\0\0\0\0X-A\0b\0")
    assert w.change_header(1, "X-A", "") == w.encode_frame(b"m", b"\0\0\0\x01X-A\0\0")
    assert w.add_recipient("<c@x>") == w.encode_frame(b"+", b"<c@x>\0")
    assert w.add_recipient("<c@x>", "NOTIFY=NEVER") == w.encode_frame(
        b"2", b"<c@x>\0NOTIFY=NEVER\0"
    )
    assert w.delete_recipient("<c@x>") == w.encode_frame(b"-", b"<c@x>\0")
    assert w.change_sender("<s@x>") == w.encode_frame(b"e", b"<s@x>\0")
    assert w.quarantine("held") == w.encode_frame(b"q", b"held\0")
    with pytest.raises(w.MilterProtocolError):
        w.response(b"Z")
    with pytest.raises(w.MilterReplyError):
        w.quarantine("a\0b")


class TestReplyText:
    """libmilter's smfi_setreply/smfi_setmlreply rules."""

    def test_one_line_is_setreply(self) -> None:
        assert w.reply_text("550", "5.7.1", ["No thanks"]) == "550 5.7.1 No thanks"
        assert w.reply_text("451", None, ["later"]) == "451 later"
        assert w.reply_text("550", "5.7.1", []) == "550 5.7.1"
        assert w.reply_text("550", None, []) == "550 "

    def test_several_lines_are_setmlreply(self) -> None:
        assert w.reply_text("550", "5.7.1", ["one", "two", "three"]) == (
            "550-5.7.1 one\r\n550-5.7.1 two\r\n550 5.7.1 three"
        )
        assert w.reply_text("450", None, ["a", "b"]) == "450-4.0.0 a\r\n450 4.0.0 b"

    @pytest.mark.parametrize(
        ("code", "enhanced", "lines"),
        [
            ("250", None, ["ok"]),
            ("55", None, ["short"]),
            ("5x0", None, ["x"]),
            ("550", "5.7", ["x"]),
            ("550", "6.7.1", ["x"]),
            ("550", "5.7.1000", ["x"]),
            ("550", None, ["a\r\nb"]),
            ("550", None, ["nul\0"]),
            ("550", None, ["x" * (w.MAX_REPLY_LINE + 1)]),
            ("550", None, ["x"] * (w.MAX_REPLY_LINES + 1)),
            ("550", None, ["100% sure"]),
            ("550", None, ["ok", "%%%"]),
        ],
    )
    def test_what_libmilter_refuses(
        self, code: str, enhanced: str | None, lines: list[str]
    ) -> None:
        with pytest.raises(w.MilterReplyError):
            w.reply_text(code, enhanced, lines)

    def test_limits_are_inclusive(self) -> None:
        lines = ["x" * w.MAX_REPLY_LINE] * w.MAX_REPLY_LINES
        assert w.reply_text("550", "5.7.1", lines).count("\r\n") == w.MAX_REPLY_LINES - 1
        assert w.reply_text("550", None, ["50%% and 100%%"]) == "550 50%% and 100%%"
