"""The milter and the log follower under a real Sendmail 8.17 (Debian's binary, unpacked into a
private lab: sendmail.py): events per stage with Sendmail's macros, a recipient Sendmail itself
rejected, a multi-line policy reply as the client receives it, the milter killed under load
without losing mail, and the follower on the syslog lines Sendmail really wrote.

One milter, one scripted downstream server and one Sendmail serve the module (each test uses its
own addresses and finds its events by them); the kill drill runs its own trio. Mail for any
non-local domain is relayed to the downstream server; ``smtest@mx.sendmail.test`` is the one
local mailbox (the senders here use it, so Sendmail's bounces land there).
"""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from smtp_policy.lab.instance import delivery_report
from smtp_policy.lab.remote import SAMPLE_SCRIPT, ScriptedServer
from smtp_policy.lab.sendmail import (
    DAEMON_NAME,
    FALLBACK,
    HOSTNAME,
    NO_NAMESPACES_ENV,
    USER,
    PrivateSendmail,
    SendmailFactory,
    ensure_debs,
    format_syslog,
    namespaces_permitted,
)
from smtp_policy.maillog.parse import parse_line
from tests.helpers import read_events
from tests.integration.drills import size
from tests.integration.test_milter_postfix import Ev, MilterProcess

pytestmark = pytest.mark.sendmail

LOCAL = f"{USER}@{HOSTNAME}"
ACCEPTED = re.compile(rb"2\.0\.0 (\w+) Message accepted for delivery")

#: The admin's rules for the module's milter (keyed to addresses no other test uses).
CONFIG = r'''
[texts]
help_url = "https://help.sendmail.test/mail/{reason}"

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
sender = ["busy-*@remote.test"]
action = "tempfail"
code = 451
enhanced = "4.7.1"
reason = "rate_limited"

[[rules]]
name = "no-data-from-eve"
stage = "data"
sender = ["eve-*@remote.test"]
action = "reject"
code = 554
enhanced = "5.7.1"
text = """Eve's mail is refused after DATA.\nSecond line."""
'''


@pytest.fixture(name="milter", scope="module")
def _milter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilterProcess]:
    workdir = tmp_path_factory.mktemp("sendmail-milter")
    (workdir / "config.toml").write_text(CONFIG)
    proc = MilterProcess(workdir, "--config", str(workdir / "config.toml")).start()
    yield proc
    proc.stop()


@pytest.fixture(name="sm", scope="module")
def _sm(
    milter: MilterProcess,
    module_scripted_server: ScriptedServer,
    make_module_sendmail: SendmailFactory,
) -> PrivateSendmail:
    return make_module_sendmail(
        downstream_port=module_scripted_server.port, milter_port=milter.port
    )


def unique(local: str) -> str:
    """A local part no other test uses."""
    return f"{local}-{uuid.uuid4().hex[:8]}"


def send(port: int, rcpts: Sequence[str], *, sender: str = LOCAL) -> tuple[int, bytes, str]:
    """One message; (DATA's code, its text, the queue id). Raises if every recipient fails."""
    body = f"From: <{sender}>\r\nSubject: sendmail test\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=60) as smtp:
        smtp.ehlo()
        smtp.mail(sender)
        accepted = [r for r in rcpts if smtp.rcpt(r)[0] == 250]
        if not accepted:
            raise smtplib.SMTPRecipientsRefused(dict.fromkeys(rcpts, (0, b"")))
        code, reply = smtp.data(body.encode())
    m = ACCEPTED.search(reply)
    return code, reply, m.group(1).decode() if m else ""


def stage_events(milter: MilterProcess, session: str) -> list[Ev]:
    """The stage events of one milter session, in order."""
    return [e for e in milter.session_events(session) if e["event"] == "stage"]


# -- the lab itself ---------------------------------------------------------------------------


