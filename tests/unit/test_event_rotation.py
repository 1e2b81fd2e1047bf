"""Event files rotated by rename: SIGHUP makes every daemon reopen its file, losing nothing."""

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
    return Event(event=EventKind.LOOKUP, source=Source.MAPS, ts=datetime.now(UTC), text=str(n))


def test_reopen_continues_in_a_new_file(tmp_path: Path) -> None:
    """Rename, reopen: old lines stay in the renamed file, new ones go to a fresh file."""
    path = tmp_path / "events.jsonl"
    writer = EventWriter.open(str(path))
    writer.emit(_event(1))
    path.rename(tmp_path / "events.jsonl.1")
    writer.emit(_event(2))  # still the old file, as with any open file
    writer.reopen(Source.MAPS)
    writer.emit(_event(3))
    writer.close()
    assert [e.get("text") for e in read_events(tmp_path / "events.jsonl.1")] == ["1", "2"]
    assert [e.get("text") for e in read_events(path)] == ["3"]


def test_reopen_failure_keeps_the_old_file_and_says_why(tmp_path: Path) -> None:
    """When the path cannot be opened again, the writer keeps going and records an error."""
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "events.jsonl"
    writer = EventWriter.open(str(path))
    moved = tmp_path / "moved"
    folder.rename(moved)  # the path's directory is gone
    writer.reopen(Source.MILTER)
    writer.emit(_event(1))
    writer.close()
    events = read_events(moved / "events.jsonl")
    assert events[0]["event"] == "error" and "cannot reopen" in events[0]["text"]
    assert events[1].get("text") == "1"


def test_reopen_on_stdout_is_a_no_op() -> None:
    """A writer on a stream it did not open has nothing to reopen."""
    stream = io.StringIO()
    writer = EventWriter(stream)
    writer.reopen(Source.LOG)
    writer.emit(_event(1))
    assert json.loads(stream.getvalue())["text"] == "1"


def test_reopen_under_concurrent_writers_loses_nothing(tmp_path: Path) -> None:
    """Four threads write while the file is rotated 20 times: every event once, none broken."""
    path = tmp_path / "events.jsonl"
    writer = EventWriter.open(str(path))
    per_thread = 500

    def work(base: int) -> None:
        for i in range(per_thread):
            writer.emit(_event(base + i))

    threads = [threading.Thread(target=work, args=(k * per_thread,)) for k in range(4)]
    for t in threads:
        t.start()
    for n in range(20):
        path.rename(tmp_path / f"events.jsonl.{n}")
        writer.reopen(Source.MAPS)
    for t in threads:
        t.join()
    writer.close()
    texts = [e["text"] for f in tmp_path.iterdir() for e in read_events(f)]
    assert sorted(map(int, texts)) == list(range(4 * per_thread))


def test_open_creates_the_missing_directories(tmp_path: Path) -> None:
    """[events] output may name a directory that does not exist yet: open creates it."""
    path = tmp_path / "new" / "dir" / "events.jsonl"
    writer = EventWriter.open(str(path))
    writer.emit(_event(1))
    writer.close()
    assert [e.get("text") for e in read_events(path)] == ["1"]
