"""The milter as a real process beside a real Postfix: events, explanations, policy replies,
and bad input that must not break anything (kill -9 and SIGSTOP: test_drill_milter.py).

One milter and one Postfix serve the tests of the module (each test uses its own recipients and
finds its events by them).
"""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from smtp_policy.lab.instance import free_port
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from tests.helpers import Daemon

pytestmark = pytest.mark.postfix

SENDER = "sender@local.test"
Ev = dict[str, Any]


class MilterProcess(Daemon):
    """``smtp-policy milter`` as a Daemon, on a free loopback port or a unix socket, with the
    ``smtpd_milters`` value that reaches it."""

    def __init__(self, workdir: Path, *extra: str, socket_path: Path | None = None) -> None:
        self.socket_path = socket_path
        if socket_path:
            super().__init__("milter", workdir, "--listen", f"unix:{socket_path}", *extra)
        else:
            super().__init__("milter", workdir, *extra, port=free_port())

    @property
    def postfix_milters(self) -> str:
        """The ``smtpd_milters`` value for this milter, failing open (smtpd is not chrooted)."""
        where = f"unix:{self.socket_path}" if self.socket_path else f"inet:127.0.0.1:{self.port}"
        return (
            f"{{ {where}, default_action=accept, connect_timeout=5s, "
            "command_timeout=10s, content_timeout=30s }"
        )

    def session_events(self, session: str) -> list[Ev]:
        """The events of one session, in order."""
        return [e for e in self.events.read() if e.get("session") == session]


#: The admin's configuration for the module's milter: a help link, and one rule per kind of
#: decision, each keyed to recipients or senders no other test uses.
CONFIG = r'''
[texts]
help_url = "https://help.local.test/mail/{reason}"

[[rules]]
name = "no-mallory"
stage = "rcpt"
recipient = ["mallory-*@remote.test"]
action = "reject"
code = 550
enhanced = "5.7.1"
reason = "policy_violation"
text = """Mail to {recipient} is not accepted here.
Our quota is 100% used; 50%% of it by {sender}.
550 5.0.0 this line only looks like a reply
More information: {help_url}"""

[[rules]]
name = "busy"
stage = "mail"
sender = ["busy-*@local.test"]
action = "tempfail"
code = 451
enhanced = "4.7.1"
reason = "rate_limited"

[[rules]]
name = "no-data-from-eve"
stage = "data"
sender = ["eve-*@local.test"]
action = "reject"
code = 554
enhanced = "5.7.1"
text = """Eve's mail is refused after DATA.\nSecond line.\tTabbed."""

[[rules]]
name = "blackhole"
stage = "rcpt"
recipient = ["void-*@remote.test"]
action = "discard"

[[rules]]
name = "hold-suspicious"
stage = "mail"
sender = ["suspect-*@local.test"]
action = "quarantine"
reason = "spam_detected"
'''


@pytest.fixture(name="milter", scope="module")
def _milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    workdir = tmp_path_factory.mktemp("milter")
    (workdir / "config.toml").write_text(CONFIG)
    proc = MilterProcess(workdir, "--config", str(workdir / "config.toml")).start()
    yield proc
    proc.stop()


#: Extra smtpd listeners: with and without the milter, with Postfix's UTF-8 checks on (the
#: default: invalid UTF-8 gets "500 5.5.2 Error: bad UTF-8 syntax") and off (raw bytes pass).
LISTENERS = {
    "plain_nomilter": "-o smtpd_milters=",
    "raw8": "-o smtputf8_enable=no",
    "raw8_nomilter": "-o smtputf8_enable=no -o smtpd_milters=",
}


@pytest.fixture(name="ports", scope="module")
def _ports() -> dict[str, int]:
    return {name: free_port() for name in LISTENERS}


