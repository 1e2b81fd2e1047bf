"""Drill 4 (issue 7): the follower on a real Postfix maillog that is rotated while mail flows.

A sender thread keeps a stream of SMTP sessions going (unknown users, relaying denied, local
deliveries, mail relayed to a scripted downstream server, a multi-recipient message with a
bounced and a rejected recipient) while ``smtp-policy follow --state DIR`` follows the private
Postfix's ``maillog_file`` (written by postlogd). Meanwhile the log is rotated three ways, and
the follower is stopped (SIGTERM) and started again with the same ``--state`` twice:

1. stop, then **rename** (``maillog`` -> ``maillog.1``) and ``postfix reload`` so that
   postlogd opens a new file, then start: the follower must finish ``maillog.1`` from its
   saved position before it reads the new file;
2. **copytruncate** (copy to ``maillog.2``, truncate in place) while it runs;
3. stop and start again;
4. ``postfix logrotate`` (rename to ``maillog.<date>``, reload, gzip) while it runs.

The expected replies come from the raw log (every piece, the gzipped one unpacked) parsed with
the product's own parser (``smtp_policy.maillog.parse``); each reply line must give exactly one
reply event, matched by the line's identity (kind, program, pid, queue id, recipient, reply
text, status, relay, delays). Every queue id that left the queue (qmgr ``removed``) must have
exactly one complete message record with the recipients and upstream rejects its lines name.

Copytruncate is racy by nature (logrotate(8): "some logging data might be lost"): lines written
between the copy and the truncation are in neither file. The drill pauses the writer (SIGSTOP
to postlogd; Postfix's daemons queue their log datagrams meanwhile) for the copy and the
truncation, as logrotate users must. The follower may lag behind in the file: it reads the
lines it had not read yet from the copy (same first line, at least as long as its offset; the
report says how far behind it was). It cannot do that for a file it never opened, so the drill
copytruncates only once the follower has left ``maillog.1``. Likewise ``postfix logrotate``
gzips the old file a second after the rename: a follower that is running keeps it open and
finishes it, one stopped across it could not.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import smtplib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from smtp_policy.lab.instance import poll
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from smtp_policy.lab.remote import ScriptedServer
from smtp_policy.maillog.parse import parse_line
from smtp_policy.maillog.record import LogRecord
from smtp_policy.maillog.tracker import REPLY_KINDS
from tests.helpers import Daemon, sigstop
from tests.integration.drills import size

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

SENDER = "sender@local.test"
Key = tuple[Any, ...]


def angle(address: str | None) -> str | None:
    """An address as events write it: without angle brackets."""
    if address is not None and address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address


def record_key(r: LogRecord) -> Key:
    """The identity of a reply line, from its parsed record."""
    return (
        r.kind,
        r.program,
        r.pid,
        r.queue_id,
        angle(r.recipient),
        r.reply,
        r.status,
        r.relay,
        tuple(r.delays or ()),
    )


def event_key(e: dict[str, Any]) -> Key:
    """The same identity, from a reply event."""
    return (
        e["kind"],
        e["program"],
        e["pid"],
        e.get("queue_id"),
        e.get("recipient"),
        e.get("text"),
        e.get("status"),
        e.get("relay"),
        tuple(e.get("delays") or ()),
    )


class Sender(threading.Thread):
    """Sends one session after another until stopped; counts them."""

    def __init__(self, pf: PrivatePostfix, pause: float = 0.02) -> None:
        super().__init__(daemon=True, name="drill4-sender")
        self.pf = pf
        self.pause = pause
        self.sent = 0
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        """The stream: five kinds of session in turn."""
        while not self.halt.is_set():
            tag = f"d4m{self.sent:05d}"
            kind = self.sent % 5
            try:
                if kind == 0:
                    self.session(self.pf.smtp_port, [f"nosuchuser-{tag}@local.test"], tag)
                elif kind == 1:
                    self.session(self.pf.untrusted_port, [f"{tag}@elsewhere.test"], tag)
                elif kind == 2:
                    rcpts = ["alice@local.test", "bob@local.test", f"ok-{tag}@remote.test"]
                    rcpts += ["nouser@remote.test", f"nosuchuser-{tag}@local.test"]
                    self.session(self.pf.smtp_port, rcpts, tag)
                elif kind == 3:
                    self.session(self.pf.smtp_port, ["alice@local.test"], tag)
                else:
                    self.session(self.pf.smtp_port, [f"ok-{tag}@remote.test"], tag)
            except (OSError, smtplib.SMTPException) as exc:
                self.errors.append(f"{tag}: {exc!r}")
            self.sent += 1
            time.sleep(self.pause)

    def session(self, port: int, rcpts: list[str], tag: str) -> None:
        """One SMTP session; DATA if any recipient was accepted."""
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as smtp:
            smtp.ehlo()
            smtp.mail(SENDER)
            accepted = [r for r in rcpts if smtp.rcpt(r)[0] == 250]
            if accepted:
                body = f"From: <{SENDER}>\r\nSubject: drill4 {tag}\r\n\r\n{tag}\r\n"
                code, reply = smtp.data(body.encode())
                assert code == 250, reply

    def wait_sent(self, count: int, timeout: float = 120) -> None:
        """Wait until ``count`` sessions were sent in all."""
        poll(
            lambda: self.sent >= count or None,
            timeout,
            lambda: f"{count} sessions sent; sent {self.sent}, errors {self.errors}",
            unless=lambda: not self.is_alive(),
        )


class Follower(Daemon):
    """``smtp-policy follow`` on the maillog as a Daemon, restartable with its state."""

    def __init__(self, pf: PrivatePostfix, tmp: Path) -> None:
        self.pf = pf
        self.state = tmp / "state"
        self.runs = 0
        super().__init__(
            "follow", tmp, "--state", str(self.state), "--log", str(pf.maillog), "--from-start",
            events=tmp / "events.jsonl",
        )  # fmt: skip

    def start(self, timeout: float = 60) -> Self:
        """Start following (from the start of the file when there is no state yet); ready (its
        signal handlers installed) once it has written its ``started`` event."""
        self.runs += 1
        return super().start(timeout)

    def position(self) -> dict[str, int] | None:
        """The saved position in the maillog, if any."""
        try:
            state = json.loads((self.state / "follow-state.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        position: dict[str, int] | None = state["files"].get(str(self.pf.maillog))
        return position

    def wait_on_live_file(self, timeout: float = 60) -> None:
        """Wait until the saved position is in the live maillog (not in a rotated one)."""

        def on_live_file() -> dict[str, int] | None:
            pos = self.position()
            return (
                pos if pos is not None and pos["ino"] == os.stat(self.pf.maillog).st_ino else None
            )

        poll(
            on_live_file, timeout, lambda: f"the live maillog; follower still at {self.position()}"
        )

    def wait_caught_up(self, timeout: float = 60) -> None:
        """Wait until the saved position is the end of the live maillog."""

        def caught_up() -> dict[str, int] | None:
            st, pos = os.stat(self.pf.maillog), self.position()
            return pos if pos and (pos["ino"], pos["offset"]) == (st.st_ino, st.st_size) else None

        poll(
            caught_up,
            timeout,
            lambda: (
                f"the end of the maillog; follower stuck at {self.position()}, "
                f"file {os.stat(self.pf.maillog)}"
            ),
            interval=0.1,
        )


def postlogd(pf: PrivatePostfix) -> int:
    """The instance's postlogd process."""
    for pid in pf.processes():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "postlogd":
                return pid
        except OSError:
            continue
    raise AssertionError("no postlogd")


