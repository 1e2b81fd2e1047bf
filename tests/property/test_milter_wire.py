"""Property tests of the milter wire codec: round trips, and arbitrary bytes never raise
anything but the codec's own error."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from smtp_policy.wire import milter as w

WORD = st.binary(max_size=40).map(lambda b: b.replace(b"\0", b""))
U32 = st.integers(0, 2**32 - 1)

COMMANDS: st.SearchStrategy[w.Command] = st.one_of(
    st.builds(w.OptionNegotiation, U32, U32, U32),
    st.builds(
        w.Macros,
        st.sampled_from([b"C", b"H", b"M", b"R", b"T", b"E", b"N"]),
        st.lists(st.tuples(WORD, WORD), max_size=8).map(tuple),
    ),
    st.builds(w.Connect, WORD, st.sampled_from([b"4", b"6", b"L"]), st.integers(0, 65535), WORD),
    st.builds(w.Connect, WORD, st.just(b"U")),
    st.builds(w.Helo, WORD),
    st.builds(w.Mail, st.lists(WORD, min_size=1, max_size=6).map(tuple)),
    st.builds(w.Rcpt, st.lists(WORD, min_size=1, max_size=6).map(tuple)),
    st.builds(w.Header, WORD, WORD),
    st.builds(w.Body, st.binary(max_size=200)),
    st.builds(w.EndOfMessage, st.binary(max_size=50)),
    st.builds(w.Unknown, WORD),
    st.builds(w.Bare, st.sampled_from([b"T", b"N", b"A", b"Q", b"K"])),
)


@given(st.lists(COMMANDS, max_size=12), st.integers(1, 64))
def test_commands_round_trip_in_any_pieces(commands: list[w.Command], piece: int) -> None:
    stream = b"".join(c.encode() for c in commands)
    decoder = w.FrameDecoder()
    got = []
    for start in range(0, len(stream), piece):
        decoder.feed(stream[start : start + piece])
        while (frame := decoder.next()) is not None:
            got.append(w.parse_command(frame))
    assert got == commands
    assert decoder.pending() == 0


@given(U32, U32, U32, st.lists(st.tuples(st.integers(0, 6), WORD), max_size=7))
def test_negotiation_round_trips(
    version: int, actions: int, protocol: int, lists: list[tuple[int, bytes]]
) -> None:
    offer = w.OptionNegotiation(version, actions, protocol, tuple(lists))
    decoder = w.FrameDecoder()
    decoder.feed(offer.encode())
    frame = decoder.next()
    assert frame is not None
    assert w.parse_command(frame) == offer


@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_the_codecs_error(data: bytes) -> None:
    decoder = w.FrameDecoder()
    decoder.feed(data)
    try:
        while (frame := decoder.next()) is not None:
            w.parse_command(frame)
    except w.MilterProtocolError:
        pass


@given(st.binary(max_size=1), st.binary(max_size=300))
def test_arbitrary_frames_raise_only_the_codecs_error(command: bytes, data: bytes) -> None:
    with contextlib.suppress(w.MilterProtocolError):
        w.parse_command(w.Frame(command, data))


@given(
    st.from_regex(r"[45][0-9][0-9]", fullmatch=True),
    st.none() | st.from_regex(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
    st.lists(st.text(max_size=60), max_size=40),
)
def test_reply_texts_are_valid_or_refused(
    code: str, enhanced: str | None, lines: list[str]
) -> None:
    try:
        text = w.reply_text(code, enhanced, lines)
    except w.MilterReplyError:
        return
    assert "\0" not in text
    wire_lines = text.split("\r\n")
    assert len(wire_lines) == max(1, len(lines))
    for n, line in enumerate(wire_lines):
        assert line[:3] == code
        assert line[3:4] == ("-" if n < len(wire_lines) - 1 else " ")
        assert "\r" not in line and "\n" not in line