@pytest.fixture(name="pf", scope="module")
def _pf(
    milter: MilterProcess, ports: dict[str, int], make_module_postfix: PostfixFactory
) -> PrivatePostfix:
    extra = [f"127.0.0.1:{ports[n]} inet n - n - - smtpd {o}" for n, o in LISTENERS.items()]
    return make_module_postfix(milters=milter.postfix_milters, master_cf=extra)


def unique(local: str) -> str:
    """A local part no other test uses."""
    return f"{local}-{uuid.uuid4().hex[:8]}"


def send(port: int, rcpts: Sequence[str], *, sender: str = SENDER) -> tuple[int, bytes]:
    """One message over SMTP; returns DATA's reply (raises for refused recipients)."""
    body = f"From: <{sender}>\r\nSubject: milter test\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=30) as smtp:
        smtp.ehlo()
        smtp.mail(sender)
        for rcpt in rcpts:
            smtp.rcpt(rcpt)
        return smtp.data(body.encode())


def test_accepted_mail_is_recorded_stage_by_stage(
    pf: PrivatePostfix, milter: MilterProcess
) -> None:
    """connect, helo, mail, rcpt, data, eom and the session summary, all with the queue id."""
    rcpt = "alice@local.test"
    code, reply = send(pf.smtp_port, [rcpt], sender=f"{unique('s')}@local.test")
    assert code == 250, reply
    m = re.search(rb"queued as ([0-9A-F]+)", reply)
    assert m
    qid = m.group(1).decode()
    (eom,) = milter.wait_for(lambda e: e.get("stage") == "eom" and e.get("queue_id") == qid)
    session = eom["session"]
    (summary,) = milter.wait_for(lambda e: e["event"] == "session" and e.get("session") == session)
    stages = [e["stage"] for e in milter.session_events(session) if e["event"] == "stage"]
    assert stages == ["connect", "helo", "mail", "rcpt", "data", "eom"]
    connect = milter.session_events(session)[0]
    assert connect.get("mta") == "postfix"
    assert connect["macros"]["v"].startswith("Postfix 3.")
    assert connect["macros"]["j"] == "mx.smtp-policy.test"
    assert connect.get("client_addr") == "127.0.0.1"
    assert isinstance(connect["client_port"], int)
    assert eom.get("helo") == "client.test"
    assert eom["sender"].startswith("s-")
    assert eom["macros"]["i"] == qid
    assert summary["queue_ids"] == [qid]
    assert summary["messages"] == 1
    assert summary["recipients_accepted"] == 1
    assert summary["recipients_rejected"] == 0
    assert summary["errors"] == 0
    assert summary["commands"] == {
        "connect": 1, "helo": 1, "mail": 1, "rcpt": 1, "data": 1, "eom": 1, "close": 1
    }  # fmt: skip
    pf.wait_for_log(rf"{qid}: to=<alice@local\.test>, .*status=sent")


def _rejected(milter: MilterProcess, rcpt: str) -> Ev:
    (event,) = milter.wait_for(lambda e: e["event"] == "reply" and e.get("recipient") == rcpt)
    return event


def test_unknown_user_rejected_by_postfix_is_explained(
    pf: PrivatePostfix, milter: MilterProcess
) -> None:
    """SMFIP_RCPT_REJ: Postfix's own 550 5.1.1 reaches the milter and is explained."""
    rcpt = f"{unique('nobody')}@local.test"
    with smtplib.SMTP("127.0.0.1", pf.smtp_port, local_hostname="client.test") as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        code, _ = smtp.rcpt(rcpt)
    assert code == 550
    event = _rejected(milter, rcpt)
    assert event.get("direction") == "upstream"
    assert event.get("stage") == "rcpt"
    assert event["by"] == "mta"
    assert event.get("code") is None  # Postfix drops the 3-digit code, and the <address>: too
    assert event.get("enhanced") == "5.1.1"
    assert event.get("class") == "permanent"
    assert event.get("reason") == "user_unknown"
    assert (
        event.get("text")
        == "5.1.1 Recipient address rejected: User unknown in virtual mailbox table"
    )
    assert event.get("summary")
    assert event.get("rule")
    (summary,) = milter.wait_for(
        lambda e: e["event"] == "session" and e.get("session") == event.get("session")
    )
    assert summary["recipients_rejected"] == 1
    assert summary["rejected_by_mta"] == 1


