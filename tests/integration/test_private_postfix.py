"""The private Postfix fixture is real: it delivers, rejects, relays, bounces and defers.

One instance serves the module (its tests match on their own queue IDs). Tests that change
settings, or that cause site-level failures (421, timeouts) which could get the shared
remote.test destination throttled, start their own instance with ``make_postfix``.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import uuid
from email.message import EmailMessage

import pytest

from smtp_policy.lab.instance import delivery_report
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from smtp_policy.lab.remote import CLOSE, STALL, ScriptedServer, wire_reply

pytestmark = pytest.mark.postfix

SENDER = "sender@local.test"
GMAIL_NOUSER = (
    "550-5.1.1 The email account that you tried to reach does not exist. "
    "550 5.1.1 Learn more at https://support.google.com/mail/?p=NoSuchUser - gsmtp"
)


@pytest.fixture(name="downstream", scope="module")
def _downstream(module_scripted_server: ScriptedServer) -> ScriptedServer:
    return module_scripted_server


@pytest.fixture(name="pf", scope="module")
def _pf(downstream: ScriptedServer, make_module_postfix: PostfixFactory) -> PrivatePostfix:
    return make_module_postfix(downstream_port=downstream.port)


def submit(port: int, rcpt: str, *, sender: str = SENDER) -> tuple[str, str]:
    """Send one message over SMTP; return (queue ID, Subject).

    smtplib's mail() sends no EHLO by itself (Postfix would log proto=SMTP and no helo=<>).
    """
    subject = f"test {uuid.uuid4().hex[:12]}"
    body = f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.mail(sender)[0] == 250
        assert smtp.rcpt(rcpt)[0] == 250
        code, reply = smtp.data(body.encode())
    assert code == 250, reply
    m = re.search(rb"queued as ([0-9A-F]+)", reply)
    assert m, reply
    return m.group(1).decode(), subject


def test_local_delivery(pf: PrivatePostfix) -> None:
    """Mail to alice@local.test lands in her Maildir and is logged status=sent."""
    qid, subject = submit(pf.smtp_port, "alice@local.test")
    pf.wait_for_log(
        rf"postfix/virtual\[\d+\]: {qid}: to=<alice@local\.test>, relay=virtual, .*"
        r"dsn=2\.0\.0, status=sent \(delivered to maildir\)"
    )
    (msg,) = [m for m in pf.mailbox("alice") if m["Subject"] == subject]
    assert msg["Delivered-To"] == "alice@local.test"
    assert msg.get_content().strip() == "hello"


def test_unknown_local_user_rejected(pf: PrivatePostfix) -> None:
    """RCPT to an unlisted virtual user gets 550 5.1.1 and a NOQUEUE reject log line."""
    with smtplib.SMTP("127.0.0.1", pf.smtp_port, local_hostname="client.test") as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        code, text = smtp.rcpt("nosuchuser@local.test")
    assert code == 550
    assert text.decode() == (
        "5.1.1 <nosuchuser@local.test>: Recipient address rejected: "
        "User unknown in virtual mailbox table"
    )
    pf.wait_for_log(
        r"postfix/smtpd\[\d+\]: NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: "
        r"550 5\.1\.1 <nosuchuser@local\.test>: Recipient address rejected: User unknown in "
        r"virtual mailbox table; from=<sender@local\.test> to=<nosuchuser@local\.test> "
        r"proto=ESMTP helo=<client\.test>"
    )


def test_relay_denied_on_untrusted_port(pf: PrivatePostfix) -> None:
    """swaks on the untrusted port: relaying to other.example is refused 554 5.7.1."""
    done = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(pf.untrusted_port),
         "--ehlo", "client.test", "--from", SENDER, "--to", "someone@other.example",
         "--quit-after", "RCPT", "--timeout", "10"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 24, done.stdout + done.stderr  # swaks: RCPT TO failed
    assert "<** 554 5.7.1 <someone@other.example>: Relay access denied" in done.stdout
    pf.wait_for_log(
        r"postfix/untrusted/smtpd\[\d+\]: NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: "
        r"554 5\.7\.1 <someone@other\.example>: Relay access denied; "
        r"from=<sender@local\.test> to=<someone@other\.example>"
    )


@pytest.mark.parametrize(
    ("local", "status", "diagnostic"),
    [
        pytest.param("nouser", "5.1.1", GMAIL_NOUSER, id="gmail-nouser"),
        pytest.param(
            "block",
            "5.7.1",
            "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org",
            id="spamhaus-block",
        ),
    ],
)
def test_remote_rejection_bounces(
    pf: PrivatePostfix, downstream: ScriptedServer, local: str, status: str, diagnostic: str
) -> None:
    """A 5xx from downstream bounces: the DSN reaches sender@local.test with the remote text."""
    qid, _ = submit(pf.smtp_port, f"{local}@remote.test")
    pf.wait_for_log(rf"{qid}: to=<{local}@remote\.test>, .*dsn={re.escape(status)}, status=bounced")

    def is_ours(msg: EmailMessage) -> bool:
        report = delivery_report(msg)
        return report is not None and report.message.get("X-Postfix-Queue-ID") == qid

    (bounce,) = pf.wait_for_mail("sender", match=is_ours)
    assert bounce["Subject"] == "Undelivered Mail Returned to Sender"
    report = delivery_report(bounce)
    assert report is not None
    (rcpt,) = report.recipients
    assert rcpt["Final-Recipient"] == f"rfc822; {local}@remote.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == status
    assert rcpt["Diagnostic-Code"] == f"smtp; {diagnostic}"
    assert any(f"{local}@remote.test" in t.refused for t in downstream.transactions)


@pytest.mark.parametrize(
    ("local", "dsn", "reply"),
    [
        pytest.param(
            "grey",
            "4.7.1",
            "450 4.7.1 Greylisted, see http://postgrey.schweikert.ch/help/local.test.html",
            id="greylisted",
        ),
        pytest.param(
            "full",
            "4.2.2",
            "452 4.2.2 The email account that you tried to reach is over quota",
            id="over-quota",
        ),
    ],
)
def test_remote_tempfail_defers(
    pf: PrivatePostfix, downstream: ScriptedServer, local: str, dsn: str, reply: str
) -> None:
    """A 4xx to RCPT defers the message: status=deferred with the remote dsn and reply."""
    qid, _ = submit(pf.smtp_port, f"{local}@remote.test")
    pf.wait_for_log(
        rf"postfix/smtp\[\d+\]: {qid}: to=<{local}@remote\.test>, "
        rf"relay=127\.0\.0\.1\[127\.0\.0\.1\]:{downstream.port}, .*dsn={re.escape(dsn)}, "
        rf"status=deferred \(host 127\.0\.0\.1\[127\.0\.0\.1\] said: {re.escape(reply)} "
        r"\(in reply to RCPT TO command\)\)"
    )
    assert not pf.queue_empty()
    pf.delete_queued(qid)  # keep the shared instance quiet


def test_multiline_reply_arrives_intact(pf: PrivatePostfix, downstream: ScriptedServer) -> None:
    """The Gmail reply is a real two-line SMTP reply, and Postfix's 'said:' joins both lines."""
    assert wire_reply(str(downstream.script["nouser"])) == (
        b"550-5.1.1 The email account that you tried to reach does not exist.\r\n"
        b"550 5.1.1 Learn more at https://support.google.com/mail/?p=NoSuchUser - gsmtp\r\n"
    )
    with smtplib.SMTP("127.0.0.1", downstream.port, local_hostname="client.test") as smtp:
        smtp.mail(SENDER)
        assert smtp.rcpt("nouser@remote.test") == (
            550,
            b"5.1.1 The email account that you tried to reach does not exist.\n"
            b"5.1.1 Learn more at https://support.google.com/mail/?p=NoSuchUser - gsmtp",
        )
    qid, _ = submit(pf.smtp_port, "nouser@remote.test")
    pf.wait_for_log(
        rf"{qid}: to=<nouser@remote\.test>, .*status=bounced \(host 127\.0\.0\.1\[127\.0\.0\.1\] "
        rf"said: {re.escape(GMAIL_NOUSER)} \(in reply to RCPT TO command\)\)"
    )