def test_syslog_lines_are_written_as_rsyslog_would() -> None:
    """The sink's line format: glibc's datagram, the host name put in, control bytes escaped."""
    datagram = b"<22>Nov 29 05:36:10 sendmail[2239]: 6AT5aAlu002276: to=<a@b.test>, stat=Sent\n"
    line = "Nov 29 05:36:10 mx.test sendmail[2239]: 6AT5aAlu002276: to=<a@b.test>, stat=Sent"
    assert format_syslog(datagram, "mx.test") == line
    assert format_syslog(b"<22>Nov  9 05:36:10 x[1]: a\tb", "h") == "Nov  9 05:36:10 h x[1]: a#011b"
    now = datetime(2024, 3, 5, 1, 2, 3)
    assert format_syslog(b"x[1]: y", "h", now) == "Mar  5 01:02:03 h x[1]: y"


def test_the_switch_forces_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """``$SMTP_POLICY_SENDMAIL_NO_NAMESPACES`` set: no namespaces, whatever unshare can do;
    "" or "0" leaves the choice to the probe."""
    monkeypatch.setenv(NO_NAMESPACES_ENV, "1")
    assert not namespaces_permitted()
    lab = PrivateSendmail(downstream_port=25)
    assert (lab.namespaced, lab.degraded) == (False, FALLBACK)
    monkeypatch.setenv(NO_NAMESPACES_ENV, "0")
    probed = namespaces_permitted()
    monkeypatch.delenv(NO_NAMESPACES_ENV)
    assert namespaces_permitted() is probed
    assert PrivateSendmail(downstream_port=25).degraded == (None if probed else FALLBACK)


#: What the lab's wrapper must give a program: the host name, 127.0.0.1's name, syslog(3).
PROBE = """
import ctypes, socket, sys, syslog
libc = ctypes.CDLL(None)
libc.gethostbyaddr.restype = ctypes.POINTER(ctypes.c_char_p)  # h_name comes first
entry = libc.gethostbyaddr(socket.inet_aton("127.0.0.1"), 4, socket.AF_INET)
print(socket.gethostname())
print(entry[0].decode() if entry else "")
syslog.openlog("lab-probe", syslog.LOG_PID, syslog.LOG_MAIL)
syslog.syslog(sys.argv[1])
"""