def test_relay_denied_is_explained(pf: PrivatePostfix, milter: MilterProcess) -> None:
    """The untrusted port's 554 5.7.1 Relay access denied, seen through swaks."""
    rcpt = f"{unique('someone')}@other.example"
    done = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(pf.untrusted_port),
         "--ehlo", "client.test", "--from", SENDER, "--to", rcpt,
         "--quit-after", "RCPT", "--timeout", "10"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert "<** 554 5.7.1" in done.stdout, done.stdout
    event = _rejected(milter, rcpt)
    assert event.get("enhanced") == "5.7.1"
    assert event.get("reason") == "no_relaying"
    assert event["text"].endswith("Relay access denied")


# -- policy replies ----------------------------------------------------------------------


def _policy_reply(milter: MilterProcess, rule: str, marker: str) -> Ev:
    (event,) = milter.wait_for(
        lambda e: (
            e["event"] == "reply"
            and e.get("rule") == rule
            and marker in f"{e.get('recipient')} {e.get('sender')}"
        )
    )
    return event


def test_policy_reject_reaches_the_client_line_by_line(
    pf: PrivatePostfix, milter: MilterProcess
) -> None:
    """A rcpt rule's multi-line template arrives intact: % as %, the fake code as text."""
    rcpt = f"{unique('mallory')}@remote.test"
    sender = f"{unique('pct')}@local.test"
    with (
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
        smtplib.SMTP("127.0.0.1", pf.smtp_port, local_hostname="client.test") as smtp,
    ):
        smtp.sendmail(sender, [rcpt], b"Subject: x\r\n\r\nx\r\n")
    code, raw = refused.value.recipients[rcpt]
    text = raw if isinstance(raw, bytes) else raw.encode()
    assert code == 550
    assert text.decode().split("\n") == [
        f"5.7.1 Mail to {rcpt} is not accepted here.",
        f"5.7.1 Our quota is 100% used; 50%% of it by {sender}.",
        "5.7.1 550 5.0.0 this line only looks like a reply",
        "5.7.1 More information: https://help.local.test/mail/policy_violation",
    ]
    event = _policy_reply(milter, "no-mallory", rcpt)
    assert (event["by"], event["action"], event.get("direction")) == (
        "policy",
        "reject",
        "upstream",
    )
    assert (event.get("code"), event.get("enhanced"), event.get("class")) == (
        550,
        "5.7.1",
        "permanent",
    )
    assert event.get("reason") == "policy_violation"
    assert event["friendly"].split("\n") == [line[6:] for line in text.decode().split("\n")]
    pf.wait_for_log(
        # the log shows the reply's CRLFs as "??"
        rf"NOQUEUE: milter-reject: RCPT from localhost\[127\.0\.0\.1\]: 550-5\.7\.1 "
        rf"Mail to {re.escape(rcpt)} is not accepted here\.\?\?550-5\.7\.1 Our quota"
    )


def test_policy_tempfail_at_mail(pf: PrivatePostfix, milter: MilterProcess) -> None:
    """A tempfail rule: 451 4.7.1 with [texts]' default wording and the help link."""
    sender = f"{unique('busy')}@local.test"
    with smtplib.SMTP("127.0.0.1", pf.smtp_port, local_hostname="client.test") as smtp:
        smtp.ehlo()
        code, text = smtp.mail(sender)
    assert code == 451
    lines = text.decode().split("\n")
    assert all(line.startswith("4.7.1 ") for line in lines)
    assert lines[-1] == "4.7.1 More information: https://help.local.test/mail/rate_limited"
    event = _policy_reply(milter, "busy", sender)
    assert (event.get("code"), event.get("class"), event.get("reason")) == (
        451,
        "transient",
        "rate_limited",
    )


