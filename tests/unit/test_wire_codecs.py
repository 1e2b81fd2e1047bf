"""Netstring, socketmap and policy-protocol codecs: whole, byte by byte, and hostile."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_policy.core.errors import ProtocolError
from smtp_policy.wire import netstring, policy, socketmap


def _drain(decoder: netstring.NetstringDecoder) -> list[bytes]:
    out = []
    while (item := decoder.next()) is not None:
        out.append(item)
    return out


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 7))
def test_netstrings_round_trip_in_any_chunking(payloads: list[bytes], step: int) -> None:
    """decode(encode(x)) == x, whether the bytes arrive at once or a few at a time."""
    wire = b"".join(netstring.encode(p) for p in payloads)
    whole = netstring.NetstringDecoder()
    whole.feed(wire)
    assert _drain(whole) == payloads
    chunked = netstring.NetstringDecoder()
    got: list[bytes] = []
    for i in range(0, len(wire), step):
        chunked.feed(wire[i : i + step])
        got += _drain(chunked)
    assert got == payloads
    assert chunked.buffered == 0


@pytest.mark.parametrize(
    "wire",
    [b"abc:xyz,", b"3:abcX", b"-1:,", b"01:a,", b"1234567:", b"9999999", b"100001:"],
    ids=[
        "letters",
        "no-comma",
        "negative",
        "leading-zero",
        "too-many-digits",
        "no-colon",
        "over-limit",
    ],
)
def test_malformed_netstrings_raise(wire: bytes) -> None:
    """Malformed framing and oversized payloads are protocol errors, never silent."""
    decoder = netstring.NetstringDecoder()
    decoder.feed(wire)
    with pytest.raises(ProtocolError):
        decoder.next()


@given(st.binary(max_size=200))
def test_netstring_decoder_never_fails_otherwise(data: bytes) -> None:
    """Random bytes give payloads, need-more, or ProtocolError: nothing else."""
    decoder = netstring.NetstringDecoder()
    decoder.feed(data)
    with contextlib.suppress(ProtocolError):
        _drain(decoder)


def test_socketmap_request_and_replies() -> None:
    """Name and key split at the first space; replies frame as Postfix expects."""
    req = socketmap.Request.decode(b"footer 550 5.1.1 <u@example.com>: User unknown")
    assert req == socketmap.Request("footer", "550 5.1.1 <u@example.com>: User unknown")
    assert socketmap.NOT_FOUND.encode() == b"9:NOTFOUND ,"
    assert socketmap.SocketmapReply(socketmap.Status.OK, "hello").encode() == b"8:OK hello,"
    assert (
        socketmap.SocketmapReply(socketmap.Status.TEMP, "down\r\nnow").encode()
        == b"13:TEMP down now,"
    )
    with pytest.raises(ProtocolError):
        socketmap.Request.decode(b"nokey")


REQUEST = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=192.0.2.1\nsender=a@example.com\nrecipient=b@example.org\n"
    b"helo_name=\xff\xfebad\nsize=\n\n"
)


def test_policy_request_whole_and_byte_by_byte() -> None:
    """A request decodes the same whole or byte by byte; 8-bit values are replaced, not fatal."""
    whole = policy.PolicyDecoder()
    whole.feed(REQUEST + REQUEST)
    first, second = whole.next(), whole.next()
    assert first is not None
    assert first == second
    assert first["protocol_state"] == "RCPT"
    assert first["size"] == ""
    assert first["helo_name"].endswith("bad")
    assert whole.next() is None
    slow = policy.PolicyDecoder()
    got = []
    for byte in REQUEST:
        slow.feed(bytes([byte]))
        if (req := slow.next()) is not None:
            got.append(req)
    assert got == [first]


@pytest.mark.parametrize(
    "wire",
    [b"novalue\n\n", b"=x\n\n", b"a=" + b"x" * 9000 + b"\n", b"x" * 9000],
    ids=["no-equals", "no-name", "long-line", "long-unterminated"],
)
def test_policy_protocol_errors(wire: bytes) -> None:
    """Lines without name=value and over-long lines are protocol errors."""
    decoder = policy.PolicyDecoder()
    decoder.feed(wire)
    with pytest.raises(ProtocolError):
        decoder.next()


def test_policy_answer_is_one_line() -> None:
    """An action with line breaks is flattened; an empty one is refused."""
    assert policy.encode_action("REJECT go\r\naway") == b"action=REJECT go away\n\n"
    with pytest.raises(ValueError, match="empty"):
        policy.encode_action(" \n")
