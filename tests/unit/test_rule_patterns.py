"""Issue 16, item 7: admin rule patterns run on RE2, in time linear in the value."""

from __future__ import annotations

import re
import time

import pytest

from smtp_policy.core.policy import MAX_MATCHED_CHARS, AdminPattern, RuleFacts, compile_pattern
from tests.unit.test_rules import rule

#: The pattern that stalled every policy client for 6.3 s on a 27-character sender with `re`.
CATASTROPHIC = r"/^([a-z0-9]+[._-]?)+@partner\.example$/"


def test_patterns_are_compiled_by_re2() -> None:
    pattern = compile_pattern(CATASTROPHIC)
    assert isinstance(pattern, AdminPattern)
    assert type(pattern.compiled).__module__.startswith("re2")
    assert pattern.source == CATASTROPHIC
    assert pattern.search("Someone.Else@partner.example")
    assert not pattern.search("someone@elsewhere.example")


def test_catastrophic_pattern_takes_linear_time() -> None:
    """A sender that makes backtracking take exponential time costs no more than a few times a
    trivial pattern on a value of the same length (Python's `re` would not return)."""
    hostile = "a" * 27 + "!@partner.example"
    long_hostile = "a1." * 3000 + "!"
    trivial = compile_pattern("/partner/")
    slow = compile_pattern(CATASTROPHIC)

    def cost(pattern: AdminPattern, value: str) -> float:
        start = time.perf_counter()
        for _ in range(50):
            pattern.search(value)
        return time.perf_counter() - start

    for value in (hostile, long_hostile):
        baseline = min(cost(trivial, value) for _ in range(3))
        assert min(cost(slow, value) for _ in range(3)) < 50 * baseline + 0.05
        assert not slow.search(value)


def test_values_are_cut_before_matching() -> None:
    tail = compile_pattern("/x$/")
    assert tail.search("a" * (MAX_MATCHED_CHARS - 1) + "x")
    assert not tail.search("a" * MAX_MATCHED_CHARS + "x")


@pytest.mark.parametrize(
    ("glob", "value", "matches"),
    [
        ("*@busy.test", "Bob@BUSY.test", True),
        ("*@busy.test", "bob@busy.test.evil", False),
        ("a?c@x", "abc@x", True),
        ("[!a]*", "abc", False),
        ("[]a]", "]", True),
        ("x[", "x[", True),
        ("a.b", "axb", False),
        ("line*", "line\nbreak", True),
    ],
)
def test_globs_keep_their_meaning(glob: str, value: str, matches: bool) -> None:
    assert compile_pattern(glob).search(value) is matches


@pytest.mark.parametrize("bad", [r"/(a)\1/", "/(?<=a)b/", "/a(?=b)/"])
def test_what_re2_cannot_run_is_refused(bad: str) -> None:
    with pytest.raises(re.error, match=r"linear-time engine \(RE2\)"):
        compile_pattern(bad)


def test_rules_match_through_re2() -> None:
    r = rule(sender=(CATASTROPHIC,))
    assert r.matches(RuleFacts(client_addr="192.0.2.1", sender="<ok.name@partner.example>"))
    assert not r.matches(RuleFacts(client_addr="192.0.2.1", sender="a" * 40 + "!@partner.example"))