def test_policy_reject_after_data(pf: PrivatePostfix, milter: MilterProcess) -> None:
    """A data rule: SMTPDataError carries every line; a TOML \\t became a space."""
    sender = f"{unique('eve')}@local.test"
    with (
        pytest.raises(smtplib.SMTPDataError) as refused,
        smtplib.SMTP("127.0.0.1", pf.smtp_port, local_hostname="client.test") as smtp,
    ):
        smtp.sendmail(sender, ["alice@local.test"], b"Subject: x\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 554
    error = refused.value.smtp_error
    assert (error if isinstance(error, str) else error.decode()).split("\n") == [
        "5.7.1 Eve's mail is refused after DATA.",
        "5.7.1 Second line. Tabbed.",
    ]
    event = _policy_reply(milter, "no-data-from-eve", sender)
    assert event.get("stage") == "data"


def test_policy_discard_and_quarantine(pf: PrivatePostfix, milter: MilterProcess) -> None:
    """discard: the client sees 250, Postfix drops it; quarantine: 250, on hold."""
    void = f"{unique('void')}@remote.test"
    code, reply = send(pf.smtp_port, [void])
    assert code == 250, reply
    pf.wait_for_log(rf"milter-discard: RCPT from .*to=<{re.escape(void)}>")
    suspect = f"{unique('suspect')}@local.test"
    code, reply = send(pf.smtp_port, ["alice@local.test"], sender=suspect)
    assert code == 250, reply
    m = re.search(rb"queued as ([0-9A-F]+)", reply)
    assert m
    qid = m.group(1).decode()
    pf.wait_for_log(rf"{qid}: milter-hold: END-OF-MESSAGE from .*milter triggers HOLD action")
    assert any(f.parent.name == "hold" or "hold" in f.parts for f in pf.queue_files())
    assert _policy_reply(milter, "blackhole", void)["action"] == "discard"
    held = _policy_reply(milter, "hold-suspicious", suspect)
    assert (held["action"], held.get("reason")) == ("quarantine", "spam_detected")
    pf.delete_queued(qid)


# -- bad input ---------------------------------------------------------------------------


class RawSession:
    """A byte-level SMTP client: sends exactly what it is given."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> bytes:
        """One whole (multi-line) reply."""
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def cmd(self, line: bytes) -> bytes:
        """Send one command line, return the reply."""
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        """Hang up without QUIT."""
        self.file.close()
        self.sock.close()


def _session(port: int, helo: bytes, sender: bytes, rcpt: bytes, message: bytes) -> list[bytes]:
    """One raw session; the replies to HELO, MAIL, RCPT, DATA and the final dot."""
    s = RawSession(port)
    try:
        replies = [s.cmd(b"EHLO " + helo), s.cmd(b"MAIL FROM:<" + sender + b">")]
        replies.append(s.cmd(b"RCPT TO:<" + rcpt + b">"))
        replies.append(s.cmd(b"DATA"))
        if replies[-1].startswith(b"354"):
            s.sock.sendall(message + b"\r\n.\r\n")
            replies.append(s.reply())
        s.cmd(b"QUIT")
        return replies
    finally:
        s.close()


BAD_MESSAGE = (
    b"Subject: caf\xc3\xa9 \xff\xfe broken\r\nX-Nul: a\x00b\r\nX-8bit: \xe9t\xe9\r\n\r\nbody \xff"
)
PLAIN = b"Subject: x\r\n\r\nx"


@pytest.mark.parametrize("listener", ["smtp", "raw8"])
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(("h\u00e9lo.test".encode(), b"s@local.test", PLAIN), id="utf8-helo"),
        pytest.param((b"h\xe9lo.test", b"s@local.test", PLAIN), id="latin1-helo"),
        pytest.param((b"bad\xff\xfe.test", b"s@local.test", PLAIN), id="invalid-utf8-helo"),
        pytest.param((b"client.test", b"s\xff@local.test", PLAIN), id="invalid-utf8-sender"),
        pytest.param((b"client.test", b"s@local.test", BAD_MESSAGE), id="bad-headers-and-nul"),
    ],
)
def test_bad_bytes_get_the_replies_postfix_alone_gives(
    pf: PrivatePostfix,
    ports: dict[str, int],
    milter: MilterProcess,
    listener: str,
    case: tuple[bytes, bytes, bytes],
) -> None:
    """8-bit and invalid UTF-8 in HELO/MAIL/headers, NUL in a header: each reply is the one
    the same smtpd without the milter gives, and the session is recorded."""
    helo, sender, message = case
    before = len(pf.maillog_lines())
    with_milter = pf.smtp_port if listener == "smtp" else ports["raw8"]
    without = ports["plain_nomilter" if listener == "smtp" else "raw8_nomilter"]
    replies = _session(with_milter, helo, sender, b"alice@local.test", message)
    expected = _session(without, helo, sender, b"alice@local.test", message)
    assert [r[:3] for r in replies] == [r[:3] for r in expected], (replies, expected)
    assert not pf.log_matches("milter-", since=before)
    qid = re.search(rb"queued as ([0-9A-F]+)", replies[-1])
    if qid:
        (summary,) = milter.wait_for(
            lambda e: e["event"] == "session" and qid.group(1).decode() in e["queue_ids"]
        )
        assert summary["messages"] == 1
        events = milter.session_events(summary["session"])
        helos = [
            e.get("helo") for e in events if e["event"] == "stage" and e.get("stage") == "helo"
        ]
        if replies[0].startswith(b"250"):
            assert helos == [helo.decode("utf-8", "backslashreplace")]


def test_hostile_sessions_do_not_disturb_the_milter(
    pf: PrivatePostfix, milter: MilterProcess
) -> None:
    """Invalid UTF-8 in RCPT, a 10 kB address, an empty HELO, a client gone mid-DATA."""
    before = len(pf.maillog_lines())
    rcpt = f"{unique('r')}\xff".encode("latin-1") + b"@local.test"
    replies = _session(pf.smtp_port, b"client.test", b"s@local.test", rcpt, b"x")
    assert replies[2][:1] == b"5"  # Postfix: no such (8-bit) user
    long_addr = b"a" * 10_000 + b"@local.test"
    replies = _session(pf.smtp_port, b"client.test", long_addr, b"alice@local.test", b"x")
    assert all(r[:1] in (b"2", b"3", b"5") for r in replies)
    s = RawSession(pf.smtp_port)
    assert s.cmd(b"HELO")[:3] == b"501"  # Postfix answers empty HELO itself
    s.cmd(b"QUIT")
    s.close()
    marker = unique("gone")
    s = RawSession(pf.smtp_port)
    s.cmd(b"EHLO client.test")
    s.cmd(b"MAIL FROM:<" + marker.encode() + b"@local.test>")
    s.cmd(b"RCPT TO:<alice@local.test>")
    assert s.cmd(b"DATA")[:3] == b"354"
    s.sock.sendall(b"Subject: half\r\n\r\nhalf a mess")
    s.close()
    (gone,) = milter.wait_for(
        lambda e: (
            e["event"] == "session"
            and e.get("sender") is None
            and e["commands"].get("data")
            and any(
                x.get("sender") == f"{marker}@local.test"
                for x in milter.session_events(e["session"])
            )
        )
    )
    assert gone["messages"] == 0
    assert not pf.log_matches("milter-reject|milter-discard|milter-hold", since=before)
    test_accepted_mail_is_recorded_stage_by_stage(pf, milter)  # and it still serves
    assert not [
        e for e in milter.events.read() if e["event"] == "error" and e.get("stage") != "helo"
    ]
