"""An EventWriter that holds its events: kept in order while held, written with one ``write``
on release, nothing held or lost across a reopen (the asyncio milter holds each batch)."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

from smtp_policy.core.events import Event, EventKind, Source
from smtp_policy.emit import EventWriter
from tests.helpers import read_events


def _event(n: int) -> Event:
    return Event(event=EventKind.LOOKUP, source=Source.MILTER, ts=datetime.now(UTC), text=str(n))


class _Counting(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _texts(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["text"] for line in stream.getvalue().splitlines()]


def test_held_events_go_out_in_order_with_one_write_on_release() -> None:
    stream = _Counting()
    writer = EventWriter(stream)
    writer.hold()
    for n in range(3):
        writer.emit(_event(n))
    assert stream.getvalue() == ""
    writer.release()
    assert _texts(stream) == ["0", "1", "2"]
    assert stream.writes == 1
    writer.emit(_event(3))  # not held any more: at once
    assert _texts(stream)[-1] == "3"


def test_holding_twice_is_holding_once_and_an_empty_release_writes_nothing() -> None:
    stream = _Counting()
    writer = EventWriter(stream)
    writer.release()
    writer.hold()
    writer.hold()
    writer.release()
    assert stream.writes == 0
    writer.hold()
    writer.emit(_event(1))
    writer.hold()
    writer.emit(_event(2))
    writer.release()
    assert _texts(stream) == ["1", "2"]


def test_events_held_across_a_reopen_go_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    writer = EventWriter.open(str(path))
    writer.emit(_event(1))
    writer.hold()
    writer.emit(_event(2))
    path.rename(tmp_path / "events.jsonl.1")
    writer.reopen(Source.MILTER)
    writer.emit(_event(3))
    writer.release()
    writer.close()
    assert [e.get("text") for e in read_events(tmp_path / "events.jsonl.1")] == ["1"]
    assert [e.get("text") for e in read_events(path)] == ["2", "3"]


def test_events_from_another_thread_while_this_one_holds_are_all_written_in_order() -> None:
    stream = io.StringIO()
    writer = EventWriter(stream)
    done = threading.Event()

    def other() -> None:
        for n in range(2000):
            writer.emit(_event(n))
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    while not done.is_set():  # this thread holds and releases the whole time
        writer.hold()
        writer.release()
    thread.join()
    writer.release()
    assert _texts(stream) == [str(n) for n in range(2000)]
