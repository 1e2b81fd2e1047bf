"""The event schema and its JSON Lines writer."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from smtp_policy.core.events import (
    FIELD_NAMES,
    SCHEMA_VERSION,
    Direction,
    Event,
    EventKind,
    Source,
)
from smtp_policy.emit import EventWriter

TS = datetime(2026, 11, 29, 10, 2, 3, 456789, tzinfo=timezone(timedelta(hours=1)))


def test_json_form_has_the_known_fields_and_utc_time() -> None:
    """to_dict has the schema version, every known field (a null one left out) and a UTC 'Z'
    time."""
    event = Event(
        event=EventKind.REPLY,
        source=Source.MILTER,
        ts=TS,
        direction=Direction.UPSTREAM,
        stage="rcpt",
        code=550,
        klass="permanent",
        extra={"map": "footer"},
    )
    data = event.to_dict()
    assert data["schema"] == SCHEMA_VERSION
    assert data["ts"] == "2026-11-29T09:02:03.456789Z"
    assert data.get("class") == "permanent"
    assert data.get("direction") == "upstream"
    assert data["map"] == "footer"
    assert set(data) == {"schema", "event", "source", "ts", "direction", "stage", "code"} | {
        "class",
        "map",
    }
    assert "recipient" not in data
    assert set(data) - {"map"} <= FIELD_NAMES


def test_written_events_have_no_null_fields() -> None:
    """A written event leaves out every schema field that is null; extras keep their nulls."""
    out = io.StringIO()
    EventWriter(out).emit(
        Event(
            event=EventKind.STAGE,
            source=Source.MILTER,
            ts=TS,
            stage="connect",
            extra={"client_port": None},
        )
    )
    line = json.loads(out.getvalue())
    assert line == {
        "schema": SCHEMA_VERSION,
        "source": "milter",
        "ts": "2026-11-29T09:02:03.456789Z",
        "stage": "connect",
        "client_port": None,
        "event": "stage",
    }
    assert list(line)[-1] == "event"


def test_naive_times_and_shadowing_extras_are_refused() -> None:
    """A naive timestamp or an extra named like a schema field is a programming error."""
    with pytest.raises(ValueError, match="timezone-aware"):
        Event(event=EventKind.WARNING, source=Source.LOG, ts=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="shadow"):
        Event(event=EventKind.WARNING, source=Source.LOG, ts=TS, extra={"class": "x"})


def test_writer_keeps_lines_whole_across_threads() -> None:
    """Many threads writing at once still give one valid JSON object per line."""
    out = io.StringIO()
    writer = EventWriter(out)

    def burst(n: int) -> None:
        for i in range(200):
            writer.emit(
                Event(
                    event=EventKind.REPLY,
                    source=Source.MILTER,
                    ts=datetime.now(UTC),
                    session=f"s{n}",
                    text="x" * (i % 50),
                    extra={"i": i},
                )
            )

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1600
    parsed = [json.loads(line) for line in lines]
    assert all(p["event"] == "reply" for p in parsed)


LONG = "x" * 600
HOSTILE = "h\udcff\u00e9llo"


@pytest.mark.parametrize(
    ("text", "friendly", "head", "extra"),
    [
        (
            "250 2.0.0 Ok: queued as 4F1Z2X3Y",
            "2.0.0 Ok: queued as 4F1Z2X3Y",
            {"stage": "eom", "queue_id": "4F1Z2X3Y", "sender": "<a@b.test>"},
            {"command": ".", "origin": "upstream", "rewritten": False, "client_port": 4000},
        ),
        (
            "550 5.1.1 <bob@x.test>: Recipient address rejected: User unknown",
            "5.1.1 Sorry: " + "y" * 20000,
            {"stage": "rcpt", "recipient": "<bob@x.test>", "helo": LONG, "client_name": HOSTILE},
            {"command": "RCPT", LONG: HOSTILE, "tls_version": "TLSv1.3", "repeated": 3},
        ),
        ("error text only", None, {"session": "proxy-1", "client_addr": "::1"}, {}),
        ("221 2.0.0 Bye", "2.0.0 Bye", {"sender": "<>", "recipient": LONG}, {"nested": [LONG]}),
    ],
)
def test_event_fields_is_to_dict(
    text: str, friendly: str | None, head: dict[str, str], extra: dict[str, object]
) -> None:
    """The lighter path (event_fields over described_fields, the reply's part worked out once)
    builds exactly what Event.to_dict builds: fields, caps and key order."""
    from smtp_policy.core.events import described_fields, event_fields, reply_fields
    from smtp_policy.core.explain import explain_text
    from smtp_policy.data import default_knowledge

    explanation = explain_text(text, default_knowledge()) if text[:1].isdigit() else None
    kind = EventKind.REPLY if explanation is not None else EventKind.ERROR
    direction = Direction.UPSTREAM if explanation is not None else None
    full = Event(
        event=kind,
        source=Source.PROXY,
        ts=TS,
        direction=direction,
        friendly=friendly,
        extra=extra,
        **head,  # type: ignore[arg-type]
        **reply_fields(explanation, text=text),
    ).to_dict()
    described = described_fields(explanation, text, friendly)
    fast = event_fields(kind, Source.PROXY, TS, described, extra, direction=direction, **head)
    assert list(fast.items()) == list(full.items())
    with pytest.raises(ValueError, match="shadow"):
        event_fields(kind, Source.PROXY, TS, described, {"sender": "x"})


def test_emit_fields_writes_what_emit_writes() -> None:
    """EventWriter.emit_fields(to_dict()) writes the line emit() writes."""
    event = Event(event=EventKind.REPLY, source=Source.PROXY, ts=TS, code=250, text="250 ok")
    one, two = io.StringIO(), io.StringIO()
    EventWriter(one).emit(event)
    EventWriter(two).emit_fields(event.to_dict())
    assert one.getvalue() == two.getvalue()
