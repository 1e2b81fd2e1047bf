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