def test_scripted_server_actions(scripted_server: ScriptedServer) -> None:
    """421 replies close the connection, STALL never answers, CLOSE hangs up."""
    scripted_server.script.update({"gone": CLOSE, "slow": STALL})
    with smtplib.SMTP("127.0.0.1", scripted_server.port, timeout=5) as smtp:
        smtp.mail(SENDER)
        assert smtp.rcpt("r421@remote.test")[0] == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.noop()
    with smtplib.SMTP("127.0.0.1", scripted_server.port, timeout=5) as smtp:
        smtp.mail(SENDER)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            smtp.rcpt("gone@remote.test")
    with smtplib.SMTP("127.0.0.1", scripted_server.port, timeout=0.5) as smtp:
        smtp.mail(SENDER)
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):
            smtp.rcpt("slow@remote.test")
    with smtplib.SMTP("127.0.0.1", scripted_server.port, timeout=5) as smtp:
        assert smtp.sendmail(SENDER, ["ok@remote.test"], b"Subject: x\r\n\r\n.dot\r\n") == {}
    (msg,) = scripted_server.messages
    assert msg.rcpt_tos == ["ok@remote.test"]
    assert msg.data == b"Subject: x\r\n\r\n.dot\r\n"


def test_untrusted_port_is_untrusted(make_postfix: PostfixFactory) -> None:
    """Only the trusted port's client is in mynetworks (permit_mynetworks tells them apart)."""
    pf = make_postfix(main_cf={"smtpd_client_restrictions": "permit_mynetworks, reject"})
    for port, expected in ((pf.smtp_port, 250), (pf.untrusted_port, 554)):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test") as smtp:
            smtp.ehlo()
            smtp.mail(SENDER)
            assert smtp.rcpt("bob@local.test")[0] == expected
    pf.wait_for_log(r"postfix/untrusted/smtpd\[\d+\]: NOQUEUE: reject: .*Client host rejected")


