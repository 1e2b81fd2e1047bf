"""The bounce as a sender reads it, from a real private Postfix: the NDR layout end to end.

The template comes from ``smtp-policy postfix bounce-template --config`` ([bounce] with a
contact and a help link), each recipient's entry from the maps server's ``dsn`` map. The
bounce is read from the sender's Maildir: the sections come in the NDR order, the
delivery-status part is Postfix's own, and what the text says about the attachment is true
on both sides of ``bounce_size_limit``.
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from smtp_policy.lab.instance import delivery_report
from smtp_policy.lab.postfix import PostfixFactory, PrivatePostfix
from smtp_policy.lab.remote import ScriptedServer
from tests.helpers import (
    Daemon,
    bounce_template,
    configured_daemon,
    maps_table,
    notice_for,
    submit,
    text_part,
)

pytestmark = pytest.mark.postfix

SENDER = "sender@local.test"
CONTACT = "helpdesk@local.test"
HELP = "https://help.local.test/mail"
SIZE_LIMIT = 4000  # bounce_size_limit: larger messages come back as headers only
CONFIG = f"""
[bounce]
contact = "{CONTACT}"
help_url = "{HELP}"
"""
GMAIL = (
    "550-5.1.1 The email account that you tried to reach does not exist. "
    "550 5.1.1 Learn more at https://support.google.com/mail/?p=NoSuchUser - gsmtp"
)


@pytest.fixture(name="tmp", scope="module")
def _tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bounce-layout")
    (tmp / "config.toml").write_text(CONFIG, encoding="utf-8")
    return tmp


@pytest.fixture(name="maps", scope="module")
def _maps(tmp: Path) -> Iterator[Daemon]:
    yield from configured_daemon("maps", tmp)


@pytest.fixture(name="pf", scope="module")
def _pf(
    tmp: Path,
    maps: Daemon,
    module_scripted_server: ScriptedServer,
    make_module_postfix: PostfixFactory,
) -> PrivatePostfix:
    template = bounce_template(tmp / "bounce.cf", tmp / "config.toml")
    return make_module_postfix(
        downstream_port=module_scripted_server.port,
        delivery_status_filter=maps_table(maps, "dsn"),
        main_cf={"bounce_template_file": str(template), "bounce_size_limit": str(SIZE_LIMIT)},
    )


def returned_part(msg: EmailMessage) -> str:
    """The content type of the part that returns the message (or its headers)."""
    types = [p.get_content_type() for p in msg.walk()]
    (returned,) = [t for t in types if t in ("message/rfc822", "text/rfc822-headers")]
    return returned


def test_a_real_bounce_is_laid_out_like_an_ndr(pf: PrivatePostfix) -> None:
    """Intro, then the recipient: what happened and who, what to do, link, admins, reply."""
    bounce = notice_for(pf, submit(pf.smtp_port, SENDER, "nouser@remote.test"))
    text = text_part(bounce)
    print(f"--- bounce text part ---\n{text}")
    flat = " ".join(text.split())
    assert bounce["Subject"] == "Undeliverable: your message could not be delivered"
    order = [
        "Your message could not be delivered to the recipient(s) below",
        f"forward this report to {CONTACT}.",
        f"Help: {HELP}",
        f"only its headers if it was larger than {SIZE_LIMIT} bytes",
        "<nouser@remote.test>: The recipient's address does not exist.",
        "You can fix this yourself.",
        "What you can do: Check the address",
        "More information: <https://support.google.com/mail/?p=NoSuchUser>.",
        "For mail administrators, at ",
        " UTC: (host",
        f"host 127.0.0.1[127.0.0.1] said: {GMAIL} (in reply to RCPT TO command)",
    ]
    at = [flat.find(piece) for piece in order]
    assert -1 not in at, [p for p, i in zip(order, at, strict=True) if i < 0]
    assert at == sorted(at)
    intro = text.split("<nouser@remote.test>:", 1)[0]
    assert len(intro.strip().splitlines()) <= 9  # no pages of generic prose, no signature
    assert "postmaster@" not in text
    assert "answer/3726730" not in text  # the reply's own link, not a provider admin article
    report = delivery_report(bounce)
    assert report is not None
    (rcpt,) = report.recipients
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Action"] == "failed"
    assert rcpt["Diagnostic-Code"] == f"smtp; {GMAIL}"
    assert rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert returned_part(bounce) == "message/rfc822"  # small: the whole message is attached


def test_above_the_size_limit_only_headers_come_back_as_the_text_says(pf: PrivatePostfix) -> None:
    """The text's "or only its headers if larger than N bytes" is what Postfix does."""
    bounce = notice_for(
        pf, submit(pf.smtp_port, SENDER, "nouser@remote.test", filler=2 * SIZE_LIMIT)
    )
    assert returned_part(bounce) == "text/rfc822-headers"
    flat = " ".join(text_part(bounce).split())
    assert f"or only its headers if it was larger than {SIZE_LIMIT} bytes" in flat
