"""Postfix's own hooks, served by smtp_policy, in a real private Postfix.

The maps server answers smtpd_reject_footer_maps (footers under Postfix's own rejections) and
smtp_delivery_status_filter (friendlier per-recipient text in real bounce messages); the bounce
template gives the DSN its prose; the policy service records each decision point. Then the
fail-open drill: with the maps server stopped, Postfix rejects and bounces exactly as before
(hung, and under load, in test_drill_maps.py).
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from smtp_policy.lab.instance import delivery_report
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from smtp_policy.lab.remote import ScriptedServer
from tests.helpers import Daemon, bounce_template, configured_daemon, maps_table, submit

pytestmark = pytest.mark.postfix

SENDER = "sender@local.test"
CONFIG = """
[maps]
dsn_deferrals = true  # the deferral tests below: rewritten only when the admin opts in

[texts]
help_url = "https://help.local.test/mail-errors#{reason}"

[[rules]]
name = "no-spam-test"
stage = "rcpt"
sender = ["*@spam.test"]
action = "reject"
code = 554
enhanced = "5.7.1"
reason = "blocked"
text = "We do not accept mail from {sender}."
"""


@pytest.fixture(name="tmp", scope="module")
def _tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("hooks")
    (tmp / "config.toml").write_text(CONFIG)
    return tmp


@pytest.fixture(name="maps", scope="module")
def _maps(tmp: Path) -> Iterator[Daemon]:
    yield from configured_daemon("maps", tmp)


@pytest.fixture(name="policy", scope="module")
def _policy(tmp: Path) -> Iterator[Daemon]:
    yield from configured_daemon("policy", tmp)


@pytest.fixture(name="pf", scope="module")
def _pf(
    tmp: Path,
    maps: Daemon,
    policy: Daemon,
    module_scripted_server: ScriptedServer,
    make_module_postfix: PostfixFactory,
) -> PrivatePostfix:
    template = bounce_template(tmp / "bounce.cf")
    return make_module_postfix(
        downstream_port=module_scripted_server.port,
        reject_footer_maps=maps_table(maps, "footer"),
        delivery_status_filter=maps_table(maps, "dsn"),
        main_cf={
            "bounce_template_file": str(template),
            "smtp_rcpt_timeout": "3s",
            "smtpd_helo_restrictions": "reject_invalid_helo_hostname",
            "smtpd_recipient_restrictions": (
                f"check_policy_service {{ inet:127.0.0.1:{policy.port}, timeout=5s, "
                "default_action=DUNNO }, permit_mynetworks, reject_unauth_destination"
            ),
        },
    )


def rcpt_reply(
    port: int,
    rcpt: str,
    *,
    helo: str = "client.test",
    sender: str = SENDER,
    timeout: float = 20,
) -> tuple[int, str]:
    """The reply to RCPT TO, as smtplib sees it (all lines joined by newlines)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=timeout) as smtp:
        smtp.ehlo()
        smtp.mail(sender)
        code, text = smtp.rcpt(rcpt)
        return code, text.decode()


def bounce_for(pf: PrivatePostfix, qid: str) -> EmailMessage:
    """The bounce message Postfix sent to the sender for queue id ``qid``."""

    def is_ours(msg: EmailMessage) -> bool:
        report = delivery_report(msg)
        return report is not None and report.message.get("X-Postfix-Queue-ID") == qid

    (bounce,) = pf.wait_for_mail("sender", match=is_ours, timeout=30)
    return bounce