def test_site_failures_defer(make_postfix: PostfixFactory, scripted_server: ScriptedServer) -> None:
    """A 421 and a stalled RCPT (timeout) defer the mail with 4.x.x status."""
    pf = make_postfix(downstream_port=scripted_server.port, main_cf={"smtp_rcpt_timeout": "1s"})
    qid421, _ = submit(pf.smtp_port, "r421@remote.test")
    pf.wait_for_log(
        rf"{qid421}: to=<r421@remote\.test>, .*dsn=4\.7\.0, status=deferred \(host "
        r"127\.0\.0\.1\[127\.0\.0\.1\] said: 421 4\.7\.0 Try again later, closing connection"
    )
    pf.delete_queued(qid421)
    qid, _ = submit(pf.smtp_port, "timeout@remote.test")
    pf.wait_for_log(
        rf"{qid}: to=<timeout@remote\.test>, .*dsn=4\.4\.2, status=deferred \(conversation with "
        r"127\.0\.0\.1\[127\.0\.0\.1\] timed out while sending RCPT TO\)"
    )


def test_reload_and_flush(make_postfix: PostfixFactory, scripted_server: ScriptedServer) -> None:
    """postconf -e + reload() changes a running instance; flush() retries deferred mail."""
    pf = make_postfix(downstream_port=scripted_server.port)
    pf.postconf("-e", "smtpd_banner = $myhostname ESMTP reloaded")
    pf.reload()
    with smtplib.SMTP() as smtp:
        code, banner = smtp.connect("127.0.0.1", pf.smtp_port)
    assert (code, banner) == (220, b"mx.smtp-policy.test ESMTP reloaded")
    qid, _ = submit(pf.smtp_port, "grey@remote.test")
    pf.wait_for_log(rf"{qid}: to=<grey@remote\.test>, .*status=deferred")
    scripted_server.script.pop("grey")
    pf.flush()
    pf.wait_for_log(rf"{qid}: to=<grey@remote\.test>, .*status=sent \(250 2\.0\.0 Ok")
    pf.wait_queue_empty()
    assert [m.rcpt_tos for m in scripted_server.messages] == [["grey@remote.test"]]


def test_other_destinations_bounce_locally(pf: PrivatePostfix) -> None:
    """Mail injected for an outside domain never leaves: the error transport bounces it."""
    subprocess.run(
        ["/usr/sbin/sendmail", "-C", str(pf.config_dir), "-f", SENDER, "x@other.example"],
        input=b"Subject: outside\r\n\r\nhi\r\n",
        check=True,
        timeout=30,
    )
    pf.wait_for_log(
        r"postfix/error\[\d+\]: \w+: to=<x@other\.example>, relay=none, .*status=bounced"
    )


def test_discard_mode(make_postfix: PostfixFactory) -> None:
    """discard=True accepts mail for every domain and drops it (for load tests)."""
    pf = make_postfix(discard=True)
    for rcpt in ("alice@local.test", "nouser@remote.test"):
        qid, _ = submit(pf.smtp_port, rcpt)
        pf.wait_for_log(
            rf"postfix/discard\[\d+\]: {qid}: to=<{re.escape(rcpt)}>, relay=none, .*status=sent"
        )
    pf.wait_queue_empty()
    assert pf.mailbox("alice") == []
