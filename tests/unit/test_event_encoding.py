"""Events are compact JSON, one form whichever encoder wrote the line."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

from smtp_policy.core.events import Event, EventKind, Source
from smtp_policy.emit import EventWriter

TS = datetime(2026, 12, 6, 18, 0, tzinfo=UTC)


def _line(**fields: object) -> str:
    out = io.StringIO()
    EventWriter(out).emit(Event(event=EventKind.REPLY, source=Source.PROXY, ts=TS, **fields))  # type: ignore[arg-type]
    return out.getvalue()


def test_a_line_is_compact_json_with_the_event_last() -> None:
    line = _line(text="550 5.7.1 no", code=550)
    assert line.endswith(',"event":"reply"}\n')
    assert ", " not in line and '": ' not in line
    assert json.loads(line)["code"] == 550


def _fields_line(text: object) -> str:
    out = io.StringIO()
    EventWriter(out).emit_fields({"source": "proxy", "text": text, "event": "reply"})
    return out.getvalue()


def test_a_line_orjson_refuses_has_the_same_form() -> None:
    """A raw lone surrogate (undecodable bytes no cap spelled out) or an integer past 64 bits
    sends the fields through the stdlib encoder: the same separators, valid UTF-8."""
    assert _fields_line("550 x") == '{"source":"proxy","text":"550 x","event":"reply"}\n'
    odd = _fields_line("550 \udcff")
    assert odd == '{"source":"proxy","text":"550 \\\\xff","event":"reply"}\n'
    assert json.loads(odd.encode("utf-8"))["text"] == "550 \\xff"
    assert _fields_line(2**70) == f'{{"source":"proxy","text":{2**70},"event":"reply"}}\n'


def test_non_ascii_stays_readable_and_line_breakers_are_escaped() -> None:
    line = _line(text="550 Empfänger \u2028 \x85 \x7f")
    assert "Empfänger" in line
    assert "\\u2028" in line and "\\u0085" in line and "\\u007f" in line
    assert len(line.splitlines()) == 1