def copytruncate(follower: Follower, copy: Path) -> int:
    """Copy the maillog and truncate it in place, postlogd paused in between; return how many
    bytes the follower had not read (by its saved position) when the file was truncated."""
    pf = follower.pf
    pid = postlogd(pf)
    try:
        sigstop(pid)
        shutil.copyfile(pf.maillog, copy)
        position = follower.position()
        os.truncate(pf.maillog, 0)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert position is not None
    return copy.stat().st_size - position["offset"]


def drain_queue(pf: PrivatePostfix, timeout: float = 120) -> None:
    """Wait until the queue is empty, flushing it now and then.

    TRAP: a reload (``postfix reload``, ``postfix logrotate``) restarts qmgr; a message the old
    one was still delivering is logged "skipped, still being delivered" and waits in incoming/
    until something triggers a scan, which a quiet queue never does.
    """

    def empty() -> bool | None:
        if pf.queue_empty():
            return True
        pf.flush()
        return None

    poll(
        empty,
        timeout,
        lambda: f"an empty queue; left: {[f.name for f in pf.queue_files()]}",
        interval=1,
    )


@pytest.fixture(name="follower")
def _follower(
    make_postfix: PostfixFactory, scripted_server: ScriptedServer, tmp_path: Path
) -> Iterator[Follower]:
    pf = make_postfix(downstream_port=scripted_server.port)
    follower = Follower(pf, tmp_path)
    yield follower
    if follower.proc is not None:  # the test failed before stopping it
        follower.kill()