def test_the_wrapper_gives_the_lab_and_leaves_the_host_alone(sm: PrivateSendmail) -> None:
    """In the lab's wrapper (``smns``, or ``smlab`` without namespaces) the host name, the
    hosts file and syslog are the lab's; outside, nothing changed (the host keeps its name
    and gets no /dev/log)."""
    token = unique("probe")
    inside = subprocess.run(
        [str(sm.wrapper), sys.executable, "-c", PROBE, token],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert inside == [HOSTNAME, HOSTNAME]  # 127.0.0.1's name in the lab's hosts file
    (line,) = sm.wait_for_log(rf"lab-probe\[\d+\]: {token}$")
    assert re.fullmatch(
        rf"\w{{3}} [ \d]\d \d\d:\d\d:\d\d {HOSTNAME} lab-probe\[\d+\]: {token}", line
    )
    if sm.namespaced:
        inside = subprocess.run(
            [str(sm.wrapper), "sh", "-c",
             "hostname; readlink /dev/log; cat /etc/hosts; echo x > /dev/null; ls /dev"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.splitlines()  # fmt: skip
        assert inside[:2] == [HOSTNAME, str(sm.root / "run" / "log.sock")]
        assert inside[2].startswith(f"127.0.0.1\t{HOSTNAME} ")
        assert {"null", "urandom", "log", "fd"} <= set(inside[3:])
    else:
        assert sm.degraded
    assert socket.gethostname() != HOSTNAME
    assert HOSTNAME not in Path("/etc/hosts").read_text()
    assert not Path("/dev/log").is_symlink()


# -- (a) every stage, with Sendmail's macros ------------------------------------------------


def test_accepted_mail_is_recorded_stage_by_stage(
    sm: PrivateSendmail, milter: MilterProcess, module_scripted_server: ScriptedServer
) -> None:
    """connect, helo, mail, rcpt, data, eom and the session summary; ``i`` from MAIL on."""
    rcpt = f"{unique('alice')}@remote.test"
    code, reply, qid = send(sm.smtp_port, [rcpt])
    assert code == 250, reply
    assert qid
    (eom,) = milter.wait_for(lambda e: e.get("stage") == "eom" and e.get("queue_id") == qid)
    session = eom["session"]
    (summary,) = milter.wait_for(lambda e: e["event"] == "session" and e.get("session") == session)
    events = stage_events(milter, session)
    assert [e.get("stage") for e in events] == ["connect", "helo", "mail", "rcpt", "data", "eom"]
    connect, helo, mail, rcpt_event, data, _ = events
    assert all(e.get("mta") == "sendmail" for e in milter.session_events(session))
    assert connect["mta_version"].startswith("8.17.")
    # What Sendmail sends for our SMFIR_SETSYMLIST: j, v, {daemon_name}, {daemon_addr};
    # {if_addr} never on a loopback listener.
    assert connect["macros"]["j"] == HOSTNAME
    assert connect["macros"]["v"] == connect["mta_version"]
    assert connect["macros"]["{daemon_name}"] == DAEMON_NAME
    assert connect["macros"]["{daemon_addr}"] == "127.0.0.1"
    assert "{if_addr}" not in connect["macros"]
    assert connect.get("client_addr") == "127.0.0.1"
    assert connect.get("client_name") == HOSTNAME  # 127.0.0.1's name in the lab's hosts file
    assert isinstance(connect["client_port"], int)
    assert connect.get("queue_id") is None
    assert helo.get("helo") == "client.test"
    # Sendmail assigns the queue id at MAIL, and says which mailer the addresses resolved to
    assert mail["macros"]["i"] == qid
    assert mail["macros"]["{mail_addr}"] == USER
    assert mail.get("sender") == LOCAL
    assert rcpt_event.get("recipient") == rcpt
    assert rcpt_event["macros"]["{rcpt_mailer}"] == "esmtp"
    assert rcpt_event["macros"]["{rcpt_host}"] == "[127.0.0.1]"  # the smart host
    assert rcpt_event["macros"]["{rcpt_addr}"] == rcpt
    assert data["macros"]["i"] == qid
    assert eom["macros"]["i"] == qid
    assert summary["queue_ids"] == [qid]
    assert (summary["messages"], summary["recipients_accepted"]) == (1, 1)
    assert (summary["recipients_rejected"], summary["errors"]) == (0, 0)
    assert summary["commands"] == {
        "connect": 1, "helo": 1, "mail": 1, "rcpt": 1, "data": 1, "eom": 1, "close": 1
    }  # fmt: skip
    module_scripted_server.wait_for(
        lambda s: any(rcpt in t.rcpt_tos for t in s.messages), timeout=60
    )
    sm.wait_for_log(rf"{qid}: to=<{re.escape(rcpt)}>, .*stat=Sent")


# -- (b) a recipient Sendmail itself rejected --------------------------------------------------


def test_user_unknown_rejected_by_sendmail_is_explained(
    sm: PrivateSendmail, milter: MilterProcess
) -> None:
    """SMFIP_RCPT_REJ: Sendmail's own 550 5.1.1 reaches the milter, whole, in {rcpt_addr}."""
    rcpt = f"{unique('nosuch')}@{HOSTNAME}"
    with smtplib.SMTP("127.0.0.1", sm.smtp_port, local_hostname="client.test", timeout=60) as s:
        s.ehlo()
        s.mail(LOCAL)
        code, text = s.rcpt(rcpt)
    assert (code, text.decode()) == (550, f"5.1.1 <{rcpt}>... User unknown")
    (event,) = milter.wait_for(lambda e: e["event"] == "reply" and e.get("recipient") == rcpt)
    assert (event.get("direction"), event.get("stage"), event["by"]) == ("upstream", "rcpt", "mta")
    assert event.get("mta") == "sendmail"
    assert (event.get("code"), event.get("enhanced"), event.get("class")) == (
        550,
        "5.1.1",
        "permanent",
    )
    assert event.get("reason") == "user_unknown"
    assert event.get("text") == "550 5.1.1 User unknown"  # Sendmail's reply, without "<addr>... "
    assert event["macros"] == {
        "i": event.get("queue_id"),
        "{rcpt_mailer}": "error",
        "{rcpt_host}": "5.1.1",
        "{rcpt_addr}": "550 5.1.1 User unknown",
    }
    assert event.get("summary")
    (summary,) = milter.wait_for(
        lambda e: e["event"] == "session" and e.get("session") == event.get("session")
    )
    assert (summary["recipients_rejected"], summary["rejected_by_mta"]) == (1, 1)
    sm.wait_for_log(rf"<{re.escape(rcpt)}>\.\.\. User unknown")


def test_relaying_denied_never_reaches_the_milter(
    sm: PrivateSendmail, milter: MilterProcess
) -> None:
    """check_rcpt rejections (here: relaying from 127.0.0.2) are not sent to milters, even
    with SMFIP_RCPT_REJ (Debian's binary lacks _FFR_MILTER_CHECK_REJECTIONS_TOO): only the
    log shows them (test_follower_reads_the_real_sendmail_log explains that line)."""
    victim = f"{unique('victim')}@external.example"
    local = f"{unique('later')}@{HOSTNAME}"
    with smtplib.SMTP(
        "127.0.0.1", sm.smtp_port, local_hostname="outside.test", source_address=("127.0.0.2", 0)
    ) as s:
        s.ehlo()
        s.mail("someone@outside.example")
        code, text = s.rcpt(victim)
        assert code == 550
        assert text.decode().startswith(f"5.7.1 <{victim}>... Relaying denied")
        assert s.rcpt(local)[0] == 550  # resolved as unknown: this one the milter sees
    milter.wait_for(lambda e: e["event"] == "reply" and e.get("recipient") == local)
    sm.wait_for_log(rf"ruleset=check_rcpt, arg1=<{re.escape(victim)}>")
    assert not [e for e in milter.events.read() if e.get("recipient") == victim]


# -- (c) policy replies as the client receives them --------------------------------------------


def test_policy_reject_reaches_the_client_line_by_line(
    sm: PrivateSendmail, milter: MilterProcess
) -> None:
    """A rcpt rule's 4-line reply arrives intact; Sendmail puts ``<rcpt>... `` in front of the
    first line only. % stays %, the fake reply code stays text."""
    rcpt = f"{unique('mallory')}@remote.test"
    with (
        pytest.raises(smtplib.SMTPRecipientsRefused) as refused,
        smtplib.SMTP("127.0.0.1", sm.smtp_port, local_hostname="client.test", timeout=60) as s,
    ):
        s.sendmail(LOCAL, [rcpt], b"Subject: x\r\n\r\nx\r\n")
    code, raw = refused.value.recipients[rcpt]
    lines = (raw if isinstance(raw, bytes) else raw.encode()).decode().split("\n")
    assert code == 550
    assert lines == [
        f"5.7.1 <{rcpt}>... Mail to {rcpt} is not accepted here.",
        f"5.7.1 Our quota is 100% used; 50%% of it by {LOCAL}.",
        "5.7.1 550 5.0.0 this line only looks like a reply",
        "5.7.1 More information: https://help.sendmail.test/mail/policy_violation",
    ]
    (event,) = milter.wait_for(
        lambda e: (
            e["event"] == "reply" and e.get("rule") == "no-mallory" and e.get("recipient") == rcpt
        )
    )
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
    assert event.get("mta") == "sendmail"
    friendly = event["friendly"].split("\n")
    assert friendly == [lines[0].replace(f"<{rcpt}>... ", "")[6:], *(x[6:] for x in lines[1:])]
    # Sendmail logs the reply with its CRLFs escaped
    sm.wait_for_log(
        rf"Milter: to=<{re.escape(rcpt)}>, reject=550-5\.7\.1 Mail to {re.escape(rcpt)} "
        r"is not accepted here\.\\r\\n550-5\.7\.1 Our quota"
    )


def test_policy_tempfail_at_mail(sm: PrivateSendmail, milter: MilterProcess) -> None:
    """A mail rule's 451 4.7.1 with [texts]' wording and the help link, as the client sees it
    (without the ``<address>... `` Sendmail puts before a RCPT reply)."""
    sender = f"{unique('busy')}@remote.test"
    with smtplib.SMTP("127.0.0.1", sm.smtp_port, local_hostname="client.test", timeout=60) as s:
        s.ehlo()
        code, text = s.mail(sender)
    assert code == 451
    lines = text.decode().split("\n")
    assert sender not in lines[0]  # at MAIL, unlike RCPT, Sendmail adds no "<address>... "
    assert all(line.startswith("4.7.1 ") for line in lines)
    assert lines[-1] == "4.7.1 More information: https://help.sendmail.test/mail/rate_limited"
    (event,) = milter.wait_for(
        lambda e: e["event"] == "reply" and e.get("rule") == "busy" and e.get("sender") == sender
    )
    assert (event.get("code"), event.get("class"), event.get("reason")) == (
        451,
        "transient",
        "rate_limited",
    )
    sm.wait_for_log(rf"Milter: from=<{re.escape(sender)}>, reject=451-4\.7\.1 ")


def test_policy_reject_after_data(sm: PrivateSendmail, milter: MilterProcess) -> None:
    """A data rule: the client's DATA gets the whole multi-line 554."""
    sender = f"{unique('eve')}@remote.test"
    with (
        pytest.raises(smtplib.SMTPDataError) as refused,
        smtplib.SMTP("127.0.0.1", sm.smtp_port, local_hostname="client.test", timeout=60) as s,
    ):
        s.sendmail(sender, ["alice@remote.test"], b"Subject: x\r\n\r\nx\r\n")
    assert refused.value.smtp_code == 554
    error = refused.value.smtp_error
    assert (error if isinstance(error, str) else error.decode()).split("\n") == [
        "5.7.1 Eve's mail is refused after DATA.",
        "5.7.1 Second line.",
    ]
    (event,) = milter.wait_for(
        lambda e: e["event"] == "reply" and e.get("rule") == "no-data-from-eve"
        and e.get("sender") == sender
    )  # fmt: skip
    assert (event.get("stage"), event.get("code"), event.get("mta")) == ("data", 554, "sendmail")


# -- (e) the follower on Sendmail's real log ---------------------------------------------------


def follow(log: Path, tmp: Path) -> list[dict[str, Any]]:
    """Replay ``log`` with ``smtp-policy follow --from-start --once``; its events."""
    out = tmp / "follow.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "smtp_policy", "follow", "--log", str(log),
         "--from-start", "--once", "--events", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return read_events(out)


def test_follower_reads_the_real_sendmail_log(
    sm: PrivateSendmail,
    milter: MilterProcess,
    module_scripted_server: ScriptedServer,
    tmp_path: Path,
    drill_report: Callable[[str], None],
) -> None:
    """Relayed (stat=Sent), bounced by the downstream (550: stat=User unknown, reply=, a DSN to
    the sender), deferred (450: stat=Deferred) then sent on a queue run, relaying denied
    (ruleset=check_rcpt), a local unknown user and a milter reject: each an explained reply
    event from the syslog lines Sendmail wrote, and one message record each."""
    downstream = module_scripted_server
    ok = f"{unique('ok')}@remote.test"
    gone_local, slow_local = unique("nouser"), unique("slow")
    gone, slow = f"{gone_local}@remote.test", f"{slow_local}@remote.test"
    mallory = f"{unique('mallory')}@remote.test"
    nosuch = f"{unique('nosuch')}@{HOSTNAME}"
    victim = f"{unique('victim')}@external.example"
    nouser = SAMPLE_SCRIPT["nouser"]  # Gmail's two-line 550-5.1.1
    assert isinstance(nouser, str)
    downstream.script[gone_local] = nouser
    grey = "450 4.7.1 Greylisted, see http://postgrey.schweikert.ch/help/remote.test.html"
    downstream.script[slow_local] = grey

    _, _, delivered = send(sm.smtp_port, [ok])
    _, _, bounced = send(sm.smtp_port, [gone])
    _, _, deferred = send(sm.smtp_port, [slow])
    _, _, mixed = send(sm.smtp_port, [mallory, nosuch, f"{unique('also')}@remote.test"])
    with smtplib.SMTP(
        "127.0.0.1", sm.smtp_port, local_hostname="outside.test", source_address=("127.0.0.2", 0)
    ) as s:
        s.ehlo()
        s.mail("someone@outside.example")
        assert s.rcpt(victim)[0] == 550
    assert all((delivered, bounced, deferred, mixed))
    sm.wait_for_log(rf"{deferred}: to=<{re.escape(slow)}>, .*stat=Deferred: 450 4\.7\.1")
    downstream.script.pop(slow_local)  # the greylist lets it through on the retry
    sm.run_queue(deferred)
    sm.wait_for_log(rf"{deferred}: to=<{re.escape(slow)}>, .*stat=Sent")
    (notice,) = sm.wait_for_log(rf"{bounced}: \w+: DSN: User unknown")
    dsn_qid = notice.split(": ")[2]  # the bounce's own queue id
    (bounce,) = sm.wait_for_mail(
        USER, match=lambda m: gone in m.as_string() and m["From"].startswith("Mail Delivery")
    )
    report = delivery_report(bounce)
    assert report is not None
    (dsn,) = report.recipients
    assert dsn["Final-Recipient"] == f"RFC822; {gone}"
    assert (dsn["Action"], dsn["Status"]) == ("failed", "5.1.1")
    # TRAP: Sendmail keeps only the first line of a multi-line reply in reply=, stat= and the DSN
    first_line = nouser.split("\r\n")[0]
    assert dsn["Diagnostic-Code"] == f"SMTP; {first_line}"
    downstream.wait_for(lambda s: any(ok in t.rcpt_tos for t in s.messages), timeout=60)
    sm.wait_for_log(rf"\w+: to=<{LOCAL}>, .*mailer=local, .*stat=Sent")

    events = follow(sm.maillog, tmp_path)
    replies = [e for e in events if e["event"] == "reply"]
    records = {e.get("queue_id"): e for e in events if e["event"] == "message"}
    (final,) = [e for e in events if e["event"] == "stats" and e.get("final")]
    unknown = final["kinds"].get("unknown", 0)
    drill_report(
        f"{final['lines']} real Sendmail syslog lines ({unknown} of no known shape) -> "
        f"{len(replies)} reply events, {len(records)} message records"
    )
    assert all(e.get("mta") == "sendmail" for e in replies)

    def reply(rcpt: str, **fields: object) -> dict[str, Any]:
        mine = [e for e in replies if e.get("recipient") == rcpt]
        found = [e for e in mine if fields.items() <= e.items()]
        assert found, (rcpt, fields, mine)
        return found[-1]

    sent = reply(ok, direction="downstream", queue_id=delivered)
    assert (sent.get("class"), sent.get("enhanced")) == ("success", "2.0.0")
    user_unknown = reply(gone, direction="downstream", queue_id=bounced)
    assert (user_unknown.get("code"), user_unknown.get("enhanced")) == (550, "5.1.1")
    assert (user_unknown.get("class"), user_unknown.get("reason")) == ("permanent", "user_unknown")
    assert user_unknown.get("text") == first_line
    greylisted = reply(slow, direction="downstream", queue_id=deferred, code=450)
    assert (greylisted.get("enhanced"), greylisted.get("class")) == ("4.7.1", "transient")
    assert greylisted.get("reason") == "greylisting"
    relaying = reply(victim, direction="upstream", stage="rcpt")
    assert (relaying.get("code"), relaying.get("enhanced")) == (550, "5.7.1")
    assert (relaying.get("class"), relaying.get("reason")) == ("permanent", "no_relaying")
    local_unknown = reply(nosuch, direction="upstream", queue_id=mixed)
    assert (local_unknown.get("class"), local_unknown.get("reason")) == (
        "permanent",
        "user_unknown",
    )
    policy = reply(mallory, direction="upstream", queue_id=mixed)
    assert (policy.get("code"), policy.get("enhanced"), policy.get("class")) == (
        550,
        "5.7.1",
        "permanent",
    )
    assert (policy.get("stage"), policy.get("reason")) == ("rcpt", "policy_violation")
    # the log's "\r\n" and libmilter's "%%" undone: the reply the client got, as the milter
    # recorded it
    (sent_by_milter,) = milter.wait_for(
        lambda e: e["event"] == "reply" and e.get("recipient") == mallory
    )
    assert policy.get("text") == sent_by_milter.get("text")
    assert "Our quota is 100% used; 50%% of it" in policy["text"]

    assert records[delivered]["status"] == "delivered"
    assert records[bounced]["status"] == "bounced"
    assert records[deferred]["status"] == "delivered"
    attempts = records[deferred]["recipients"][0]["attempts"]
    assert [a["status"] for a in attempts] == ["deferred", "sent"]
    assert records[mixed]["status"] == "delivered"
    assert records[dsn_qid]["status"] == "delivered"  # the bounce, to the local mailbox
    assert records[dsn_qid]["recipients"][0]["recipient"] == LOCAL
    assert all(records[q]["mta"] == "sendmail" for q in (delivered, bounced, deferred, mixed))
    assert all(records[q]["complete"] for q in (delivered, bounced, deferred, mixed))
    assert unknown == 0, "lines of the real log no shape knows"
    sm.wait_queue_empty()  # every message of the module delivered or bounced


# -- (d) the milter killed under load ----------------------------------------------------------


def test_milter_killed_under_load_loses_no_mail(
    tmp_path: Path, make_sendmail: SendmailFactory, drill_report: Callable[[str], None]
) -> None:
    """smtp-source sends N messages in 10 sessions; the milter dies by SIGKILL midway.

    No F= flag: Sendmail goes on without the milter ("to error state"), so every message
    reaches the downstream server exactly once. The restarted milter serves again.
    """
    count = size(300, 2000)
    rcpt = f"{unique('load')}@remote.test"
    milter = MilterProcess(tmp_path).start()
    with ScriptedServer({}) as downstream:
        try:
            sm = make_sendmail(downstream_port=downstream.port, milter_port=milter.port)
            load = subprocess.Popen(
                ["smtp-source", "-s", "10", "-m", str(count), "-l", "2000", "-f", LOCAL,
                 "-t", rcpt, f"127.0.0.1:{sm.smtp_port}"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                milter.wait_for(lambda e: e.get("stage") == "eom", timeout=120, count=count // 4)
                milter.kill()
                output, _ = load.communicate(timeout=300)
                assert load.returncode == 0, output
            finally:
                if load.poll() is None:
                    load.kill()
                    load.communicate()

            def delivered() -> int:
                return sum(rcpt in t.rcpt_tos for t in downstream.messages)

            downstream.wait_for(lambda s: delivered() >= count, timeout=300)
            seen = len([e for e in milter.events.of("session") if e["commands"].get("eom")])
            failed_over = len(sm.log_matches(r"Milter \(smtp_policy\): .*to error state"))
            assert delivered() == count  # none lost, none twice
            assert 0 < seen < count  # the milter saw part of the run, Sendmail did the rest
            assert failed_over > 0
            assert not sm.log_matches(r"reject=|stat=(?!Sent)")
            milter.start()
            code, reply, _ = send(sm.smtp_port, [rcpt], sender=f"after@{HOSTNAME}")
            assert code == 250, reply
            milter.wait_for(
                lambda e: e.get("stage") == "eom" and e.get("sender") == f"after@{HOSTNAME}"
            )
            downstream.wait_for(lambda s: delivered() == count + 1, timeout=60)
            drill_report(
                f"{count} sent, {delivered() - 1} delivered downstream, milter saw "
                f"{seen} messages before SIGKILL, Sendmail failed open on "
                f"{failed_over} sessions"
            )
        finally:
            milter.stop()


def test_the_snippet_works_anywhere_in_sendmail_mc(
    tmp_path: Path, sendmail_available: None
) -> None:
    """README says to append the snippet to sendmail.mc: after the MAILER() lines it compiles
    to the same filter and macro options as before them (where the lab puts it)."""
    root = tmp_path / "root"
    for deb in ensure_debs():
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    snippet = (Path(__file__).parents[2] / "config" / "sendmail" / "smtp-policy.mc").read_text()
    head = (
        f"divert(-1)\ninclude(`{root}/usr/share/sendmail/cf/m4/cf.m4')\ndivert(0)dnl\n"
        "OSTYPE(`linux')dnl\ndefine(`confDOMAIN_NAME', `mx.example.test')dnl\n"
    )
    mailers = "MAILER(`local')dnl\nMAILER(`smtp')dnl\n"
    wanted = re.compile(r"^(Xsmtp_policy, .*|O (InputMailFilters|Milter\.macros\.\w+)=.*)$", re.M)

    def options(mc: str) -> list[str]:
        cf = subprocess.run(
            [str(root / "usr/bin/m4")], input=mc, capture_output=True, text=True, check=True
        ).stdout
        return [m.group(0) for m in wanted.finditer(cf)]

    before, after = options(head + snippet + mailers), options(head + mailers + snippet)
    assert before == after
    assert "Xsmtp_policy, S=inet:8895@127.0.0.1, T=C:10s;S:10s;R:10s;E:1m" in after
    assert any(line.startswith("O Milter.macros.connect=j, _, v, ") for line in after)


# -- (f) the log cannot be forged by an address -----------------------------------------------


def test_crafted_addresses_forge_no_field_of_the_real_log(
    sm: PrivateSendmail, module_scripted_server: ScriptedServer
) -> None:
    """Issue 16: quoted local parts holding Sendmail's own field syntax (``, relay=H [A],
    reject=``, ``, stat=``, ``, dsn=``), in the ruleset line Sendmail really writes for a
    relaying denied (arguments and the reply echoing them) and in its delivery line."""
    forged = ", relay=forged.example [192.0.2.66], reject=250 2.0.0 ok, stat=Sent, dsn=2.0.0"
    victim = f'"{unique("v")}{forged}"@external.example'
    with smtplib.SMTP(
        "127.0.0.1", sm.smtp_port, local_hostname="outside.test", source_address=("127.0.0.2", 0)
    ) as s:
        s.ehlo()
        s.mail("someone@outside.example")
        assert s.rcpt(victim)[0] == 550
    (line,) = sm.wait_for_log(rf"ruleset=check_rcpt, arg1=<{re.escape(victim)}>")
    record = parse_line(line)
    assert record is not None
    assert (record.kind, record.recipient, record.code) == ("sendmail_ruleset_reject", victim, 550)
    assert record.client_addr == "127.0.0.2"
    assert record.reply is not None
    assert record.reply.startswith(f"550 5.7.1 <{victim}>... Relaying denied")

    rcpt = f'"{unique("d")}, delay=00:00:09, mailer=local{forged}"@remote.test'
    _, _, qid = send(sm.smtp_port, [rcpt])
    module_scripted_server.wait_for(
        lambda srv: any(rcpt in t.rcpt_tos for t in srv.messages), timeout=60
    )
    (line,) = sm.wait_for_log(rf"{qid}: to=<{re.escape(rcpt)}>, .*stat=Sent \(")
    record = parse_line(line)
    assert record is not None
    assert (record.kind, record.recipient, record.status) == ("sendmail_delivery", rcpt, "sent")
    assert (record.dsn, record.relay) == ("2.0.0", "[127.0.0.1] [127.0.0.1]")
    assert dict(record.extra)["mailer"] == "esmtp"
    assert dict(record.extra)["stat"].startswith("Sent (")