def text_part(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def test_footer_explains_an_unknown_local_user(pf: PrivatePostfix, maps: Daemon) -> None:
    """Postfix's own 550 5.1.1 gets a second line in plain words with the help link."""
    code, text = rcpt_reply(pf.smtp_port, "nosuchuser@local.test")
    assert code == 550
    first, *footer = text.splitlines()
    assert "User unknown" in first
    assert footer, text
    assert "address does not exist" in footer[0]
    assert "https://help.local.test/mail-errors#user_unknown" in text
    lookups = [e for e in maps.events.read() if e.get("map") == "footer"]
    assert any(
        e.get("reason") == "user_unknown" and e.get("direction") == "upstream" for e in lookups
    )


def test_footer_on_relay_denied(pf: PrivatePostfix) -> None:
    """Relay denied on the untrusted listener is explained as a relaying refusal."""
    code, text = rcpt_reply(pf.untrusted_port, "someone@elsewhere.test")
    assert code == 554
    assert "Relay access denied" in text
    assert "relay" in text.splitlines()[-1].lower()


def test_footer_on_a_bad_helo(pf: PrivatePostfix) -> None:
    """A HELO Postfix refuses (checked at RCPT with smtpd_delay_reject) gets a footer too."""
    code, text = rcpt_reply(pf.smtp_port, "alice@local.test", helo="bad..helo")
    assert code == 501
    assert "Helo command rejected" in text
    assert len(text.splitlines()) >= 2


def test_policy_service_records_and_rejects(pf: PrivatePostfix, policy: Daemon) -> None:
    """Every RCPT reaches the policy service; a rule's rejection reaches the client intact."""
    code, text = rcpt_reply(pf.smtp_port, "alice@local.test", sender="eve@spam.test")
    assert code == 554
    first = text.splitlines()[0]
    assert first.startswith("5.7.1 <alice@local.test>: Recipient address rejected:")
    assert first.endswith("We do not accept mail from eve@spam.test.")
    assert text.splitlines() == [first]  # our rule's reply: no footer from the maps server
    requests = [e for e in policy.events.read() if e["event"] == "policy_request"]
    assert any(
        e.get("sender") == "eve@spam.test" and e.get("rule") == "no-spam-test" for e in requests
    )
    assert all(e.get("stage") == "rcpt" for e in requests)


@pytest.mark.parametrize(
    ("local", "status", "friendly", "diagnostic"),
    [
        pytest.param(
            "nouser",
            "5.1.1",
            "address does not exist",
            "550-5.1.1 The email account that you tried to reach does not exist. "
            "550 5.1.1 Learn more at https://support.google.com/mail/?p=NoSuchUser - gsmtp",
            id="gmail-no-such-user",
        ),
        pytest.param(
            "block",
            "5.7.1",
            "blocked",
            "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org",
            id="spamhaus",
        ),
    ],
)
def test_bounce_is_friendlier_and_keeps_the_diagnostic(
    pf: PrivatePostfix,
    maps: Daemon,
    local: str,
    status: str,
    *,
    friendly: str,
    diagnostic: str,
) -> None:
    """The real bounce: our prose and per-recipient text; Status, Action, Diagnostic-Code intact."""
    qid = submit(pf.smtp_port, SENDER, f"{local}@remote.test")
    bounce = bounce_for(pf, qid)
    assert bounce["Subject"] == "Undeliverable: your message could not be delivered"
    body = " ".join(text_part(bounce).split())
    assert "Your message could not be delivered to the recipient(s) below" in body
    assert friendly in body.lower()
    assert f"said: {diagnostic.split(' ', 1)[0]}" in body  # the remote's reply stays visible
    report = delivery_report(bounce)
    assert report is not None
    (rcpt,) = report.recipients
    assert rcpt["Status"] == status
    assert rcpt["Action"] == "failed"
    assert rcpt["Diagnostic-Code"] == f"smtp; {diagnostic}"
    dsn = [
        e for e in maps.events.read() if e.get("map") == "dsn" and diagnostic in str(e.get("text"))
    ]
    assert dsn
    assert dsn[-1]["direction"] == "downstream"
    print(f"--- bounce text part ({local}) ---\n{text_part(bounce)}")


@pytest.mark.parametrize(
    ("local", "dsn", "friendly", "original"),
    [
        pytest.param("full", "4.2.2", "mailbox is full", "said: 452 4.2.2", id="quota-452"),
        pytest.param(
            "grey", "4.7.1", "greylisted", "said: 450 4.7.1 Greylisted", id="greylist-450"
        ),
        pytest.param("r421", "4.7.0", "", "said: 421 4.7.0 Try again later", id="421-closing"),
        pytest.param(
            "timeout",
            "4.4.2",
            "stopped answering in the middle of the smtp conversation",
            "timed out while sending RCPT TO",
            id="timeout",
        ),
    ],
)
def test_deferral_is_logged_with_the_friendly_text(
    pf: PrivatePostfix, local: str, dsn: str, *, friendly: str, original: str
) -> None:
    """With [maps] dsn_deferrals on, a deferral's log text is the filtered one: friendlier
    words, then the original reply (test_one_story_postfix.py: off by default)."""
    qid = submit(pf.smtp_port, SENDER, f"{local}@remote.test")
    pattern = (
        rf"{qid}: to=<{local}@remote\.test>, .*dsn={re.escape(dsn)}, status=deferred \((.*)\)$"
    )
    line = pf.wait_for_log(pattern, timeout=30)[-1]
    text = re.search(pattern, line)
    assert text is not None
    assert friendly in text[1].lower()
    assert original in text[1]
    assert not text[1].startswith("host ")  # our words come first
    pf.delete_queued(qid)


def test_fail_open_without_the_maps_server(
    pf: PrivatePostfix, maps: Daemon, module_scripted_server: ScriptedServer
) -> None:
    """Maps server stopped: Postfix still rejects (no footer) and bounces (plain text)."""
    maps.stop()
    try:
        code, text = rcpt_reply(pf.smtp_port, "nosuchuser2@local.test")
        assert code == 550
        assert len(text.splitlines()) == 1
        qid = submit(pf.smtp_port, SENDER, "nouser@remote.test")
        report = delivery_report(bounce_for(pf, qid))
        assert report is not None
        assert report.recipients[0]["Status"] == "5.1.1"
        assert pf.wait_for_log(r"warning: .*socketmap.*(?:error|refused)")
    finally:
        maps.start()
    code, text = rcpt_reply(pf.smtp_port, "nosuchuser3@local.test")
    assert len(text.splitlines()) >= 2  # footers are back
