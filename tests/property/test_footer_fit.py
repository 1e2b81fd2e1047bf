"""Footers that are too long are shortened without losing their short lines or breaking escapes."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from smtp_policy.core.rewrite import MAX_FOOTER_CHARS, fit_footer
from smtp_policy.core.sanitize import footer_text

LINK = "More information: https://help.example.net/mail#blocked"


def test_the_longest_line_is_shortened_and_the_link_stays_whole() -> None:
    advice = "Set the sending server to use its full host name in HELO. " * 12
    text = fit_footer([footer_text(advice), footer_text(LINK)], MAX_FOOTER_CHARS)
    first, last = text.split("\\n")
    assert len(text) <= MAX_FOOTER_CHARS
    assert last == LINK
    assert first.endswith("...") and not first.endswith(" ...")
    assert first[:-3].endswith(("HELO", "name", "host", "server", "Set", "to", "use", "its", "in"))


def test_a_footer_that_fits_is_unchanged() -> None:
    assert fit_footer(["a", "b $$ c"], MAX_FOOTER_CHARS) == "a\\nb $$ c"


def test_a_cut_drops_what_each_step_uncovers() -> None:
    """Dropping half of a ``$$`` can leave a lone backslash at the end, which is dropped too
    (found by the property test below)."""
    parts = [footer_text(line) for line in ["", ";;$", ";;;;;", "\\$;;;"]]
    assert fit_footer(parts, 20) == "\\n;;$$\\n;;;;;\\n..."


@given(
    # no "." in the alphabet: a "..." then marks a cut
    st.lists(st.text(alphabet=st.sampled_from("ab $\\n,;"), max_size=300), min_size=1, max_size=6),
    st.integers(min_value=20, max_value=500),
)
def test_any_fit_is_within_the_limit_and_keeps_escapes_whole(lines: list[str], limit: int) -> None:
    parts = [footer_text(line) for line in lines]
    text = fit_footer(parts, limit)
    assert len(text) <= max(limit, 3)
    # every $ still comes in pairs (Postfix reads a lone $ as a macro), no escape cut in half
    assert all(len(run) % 2 == 0 for run in re.findall(r"\$+", text))
    if text != "\\n".join(parts):  # shortened: no cut may end in half of a \\n
        cut = [p[:-3] for p in text.split("\\n") if p.endswith("...")]
        assert cut and not any(p.endswith("\\") for p in cut)
