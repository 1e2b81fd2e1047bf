"""A German bounce and a delay notice, as a real private Postfix writes them with our template.

Each Postfix gets the bounce(5) file from ``smtp-policy postfix bounce-template --config`` and
the maps server's ``dsn`` map as its delivery status filter, as in
test_bounce_layout_postfix.py. One writes German (``[bounce] language = "de"``): a permanent
failure shows the knowledge rule's own German advice, in the NDR order, above Postfix's
untouched ``message/delivery-status`` part. The other keeps a message deferred (the remote
answers 4xx) with ``delay_warning_time = 1s``, so Postfix sends the delay notice within seconds
of the first retry.
"""

from __future__ import annotations

from collections.abc import Iterator
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
RELAY = "554 5.7.1 <norelay@remote.test>: Relay access denied"
FULL = "452 4.2.2 The email account that you tried to reach is over quota"
SCRIPT = {"norelay": RELAY, "full": FULL}


def _config(language: str, *, dsn_deferrals: bool = False) -> str:
    return (
        f'[bounce]\nlanguage = "{language}"\ncontact = "{CONTACT}"\nhelp_url = "{HELP}"\n'
        f"[maps]\ndsn_deferrals = {'true' if dsn_deferrals else 'false'}\n"
    )


@pytest.fixture(name="remote", scope="module")
def _remote() -> Iterator[ScriptedServer]:
    with ScriptedServer(SCRIPT) as server:
        yield server


def _workdir(factory: pytest.TempPathFactory, name: str, config: str) -> Path:
    workdir = factory.mktemp(name)
    (workdir / "config.toml").write_text(config, encoding="utf-8")
    bounce_template(workdir / "bounce.cf", workdir / "config.toml")
    return workdir


@pytest.fixture(name="german_dir", scope="module")
def _german_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _workdir(tmp_path_factory, "bounce-de", _config("de"))


@pytest.fixture(name="german_maps", scope="module")
def _german_maps(german_dir: Path) -> Iterator[Daemon]:
    yield from configured_daemon("maps", german_dir)


def _postfix(
    factory: PostfixFactory, remote: ScriptedServer, workdir: Path, maps: Daemon, **main_cf: str
) -> PrivatePostfix:
    """A Postfix with ``workdir``'s bounce template and ``maps`` as its delivery status filter."""
    return factory(
        downstream_port=remote.port,
        delivery_status_filter=maps_table(maps, "dsn"),
        main_cf={"bounce_template_file": str(workdir / "bounce.cf"), **main_cf},
    )


@pytest.fixture(name="german_pf", scope="module")
def _german_pf(
    german_dir: Path,
    german_maps: Daemon,
    remote: ScriptedServer,
    make_module_postfix: PostfixFactory,
) -> PrivatePostfix:
    return _postfix(make_module_postfix, remote, german_dir, german_maps)


@pytest.fixture(name="delay_dir", scope="module")
def _delay_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _workdir(tmp_path_factory, "bounce-delay", _config("en", dsn_deferrals=True))


@pytest.fixture(name="delay_maps", scope="module")
def _delay_maps(delay_dir: Path) -> Iterator[Daemon]:
    yield from configured_daemon("maps", delay_dir)


@pytest.fixture(name="delay_pf", scope="module")
def _delay_pf(
    delay_dir: Path,
    delay_maps: Daemon,
    remote: ScriptedServer,
    make_module_postfix: PostfixFactory,
) -> PrivatePostfix:
    # delay_warning_time takes Postfix time units; 1s makes the first retry send the notice.
    return _postfix(make_module_postfix, remote, delay_dir, delay_maps, delay_warning_time="1s")


def in_order(text: str, pieces: list[str]) -> None:
    """Every piece occurs in ``text`` (whitespace collapsed), in this order."""
    flat = " ".join(text.split())
    at = [flat.find(piece) for piece in pieces]
    assert -1 not in at, [p for p, i in zip(pieces, at, strict=True) if i < 0]
    assert at == sorted(at)


def test_a_german_bounce_gives_the_rules_own_advice(german_pf: PrivatePostfix) -> None:
    """Relay access denied: the rule's German words, not the reason's, in the NDR order."""
    bounce = notice_for(
        german_pf, submit(german_pf.smtp_port, SENDER, "norelay@remote.test"), "failed"
    )
    text = text_part(bounce)
    print(f"--- German bounce, text part ---\n{text}")
    assert bounce["Subject"] == "Unzustellbar: Ihre Nachricht konnte nicht zugestellt werden"
    in_order(
        text,
        [
            "Ihre Nachricht konnte an die unten genannten Empfänger nicht zugestellt werden",
            f"leiten Sie diesen Bericht an {CONTACT} weiter.",
            f"Hilfe: {HELP}",
            "<norelay@remote.test>: Der Server leitet fuer diesen Absender keine Mail an "
            "diese Domain weiter.",
            "Ihre Mail-Administration kann das beheben.",
            "Was Sie tun koennen: Wenn Sie ueber diesen Server senden: melden Sie sich zuerst "
            "an (SMTP AUTH)",
            "muss seine Administration die Domain eintragen.",
            "Fuer die Mail-Administration, um ",
            f" UTC: (host 127.0.0.1[127.0.0.1] said: {RELAY} (in reply to RCPT TO command))",
        ],
    )
    entry = text.split("<norelay@remote.test>:", 1)[1]
    assert "Weiterleitung der Nachricht abgelehnt" not in entry  # not its reason's words
    assert "Postausgangsserver" not in entry
    report = delivery_report(bounce)
    assert report is not None
    (rcpt,) = report.recipients
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.7.1"
    assert rcpt["Diagnostic-Code"] == f"smtp; {RELAY}"
    assert rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert rcpt["Final-Recipient"] == "rfc822; norelay@remote.test"


def test_a_deferred_message_gets_a_delay_notice(delay_pf: PrivatePostfix) -> None:
    """The delay template, the retry advice for a full mailbox, Postfix's own report."""
    qid = submit(delay_pf.smtp_port, SENDER, "full@remote.test")
    notice = notice_for(delay_pf, qid, "delayed")
    text = text_part(notice)
    print(f"--- delay notice, text part ---\n{text}")
    assert notice["Subject"] == "Delayed: your message is not delivered yet"
    in_order(
        text,
        [
            "Your message has not been delivered yet to the recipient(s) below",
            "This is only a warning: the mail system keeps trying for up to",
            f"forward this report to {CONTACT}.",
            f"Help: {HELP}",
            "<full@remote.test>: ",
            "Nobody has to act: the mail system keeps trying.",
            "What you can do: Nothing to do for now",
            "For mail administrators, at ",
            f" UTC: (host 127.0.0.1[127.0.0.1] said: {FULL} (in reply to RCPT TO command))",
        ],
    )
    assert "attached" not in text  # a delay notice returns no message, and says none
    assert "$" not in text  # Postfix filled in $delay_warning_time_hours and the lifetime
    report = delivery_report(notice)
    assert report is not None
    (rcpt,) = report.recipients
    assert rcpt["Action"] == "delayed"
    assert rcpt["Status"] == "4.2.2"
    assert rcpt["Diagnostic-Code"] == f"smtp; {FULL}"
    assert "Will-Retry-Until" in rcpt
    assert not delay_pf.queue_empty()  # still queued: a warning, not a bounce
