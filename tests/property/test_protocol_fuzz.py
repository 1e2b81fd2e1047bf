"""Fuzzing the Postfix-facing protocols end to end: decoders, and the services behind them.

Whatever bytes or attributes arrive, the policy and socketmap codecs give a request or a
:class:`ProtocolError`, and the services answer with something Postfix can take: one line,
no CR/LF/NUL, ``$`` escaped where Postfix expands it, within the protocol's size limits.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.adapters.maps_server import MapsService
from smtp_policy.adapters.policy_server import PolicyService
from smtp_policy.config import Config, ConfigSource, default_source, validate
from smtp_policy.core.errors import ProtocolError
from smtp_policy.data import default_knowledge
from smtp_policy.emit import EventWriter
from smtp_policy.wire import netstring, policy, socketmap

#: A rule at every stage the policy server sees, whose reply quotes client-supplied values.
RULES = """
[[rules]]
name = "quote-the-sender"
stage = "mail"
sender = ["*"]
action = "reject"
code = 550
enhanced = "5.7.1"
reason = "blocked"
text = "No mail from {sender} (client {client_addr}); see {help_url}"

[[rules]]
name = "tempfail-recipient"
stage = "rcpt"
recipient = ["/x/"]
action = "tempfail"
text = "Try {recipient} later\\nsecond line 100%"
"""

STATES = ["CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "", "?"]
#: Postfix's attribute names are ASCII words; values are any text on one line.
ATTRIBUTE = st.from_regex(r"[a-z_][a-z0-9_]{0,29}", fullmatch=True)
VALUE = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=80
)
HOSTILE = st.text(max_size=300) | st.sampled_from(
    ["$x", "$$", "a\\nb", "100%", "%s%n", "\r\n.\r\n", "\x00", "<a@b>\r\nRCPT TO:<c@d>", "é\udcff"]
)


def _config(rules: str) -> Config:
    config, problems = validate([default_source(), ConfigSource("rules.toml", rules)])
    assert config is not None, problems
    return config


@pytest.fixture(name="maps", scope="module")
def _maps() -> MapsService:
    return MapsService(default_knowledge(), EventWriter(io.StringIO()), _config(""))


@pytest.fixture(name="policy_service", scope="module")
def _policy_service() -> PolicyService:
    return PolicyService(EventWriter(io.StringIO()), default_knowledge(), _config(RULES))


def _drain_policy(decoder: policy.PolicyDecoder) -> list[Mapping[str, str]]:
    out = []
    while (item := decoder.next()) is not None:
        out.append(item)
    return out


def _encode_request(attrs: Mapping[str, str]) -> bytes:
    return b"".join(f"{k}={v}\n".encode() for k, v in attrs.items()) + b"\n"


@given(st.binary(max_size=400), st.integers(1, 9))
def test_policy_decoder_takes_any_bytes(data: bytes, step: int) -> None:
    """Random bytes in any chunking: whole requests, need-more, or ProtocolError."""
    decoder = policy.PolicyDecoder()
    try:
        for i in range(0, len(data), step):
            decoder.feed(data[i : i + step])
            for request in _drain_policy(decoder):
                assert request and all(k for k in request)
    except ProtocolError:
        pass


@given(st.lists(st.dictionaries(ATTRIBUTE, VALUE, min_size=1, max_size=12), max_size=5))
def test_policy_requests_round_trip(requests: list[dict[str, str]]) -> None:
    """What Postfix encodes, byte by byte, decodes to the same attributes."""
    decoder = policy.PolicyDecoder()
    got: list[Mapping[str, str]] = []
    for byte in b"".join(_encode_request(r) for r in requests):
        decoder.feed(bytes([byte]))
        got += _drain_policy(decoder)
    assert [dict(r) for r in got] == requests


@given(st.text(max_size=300))
def test_policy_action_is_one_line(action: str) -> None:
    """An answer block is ``action=…`` on one line and an empty line, or ValueError."""
    try:
        wire = policy.encode_action(action)
    except ValueError:
        assert not action.split()
        return
    assert wire.startswith(b"action=") and wire.endswith(b"\n\n")
    assert wire.count(b"\n") == 2 and b"\r" not in wire


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(STATES),
    st.dictionaries(
        st.sampled_from(
            [
                "sender",
                "recipient",
                "client_address",
                "client_name",
                "helo_name",
                "size",
                "sasl_method",
            ]
        ),
        HOSTILE,
    ),
)
def test_policy_service_answers_anything_safely(
    policy_service: PolicyService, state: str, attrs: dict[str, str]
) -> None:
    """Any request gets one action Postfix accepts; replies quoting client text stay safe."""
    action = policy_service.answer({"protocol_state": state, **attrs}, "fuzz")
    wire = policy.encode_action(action)
    assert wire.count(b"\n") == 2 and not re.search(rb"[\r\x00]", wire)
    verb = action.split()[0]
    assert verb in {"DUNNO", "DEFER_IF_PERMIT", "REJECT", "DEFER", "DISCARD", "HOLD", "OK"} or (
        verb[:1] in "45" and verb[:3].isdigit()
    ), action


@given(st.binary(max_size=300))
def test_socketmap_request_decodes_or_refuses(payload: bytes) -> None:
    """Any netstring payload is a request or a ProtocolError; the key keeps every byte."""
    try:
        request = socketmap.Request.decode(payload)
    except ProtocolError:
        return
    assert f"{request.name} {request.key}".encode("utf-8", "surrogateescape") == payload


def _unframe(wire: bytes) -> bytes:
    decoder = netstring.NetstringDecoder()
    decoder.feed(wire)
    payload = decoder.next()
    assert payload is not None and decoder.next() is None and decoder.buffered == 0
    return payload


@given(st.sampled_from(list(socketmap.Status)), st.text(max_size=500))
def test_socketmap_replies_are_framed_and_bounded(status: socketmap.Status, data: str) -> None:
    """Every reply is one netstring within the limit; non-OK reasons stay on one line."""
    payload = _unframe(socketmap.SocketmapReply(status, data).encode())
    assert len(payload) <= netstring.MAX_PAYLOAD
    assert payload.startswith(status.value.encode() + b" ")
    if status is not socketmap.Status.OK:
        assert not re.search(rb"[\r\n]", payload)


def _safe_footer_or_dsn(reply: socketmap.SocketmapReply) -> None:
    payload = _unframe(reply.encode())
    assert len(payload) <= netstring.MAX_PAYLOAD
    assert not re.search(r"[\r\n\x00]", reply.data), reply.data


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["footer", "dsn"]),
    st.sampled_from(["", "550 5.1.1 ", "451 4.7.1 ", "5.1.1 ", "4.4.1 ", "2.0.0 "]),
    HOSTILE,
)
def test_maps_lookups_answer_anything_safely(
    maps: MapsService, name: str, prefix: str, text: str
) -> None:
    """Footer and DSN answers: one line, no CR/LF/NUL, every ``$`` doubled in footers."""
    reply = maps.lookup(socketmap.Request(name, prefix + text), "fuzz")
    assert reply.status in (socketmap.Status.OK, socketmap.Status.NOTFOUND)
    _safe_footer_or_dsn(reply)
    if name == "footer" and reply.status is socketmap.Status.OK:
        assert all(len(run) % 2 == 0 for run in re.findall(r"\$+", reply.data)), reply.data


def test_maps_footer_for_a_hostile_reply_is_escaped(maps: MapsService) -> None:
    """A reply that quotes ``$``, ``\\r\\n`` and ``%`` gives a footer Postfix cannot misread."""
    reply = maps.lookup(
        socketmap.Request("footer", "550 5.1.1 <$x\r\nRCPT@a%s>: Recipient address rejected"),
        "fuzz",
    )
    assert reply.status is socketmap.Status.OK
    _safe_footer_or_dsn(reply)


def test_policy_rule_quoting_hostile_values_stays_one_line(policy_service: PolicyService) -> None:
    """The rules above really fire, and quoted CR/LF/NUL become spaces in the one-line action."""
    mail = policy_service.answer({"protocol_state": "MAIL", "sender": "a$x\r\n.\r\n%s@b"}, "f")
    assert mail.startswith("550 5.7.1 No mail from a$x . %s@b")
    rcpt = policy_service.answer({"protocol_state": "RCPT", "recipient": "x\x00y"}, "f")
    assert rcpt == "451 4.7.1 Try x y later second line 100%"
