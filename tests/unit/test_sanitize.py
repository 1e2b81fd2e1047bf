"""The sanitizer: the one choke point between text and an SMTP reply."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtp_policy.core.model import EnhancedCode
from smtp_policy.core.parse import parse_reply
from smtp_policy.core.sanitize import (
    MAX_LINE_OCTETS,
    MAX_LINES,
    MILTER_MAX_TEXT,
    SafeReply,
    clean_text,
    footer_text,
    milter_line,
    sanitize_reply,
)


def test_line_breaks_start_new_lines_and_controls_vanish() -> None:
    """CR/LF split lines; NUL, tabs and other controls become spaces."""
    reply = sanitize_reply(
        550, EnhancedCode(5, 7, 1), "Rejected\r\nSee\x00 https://x.test/\x1b[31m"
    )
    assert reply.lines == ("Rejected", "See https://x.test/ [31m")
    assert reply.wire() == "550-5.7.1 Rejected\r\n550 5.7.1 See https://x.test/ [31m\r\n"


def test_enhanced_class_follows_the_basic_code() -> None:
    """A 4.x.x code on a 550 becomes 5.x.x: Postfix refuses mismatched classes."""
    assert sanitize_reply(550, EnhancedCode(4, 7, 1), "x").enhanced == EnhancedCode(5, 7, 1)


def test_non_ascii_is_transliterated() -> None:
    """Accents are dropped, typographic quotes straightened, the rest becomes '?'."""
    assert clean_text("Ünïcödé “quotes” – ok 日本") == 'Unicode "quotes" - ok ??'


def test_long_text_wraps_within_the_rfc_limit() -> None:
    """A 2,000-character line wraps into lines of at most 512 octets with their prefix."""
    reply = sanitize_reply(554, EnhancedCode(5, 7, 1), "word " * 400)
    assert len(reply.lines) > 1
    assert all(len(line) <= MAX_LINE_OCTETS for line in reply.wire().split("\r\n"))


def test_too_many_lines_are_cut_to_32() -> None:
    """More than 32 lines are cut, and the last one says so."""
    reply = sanitize_reply(451, None, "\n".join(f"line {i}" for i in range(100)))
    assert len(reply.lines) == MAX_LINES
    assert reply.lines[-1].endswith("...")


def test_not_a_reply_code_is_refused() -> None:
    """Only 2xx-5xx codes can be sanitized into a reply."""
    with pytest.raises(ValueError, match="not an SMTP reply code"):
        sanitize_reply(600, None, "x")


def test_outlet_escapes() -> None:
    """libmilter gets % doubled; Postfix footers get $ doubled."""
    assert milter_line("100% sure, 50%% off") == "100%% sure, 50%%%% off"
    assert footer_text("costs $5\r\nnow") == "costs $$5 now"


@given(
    code=st.integers(min_value=200, max_value=599),
    enhanced=st.none()
    | st.builds(EnhancedCode, st.sampled_from([2, 4, 5]), st.integers(0, 999), st.integers(0, 999)),
    text=st.text() | st.lists(st.text(), max_size=50),
)
def test_sanitized_replies_are_always_safe(
    code: int, enhanced: EnhancedCode | None, text: str | list[str]
) -> None:
    """Whatever the input, the wire form has no stray CR/LF/NUL, fits the limits and keeps the code."""
    reply = sanitize_reply(code, enhanced, text)
    wire = reply.wire()
    lines = wire.split("\r\n")
    assert lines[-1] == ""
    assert 1 <= len(lines) - 1 <= MAX_LINES
    for i, line in enumerate(lines[:-1]):
        assert "\r" not in line and "\n" not in line and "\x00" not in line
        assert line.isascii() and line.isprintable()
        assert len(line) + 2 <= MAX_LINE_OCTETS
        assert line.startswith(str(code))
        assert line[3] == ("-" if i < len(lines) - 2 else " ")
    if reply.enhanced is not None:
        assert reply.enhanced.klass == code // 100
    assert sanitize_reply(code, reply.enhanced, list(reply.lines)) == reply  # idempotent


@given(st.text(alphabet=st.sampled_from("%ab "), max_size=600) | st.text())
def test_milter_lines_never_have_a_lone_percent(text: str) -> None:
    """After milter_line every run of % has even length and the line fits libmilter."""
    for line in sanitize_reply(550, EnhancedCode(5, 7, 1), text).lines:
        escaped = milter_line(line)
        assert len(escaped) <= MILTER_MAX_TEXT
        for run in escaped.split("%%"):
            assert "%" not in run


def test_a_line_of_percent_signs_is_shortened_for_libmilter() -> None:
    """496 '%' would double to 992 characters, over libmilter's 980."""
    line = sanitize_reply(550, None, "%" * 496).lines[0]
    assert len(milter_line(line)) <= MILTER_MAX_TEXT


def test_safe_reply_is_a_value() -> None:
    """SafeReply is frozen."""
    reply = SafeReply(250, None, ("OK",))
    with pytest.raises(AttributeError):
        reply.code = 550  # type: ignore[misc]


@given(
    code=st.integers(min_value=200, max_value=599),
    enhanced=st.none()
    | st.builds(EnhancedCode, st.sampled_from([2, 4, 5]), st.integers(0, 99), st.integers(0, 99)),
    words=st.lists(st.from_regex(r"[A-Za-z][A-Za-z0-9.,]{0,20}", fullmatch=True), max_size=60),
)
def test_parse_reads_back_what_sanitize_renders(
    code: int, enhanced: EnhancedCode | None, words: list[str]
) -> None:
    """parse(render(x)) == x: the code, the class-matched enhanced code and every word survive."""
    reply = sanitize_reply(code, enhanced, " ".join(words))
    parsed = parse_reply(reply.wire())
    assert parsed.code == code
    if reply.enhanced is not None and reply.enhanced.klass == code // 100:
        assert parsed.enhanced == reply.enhanced
    assert parsed.text.split() == " ".join(reply.lines).split()
    assert parsed.lines == len(reply.lines)
