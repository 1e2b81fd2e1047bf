"""How `explain` reads: the order of its sections, wrapping, colour, and splitting stdin."""

from __future__ import annotations

import re

import pytest

from smtp_policy.commands.explain import split_replies, text_width, use_colour
from smtp_policy.core.explain import explain_text, render_explanation
from smtp_policy.data import default_knowledge

KB = default_knowledge()
POSTFIX_UNKNOWN = (
    "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in local recipient table"
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _labels(block: str) -> list[str]:
    return [line.split(":", 1)[0] for line in block.splitlines() if not line.startswith(" ")]


def test_what_happened_and_what_to_do_come_before_the_codes() -> None:
    labels = _labels(render_explanation(explain_text(POSTFIX_UNKNOWN, KB)))
    assert labels[:3] == ["Summary", "Who acts", "What to do"]
    for code_label in ("Code", "Enhanced", "Class", "Reason"):
        assert labels.index(code_label) > labels.index("What to do")
    assert labels.index("Code") < labels.index("Enhanced") < labels.index("Class")
    assert labels.index("Class") < labels.index("Reason")


def test_who_acts_is_said_in_words() -> None:
    block = render_explanation(explain_text("550 5.7.1 Relaying denied", KB))
    line = next(x for x in block.splitlines() if x.startswith("Who acts:"))
    assert "the " in line  # words, not just the vocabulary's value


@pytest.mark.parametrize("width", [40, 60, 80, 100, 120])
def test_lines_fit_the_width(width: int) -> None:
    block = render_explanation(explain_text(POSTFIX_UNKNOWN, KB), width=width)
    longest_word = max(len(w) for w in POSTFIX_UNKNOWN.split())
    for line in block.splitlines():
        assert len(line) <= max(width, 13 + longest_word), line
    assert any(len(line) > width - 15 for line in block.splitlines())  # it does use the width


def test_narrow_and_wide_say_the_same_words() -> None:
    explanation = explain_text(POSTFIX_UNKNOWN, KB)
    narrow = render_explanation(explanation, width=40)
    wide = render_explanation(explanation, width=120)
    assert narrow.count("\n") > wide.count("\n")
    assert narrow.split() == wide.split()


def test_colour_only_decorates() -> None:
    explanation = explain_text(POSTFIX_UNKNOWN, KB)
    plain = render_explanation(explanation, width=80)
    coloured = render_explanation(explanation, width=80, colour=True)
    assert "\x1b" not in plain
    assert "\x1b[1mSummary:\x1b[0m" in coloured
    assert ANSI.sub("", coloured) == plain


@pytest.mark.parametrize(
    ("isatty", "no_color", "expected"),
    [
        (True, None, True),
        (True, "", True),  # NO_COLOR="" counts as unset (no-color.org)
        (True, "1", False),
        (True, "anything", False),
        (False, None, False),
        (False, "1", False),
    ],
)
def test_colour_needs_a_tty_and_no_no_color(
    isatty: bool, no_color: str | None, expected: bool
) -> None:
    assert use_colour(isatty, no_color) is expected


@pytest.mark.parametrize(
    ("isatty", "columns", "expected"),
    [
        (False, 30, 100),
        (False, 200, 100),
        (True, 30, 40),
        (True, 80, 80),
        (True, 200, 120),
        (True, 0, 100),
    ],
)
def test_width_follows_the_terminal_within_bounds(
    isatty: bool, columns: int, expected: int
) -> None:
    assert text_width(isatty, columns) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("550 5.1.1 User unknown", ["550 5.1.1 User unknown"]),
        ("550 5.1.1 a\n452 4.2.2 b\n", ["550 5.1.1 a", "452 4.2.2 b"]),
        (
            "550-5.7.1 a\r\n550-5.7.1 b\r\n550 5.7.1 c\r\n",
            ["550-5.7.1 a\n550-5.7.1 b\n550 5.7.1 c"],
        ),
        ("550-5.7.1 a\n550 5.7.1 b\n550 5.7.1 c", ["550-5.7.1 a\n550 5.7.1 b", "550 5.7.1 c"]),
        ("550-a\n451 b", ["550-a", "451 b"]),  # a different code starts a new reply
        ("User unknown\nin table\n\nMailbox full", ["User unknown\nin table", "Mailbox full"]),
        ("550 a\n  wrapped text\n421", ["550 a\nwrapped text", "421"]),
        ("5501 not a code\n550x neither", ["5501 not a code\n550x neither"]),
        ("\n \n\t\n", []),
        ("", []),
    ],
)
def test_split_replies(text: str, expected: list[str]) -> None:
    assert split_replies(text) == expected
