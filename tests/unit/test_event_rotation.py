"""Event files rotated by rename: SIGHUP makes every daemon reopen its file, losing nothing."""

from __future__ import annotations

import io
import json
import signal
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smtp_policy.core.events import Event, EventKind, Source
from smtp_policy.emit import EventWriter
from smtp_policy.lab.instance import free_port, poll
from smtp_policy.wire import netstring
from tests.helpers import Daemon, read_events


def _event(n: int) -> Event:
    return Event(event=EventKind.LOOKUP, source=Source.MAPS, ts=datetime.now(UTC), text=str(n))


def _wait(probe: Callable[[], bool], what: str, timeout: float = 30) -> None:
    poll(lambda: probe() or None, timeout, lambda: what)


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
    assert [e["text"] for e in read_events(tmp_path / "events.jsonl.1")] == ["1", "2"]
    assert [e["text"] for e in read_events(path)] == ["3"]


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
    assert events[1]["text"] == "1"


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


def _lookup(port: int, key: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(netstring.encode(key.encode()))
        decoder = netstring.NetstringDecoder()
        while (payload := decoder.next()) is None:
            decoder.feed(conn.recv(4096))
        return payload


def test_maps_server_reopens_its_events_on_sighup(tmp_path: Path) -> None:
    """Lookups before the rotation stay in the old file; those after it go to the new one."""
    port = free_port()
    proc = Daemon("maps", tmp_path, port=port, events=tmp_path / "events.jsonl")
    path = proc.events.path
    try:
        proc.start()
        assert _lookup(port, "footer 550 5.1.1 <a@b.test>: User unknown").startswith(b"OK ")
        path.rename(tmp_path / "events.jsonl.1")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: any(e["event"] == "reloaded" for e in read_events(path)), "the reload event")
        _lookup(port, "footer 451 4.7.1 Try again later")
    finally:
        proc.stop()
    old, new = read_events(tmp_path / "events.jsonl.1"), read_events(path)
    assert [e["code"] for e in old if e["event"] == "lookup"] == [550]
    assert [e["code"] for e in new if e["event"] == "lookup"] == [451]


def test_milter_reopens_its_events_on_sighup(tmp_path: Path) -> None:
    """The milter's reload event lands in the new file."""
    proc = Daemon("milter", tmp_path, port=free_port(), events=tmp_path / "events.jsonl")
    path = proc.events.path
    try:
        proc.start()  # waits for the start event
        path.rename(tmp_path / "events.jsonl.1")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: any(e["event"] == "reloaded" for e in read_events(path)), "the reload event")
    finally:
        proc.stop()
    assert not any(e["event"] == "reloaded" for e in read_events(tmp_path / "events.jsonl.1"))


SYSLOG = "Nov 29 05:00:{s:02d} mx postfix/smtpd[100]: NOQUEUE: reject: RCPT from c.test[192.0.2.{n}]: 550 5.1.1 <u{n}@local.test>: Recipient address rejected: User unknown in local recipient table; from=<s@c.test> to=<u{n}@local.test> proto=ESMTP helo=<c.test>\n"


def test_follower_reopens_its_events_on_sighup(tmp_path: Path) -> None:
    """Lines logged around each events rotation give every reply event exactly once."""
    log = tmp_path / "mail.log"
    log.write_text("")
    events = tmp_path / "events.jsonl"
    proc = Daemon("follow", tmp_path, "--log", str(log), "--state", str(tmp_path / "state"),
                  events=events)  # fmt: skip
    n = 0

    def replies() -> list[dict[str, Any]]:
        return [
            e
            for f in tmp_path.glob("events.jsonl*")
            for e in read_events(f)
            if e["event"] == "reply"
        ]

    try:
        proc.start()  # waits for the follower's start event
        for round_ in range(3):
            with open(log, "a") as fh:
                for _ in range(5):
                    n += 1
                    fh.write(SYSLOG.format(s=n % 60, n=n))
            _wait(lambda: len(replies()) >= 5 * (round_ + 1), f"{n} reply events")  # noqa: B023
            if round_ < 2:
                events.rename(tmp_path / f"events.jsonl.{round_}")
                proc.send_signal(signal.SIGHUP)
                _wait(events.exists, "the reopened events file")
    finally:
        proc.stop()
    recipients = sorted(e["recipient"] for e in replies())
    assert recipients == sorted(f"<u{i}@local.test>" for i in range(1, n + 1))
    assert all(len([e for e in read_events(f) if e["event"] == "reply"]) == 5 for f in
               tmp_path.glob("events.jsonl*"))  # fmt: skip