@pytest.fixture(name="sender")
def _sender(follower: Follower) -> Iterator[Sender]:
    """The stream of sessions (not started); stopped before Postfix is."""
    sender = Sender(follower.pf)
    yield sender
    sender.halt.set()
    if sender.is_alive():
        sender.join(timeout=120)


def test_follower_across_rotations_and_restarts(
    follower: Follower, sender: Sender, drill_report: Callable[[str], None]
) -> None:
    """Every reply line exactly once as an event, every message once and complete."""
    pf = follower.pf
    step = size(ci=80, full=800)
    started = time.monotonic()
    follower.start()
    sender.start()
    sender.wait_sent(step)

    # 1. Restart across a rename rotation.
    follower.stop()
    os.rename(pf.maillog, pf.root / "maillog.1")
    sender.wait_sent(sender.sent + 5)
    pf.postfix("reload")  # postlogd is restarted and opens a new maillog
    pf.wait_for_log("", timeout=60)
    follower.start()
    sender.wait_sent(2 * step)

    # 2. Copytruncate while following (once the follower has left maillog.1: lines of a file
    #    it has never opened are only in the copy, which nothing links to its position).
    follower.wait_on_live_file()
    behind = copytruncate(follower, pf.root / "maillog.2")
    sender.wait_sent(3 * step)

    # 3. Restart.
    follower.stop()
    sender.wait_sent(sender.sent + 5)
    follower.start()
    sender.wait_sent(4 * step)

    # 4. postfix logrotate while following.
    pf.postfix("logrotate")
    sender.wait_sent(5 * step)
    sender.halt.set()
    sender.join(timeout=120)
    assert not sender.errors, sender.errors[:5]
    drain_queue(pf)
    follower.wait_caught_up()
    follower.stop()
    final = follower.position()
    assert final is not None and final["ino"] == os.stat(pf.maillog).st_ino
    end = final["offset"]  # what it read of the live file; later lines are not its business
    elapsed = time.monotonic() - started

    # The raw log: every piece, in order, the live file up to where the follower stopped.
    (rotated,) = pf.root.glob("maillog.*.gz")
    pieces = [
        (pf.root / "maillog.1").read_bytes(),
        (pf.root / "maillog.2").read_bytes(),
        gzip.decompress(rotated.read_bytes()),
        pf.maillog.read_bytes()[:end],
    ]
    raw = b"".join(pieces).decode("utf-8", "replace").splitlines()
    parsed = [r for r in map(parse_line, raw) if r is not None]
    expected = Counter(record_key(r) for r in parsed if r.kind in REPLY_KINDS)

    events = follower.events.read()
    got = Counter(event_key(e) for e in events if e["event"] == "reply")
    missing = expected - got
    extra = got - expected  # duplicated, or not in the log at all
    assert not missing, f"{sum(missing.values())} reply lines missing: {list(missing)[:3]}"
    assert not extra, f"{sum(extra.values())} reply events extra: {list(extra)[:3]}"

    # Message records: one per queue id that left the queue, with all its recipients.
    left = {r.queue_id for r in parsed if r.kind == "removed" and r.program == "qmgr"}
    recipients: dict[str, set[str | None]] = {}
    upstream: Counter[str] = Counter()
    for r in parsed:
        if r.queue_id and r.kind == "delivery":
            recipients.setdefault(r.queue_id, set()).add(angle(r.recipient))
        elif r.queue_id and r.kind == "smtpd_reject":
            upstream[r.queue_id] += 1
    messages = [e for e in events if e["event"] == "message"]
    per_qid = Counter(e.get("queue_id") for e in messages)
    assert set(per_qid) == left
    assert all(n == 1 for n in per_qid.values()), [q for q, n in per_qid.items() if n > 1]
    for e in messages:
        qid = e["queue_id"]
        assert e["complete"], e
        assert {r["recipient"] for r in e["recipients"]} == recipients.get(qid, set()), e
        assert len(e.get("upstream") or []) == upstream[qid], e
    notices = Counter(e["kind"] for e in events if e["event"] == "warning")

    drill_report(
        f"{sender.sent} sessions in {elapsed:.0f}s, 3 rotations (rename while stopped, "
        f"copytruncate {behind} bytes ahead of the follower, postfix logrotate), "
        f"{follower.runs} follower runs; raw log "
        f"{len(raw)} lines in {len(pieces)} pieces, {sum(expected.values())} reply lines, "
        f"{sum(got.values())} reply events, {sum(missing.values())} missing, "
        f"{sum(extra.values())} duplicated or extra; {len(left)} queue ids left the queue, {len(messages)} "
        f"message records, {sum(len(e['recipients']) for e in messages)} recipients, "
        f"{sum(upstream.values())} upstream rejects in records; notices {dict(notices)}"
    )
