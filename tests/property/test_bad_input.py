"""No input breaks the reply core: it always answers, and never with a traceback."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.core.explain import explain_text
from smtp_policy.core.model import ReplyClass
from smtp_policy.core.parse import parse_reply
from smtp_policy.data import default_knowledge

KB = default_knowledge()

reply_like = st.builds(
    lambda code, sep, enh, text: f"{code}{sep}{enh} {text}",
    st.integers(0, 999),
    st.sampled_from([" ", "-", "", "\r\n"]),
    st.sampled_from(["", "5.1.1", "4.7.1", "2.0.0", "9.9.9", "5.999.999"]),
    st.text(max_size=300),
)


@given(
    st.one_of(
        st.text(max_size=2000),
        reply_like,
        st.binary(max_size=2000).map(lambda b: b.decode("utf-8", "replace")),
    )
)
@settings(max_examples=400, deadline=None)
def test_anything_explains(text: str) -> None:
    """Any text parses, classifies and explains; failures always carry a reason."""
    result = explain_text(text, KB)
    c = result.classification
    assert c.klass in set(ReplyClass)
    if c.klass in (ReplyClass.TRANSIENT, ReplyClass.PERMANENT, ReplyClass.UNKNOWN):
        assert c.reason is not None
    assert result.summary
    assert parse_reply(text, KB.codebook) == c.reply


def test_huge_inputs_are_bounded() -> None:
    """A megabyte of text and a 1,000-line reply explain (bounded work, no hang)."""
    assert explain_text("x" * 1_048_576, KB).classification.klass is ReplyClass.UNKNOWN
    thousand = "\r\n".join(f"550-5.7.1 line {i}" for i in range(999)) + "\r\n550 5.7.1 end"
    result = explain_text(thousand, KB)
    assert result.classification.klass is ReplyClass.PERMANENT
    assert result.reply.lines <= 64
