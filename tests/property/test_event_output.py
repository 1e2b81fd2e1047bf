"""Any event field values give one valid UTF-8 JSON line that reads back as the capped values."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.core.events import (
    DETAIL_CAP,
    NAME_CAP,
    TEXT_CAP,
    Event,
    EventKind,
    Source,
    bare_address,
    capped,
)
from smtp_policy.core.sanitize import json_text, printable
from smtp_policy.emit import EventWriter

#: Any code point, with lone surrogates (surrogateescape bytes and others), line breaks and
#: controls drawn often.
CHARS = st.characters(codec=None) | st.sampled_from(
    ["\udcff", "\udc80", "\ud800", "\udfff", "\u2028", "\u2029", "\x85", "\x1b", "\x00", "\x7f",
     "\x9b", "\n", "\r", "\x0b", "\x1c", "é", "€", "\U0001f600"]
)  # fmt: skip
#: Short texts, and now and then long enough to hit the caps.
ANY_TEXT = st.text(alphabet=CHARS, max_size=40) | st.builds(
    lambda s, n: s * n, st.text(alphabet=CHARS, min_size=1, max_size=8), st.integers(1, 3000)
)

#: Every character ``str.splitlines`` splits on.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


@settings(max_examples=200, deadline=None)
@given(
    text=ANY_TEXT,
    helo=ANY_TEXT,
    recipient=ANY_TEXT,
    summary=ANY_TEXT,
    extra_key=ANY_TEXT.filter(lambda k: k not in ("schema", "event", "text")),
    extra_value=ANY_TEXT,
)
def test_any_event_is_one_valid_utf8_json_line(
    *, text: str, helo: str, recipient: str, summary: str, extra_key: str, extra_value: str
) -> None:
    """Valid UTF-8, one ``splitlines`` line, and JSON that reads back as the capped values."""
    event = Event(
        event=EventKind.REPLY,
        source=Source.PROXY,
        ts=datetime.now(UTC),
        text=text,
        helo=helo,
        recipient=recipient,
        summary=summary,
        extra={"x-" + extra_key: {extra_key: [extra_value]}},
    )
    out = io.StringIO()
    EventWriter(out).emit(event)
    line = out.getvalue()
    assert line.endswith("\n")
    assert len(line.encode("utf-8").decode("utf-8").splitlines()) == 1
    data = json.loads(line)
    assert data.get("text") == capped(text, TEXT_CAP)
    assert data.get("helo") == capped(helo, NAME_CAP)
    assert data.get("recipient") == capped(bare_address(recipient), NAME_CAP)
    assert data.get("summary") == capped(summary, DETAIL_CAP)
    nested = data[capped("x-" + extra_key, NAME_CAP)]
    assert nested == {capped(extra_key, NAME_CAP): [capped(extra_value, DETAIL_CAP)]}


@settings(max_examples=200, deadline=None)
@given(ANY_TEXT)
def test_json_text_never_breaks_a_line_or_utf8(value: str) -> None:
    """Whatever the text, its JSON has no raw line break and encodes as strict UTF-8."""
    line = json_text({"v": value})
    line.encode("utf-8")
    assert not any(char in line for char in LINE_BREAKS)


@settings(max_examples=200, deadline=None)
@given(ANY_TEXT)
def test_printable_leaves_no_control_for_a_terminal(value: str) -> None:
    """What ``printable`` gives has no control, no line break and encodes as UTF-8."""
    shown = printable(value)
    shown.encode("utf-8")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in shown)
    assert len(shown.splitlines()) <= 1
