"""Event files rotated by rename: SIGHUP makes every daemon reopen its file, losing nothing."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from smtp_policy.core.events import Event, EventKind, Source
from smtp_policy.emit import EventWriter
from smtp_policy.wire import netstring
from tests.helpers import free_port, stop, wait_port


def _event(n: int) -> Event:
    return Event(event=EventKind.LOOKUP, source=Source.MAPS, ts=datetime.now(UTC), text=str(n))


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(probe: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


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
    assert [e["text"] for e in _read(tmp_path / "events.jsonl.1")] == ["1", "2"]
    assert [e["text"] for e in _read(path)] == ["3"]


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
    events = _read(moved / "events.jsonl")
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
    texts = [e["text"] for f in tmp_path.iterdir() for e in _read(f)]
    assert sorted(map(int, texts)) == list(range(4 * per_thread))


def _daemon(argv: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtp_policy", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_port(port, proc)
    return proc


def _lookup(port: int, key: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(netstring.encode(key.encode()))
        decoder = netstring.NetstringDecoder()
        while (payload := decoder.next()) is None:
            decoder.feed(conn.recv(4096))
        return payload


def test_maps_server_reopens_its_events_on_sighup(tmp_path: Path) -> None:
    """Lookups before the rotation stay in the old file; those after it go to the new one."""
    path, port = tmp_path / "events.jsonl", free_port()
    proc = _daemon(["maps", "--listen", f"inet:127.0.0.1:{port}", "--events", str(path)], port)
    try:
        assert _lookup(port, "footer 550 5.1.1 <a@b.test>: User unknown").startswith(b"OK ")
        path.rename(tmp_path / "events.jsonl.1")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: any(e["event"] == "reloaded" for e in _read(path)), "the reload event")
        _lookup(port, "footer 451 4.7.1 Try again later")
    finally:
        stop(proc)
    old, new = _read(tmp_path / "events.jsonl.1"), _read(path)
    assert [e["code"] for e in old if e["event"] == "lookup"] == [550]
    assert [e["code"] for e in new if e["event"] == "lookup"] == [451]


def test_milter_reopens_its_events_on_sighup(tmp_path: Path) -> None:
    """The milter's reload event lands in the new file."""
    path, port = tmp_path / "events.jsonl", free_port()
    listen = f"inet:{port}@127.0.0.1"
    proc = _daemon(["milter", "--listen", listen, "--events", str(path)], port)
    try:
        _wait(lambda: any(e["event"] == "started" for e in _read(path)), "the start event")
        path.rename(tmp_path / "events.jsonl.1")
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: any(e["event"] == "reloaded" for e in _read(path)), "the reload event")
    finally:
        stop(proc)
    assert not any(e["event"] == "reloaded" for e in _read(tmp_path / "events.jsonl.1"))


SYSLOG = "Nov 29 05:00:{s:02d} mx postfix/smtpd[100]: NOQUEUE: reject: RCPT from c.test[192.0.2.{n}]: 550 5.1.1 <u{n}@local.test>: Recipient address rejected: User unknown in local recipient table; from=<s@c.test> to=<u{n}@local.test> proto=ESMTP helo=<c.test>\n"


def test_follower_reopens_its_events_on_sighup(tmp_path: Path) -> None:
    """Lines logged around each events rotation give every reply event exactly once."""
    log, events = tmp_path / "mail.log", tmp_path / "events.jsonl"
    log.write_text("")
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtp_policy", "follow", "--log", str(log), "--events",
         str(events), "--state", str(tmp_path / "state")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    n = 0

    def replies() -> list[dict[str, Any]]:
        return [
            e for f in tmp_path.glob("events.jsonl*") for e in _read(f) if e["event"] == "reply"
        ]

    try:
        _wait(lambda: any(e["event"] == "started" for e in _read(events)), "the follower")
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
        stop(proc)
    recipients = sorted(e["recipient"] for e in replies())
    assert recipients == sorted(f"<u{i}@local.test>" for i in range(1, n + 1))
    assert all(len([e for e in _read(f) if e["event"] == "reply"]) == 5 for f in
               tmp_path.glob("events.jsonl*"))  # fmt: skip
