"""Each daemon reopens its events file on SIGHUP: real processes, files rotated by rename."""

from __future__ import annotations

import signal
import socket
from pathlib import Path
from typing import Any

from smtp_policy.lab.instance import free_port, poll
from smtp_policy.wire import netstring
from tests.helpers import Daemon, read_events


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
        proc.wait_for(lambda e: e["event"] == "reloaded")  # read from the new file
        _lookup(port, "footer 451 4.7.1 Try again later")
    finally:
        proc.stop()
    old, new = read_events(tmp_path / "events.jsonl.1"), read_events(path)
    assert [e.get("code") for e in old if e["event"] == "lookup"] == [550]
    assert [e.get("code") for e in new if e["event"] == "lookup"] == [451]


def test_milter_reopens_its_events_on_sighup(tmp_path: Path) -> None:
    """The milter's reload event lands in the new file."""
    proc = Daemon("milter", tmp_path, port=free_port(), events=tmp_path / "events.jsonl")
    path = proc.events.path
    try:
        proc.start()  # waits for the start event
        path.rename(tmp_path / "events.jsonl.1")
        proc.send_signal(signal.SIGHUP)
        proc.wait_for(lambda e: e["event"] == "reloaded")  # read from the new file
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
            poll(
                lambda: replies() if len(replies()) >= 5 * (round_ + 1) else None,  # noqa: B023
                30,
                lambda: f"{n} reply events",  # noqa: B023
            )
            if round_ < 2:
                events.rename(tmp_path / f"events.jsonl.{round_}")
                proc.send_signal(signal.SIGHUP)
                poll(lambda: events.exists() or None, 30, lambda: "the reopened events file")
    finally:
        proc.stop()
    recipients = sorted(e["recipient"] for e in replies())
    assert recipients == sorted(f"u{i}@local.test" for i in range(1, n + 1))
    assert all(len([e for e in read_events(f) if e["event"] == "reply"]) == 5 for f in
               tmp_path.glob("events.jsonl*"))  # fmt: skip
