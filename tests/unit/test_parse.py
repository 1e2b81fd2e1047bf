"""parse_reply reads every form operators meet."""

from __future__ import annotations

import pytest

from smtp_policy.core.model import EnhancedCode, ReplyForm
from smtp_policy.core.parse import CodeBook, parse_reply

BOOK = CodeBook(
    standard=frozenset({220, 221, 250, 354, 421, 450, 451, 452, 550, 551, 552, 553, 554}),
    shorthands={511: EnhancedCode(5, 1, 1), 471: EnhancedCode(4, 7, 1), 422: EnhancedCode(4, 2, 2)},
)
GMAIL = (
    "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
    "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
    "550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser - gsmtp"
)

CASES = [
    pytest.param(
        "550 5.1.1 <u@example.com>: User unknown",
        550,
        "5.1.1",
        "<u@example.com>: User unknown",
        ReplyForm.SMTP,
        id="single-line",
    ),
    pytest.param(GMAIL, 550, "5.1.1", None, ReplyForm.SMTP, id="multi-line-crlf"),
    pytest.param(
        GMAIL.replace("\r\n", "\n"), 550, "5.1.1", None, ReplyForm.SMTP, id="multi-line-lf"
    ),
    pytest.param(
        "host mx.example.com[192.0.2.1] said: 550 5.1.1 <u@example.com>: Recipient address rejected: "
        "User unknown (in reply to RCPT TO command)",
        550,
        "5.1.1",
        "<u@example.com>: Recipient address rejected: User unknown",
        ReplyForm.POSTFIX,
        id="postfix-said",
    ),
    pytest.param(
        "host mx2.free.fr[212.27.42.58] refused to talk to me: 421 Refused. Your reverse DNS entry "
        "does not resolve to an IP.",
        421,
        None,
        None,
        ReplyForm.POSTFIX,
        id="postfix-refused",
    ),
    pytest.param(
        "dsn=4.0.0, stat=Deferred: 451 4.3.0 Temporary system failure",
        451,
        "4.3.0",
        "Temporary system failure",
        ReplyForm.SENDMAIL,
        id="sendmail-stat",
    ),
    pytest.param(
        "dsn=5.1.1, reply=550 5.1.1 <x@y>... User unknown, stat=User unknown",
        550,
        "5.1.1",
        "<x@y>... User unknown",
        ReplyForm.SENDMAIL,
        id="sendmail-reply",
    ),
    pytest.param(
        "SMTP error from remote mail server after RCPT TO:<bob@example.org>: 550 5.1.1 No such user",
        550,
        "5.1.1",
        "No such user",
        ReplyForm.CLIENT_REPORT,
        id="exim-report",
    ),
    pytest.param(
        "connect to mx.example.com[192.0.2.1]:25: Connection timed out",
        None,
        None,
        None,
        ReplyForm.LOCAL,
        id="postfix-local",
    ),
    pytest.param(
        "lost connection with mx.example.com[192.0.2.1] while receiving the initial server greeting",
        None,
        None,
        None,
        ReplyForm.LOCAL,
        id="lost-connection",
    ),
    pytest.param(
        "Sorry, no mailbox here by that name. (#5.1.1)",
        None,
        "5.1.1",
        None,
        ReplyForm.TEXT,
        id="qmail-hash-code",
    ),
    pytest.param(
        "Message rejected [5.7.1] by policy", None, "5.7.1", None, ReplyForm.TEXT, id="bracket-code"
    ),
    pytest.param("550", 550, None, "", ReplyForm.BARE, id="bare-code"),
    pytest.param("5.1.1", None, "5.1.1", "", ReplyForm.BARE, id="bare-enhanced"),
    pytest.param("SMTP error 511", 511, "5.1.1", None, ReplyForm.SHORTHAND, id="shorthand-511"),
    pytest.param("471", 471, "4.7.1", "", ReplyForm.SHORTHAND, id="shorthand-471"),
    pytest.param("SMTP Error 4.5.1", 451, None, None, ReplyForm.SHORTHAND, id="dotted-basic-451"),
    pytest.param(
        "Diagnostic-Code: smtp; 554 5.7.1 Message rejected",
        554,
        "5.7.1",
        "Message rejected",
        ReplyForm.TEXT,
        id="dsn-diagnostic",
    ),
]


@pytest.mark.parametrize(("text", "code", "enhanced", "body", "form"), CASES)
def test_forms(
    text: str, code: int | None, enhanced: str | None, body: str | None, form: ReplyForm
) -> None:
    """Each form yields its code, enhanced code, text and form."""
    reply = parse_reply(text, BOOK)
    assert reply.code == code
    assert (str(reply.enhanced) if reply.enhanced else None) == enhanced
    assert reply.form is form
    assert reply.raw == text
    if body is not None:
        assert reply.text == body


def test_multiline_text_is_joined_without_prefixes() -> None:
    """Continuation prefixes vanish, in real lines and in Postfix's space-joined form alike."""
    lines = parse_reply(GMAIL, BOOK)
    joined = parse_reply(
        f"host gmail-smtp-in.l.google.com[142.250.1.26] said: {GMAIL.replace(chr(13) + chr(10), ' ')}"
        " (in reply to RCPT TO command)",
        BOOK,
    )
    assert lines.lines == 3
    assert "550" not in lines.text and "5.1.1" not in lines.text
    assert lines.text == joined.text
    assert joined.command == "RCPT TO"
    assert joined.remote == "gmail-smtp-in.l.google.com[142.250.1.26]"


def test_enhanced_of_other_class_is_not_taken_from_text() -> None:
    """A 4xx reply does not borrow a 5.x.x code that appears in its text."""
    reply = parse_reply("450 Try again; earlier attempt said 5.1.1", BOOK)
    assert reply.code == 450
    assert reply.enhanced is None


def test_ip_addresses_are_not_enhanced_codes() -> None:
    """192.0.2.1 and 5.1.1.1 are not read as enhanced codes."""
    assert parse_reply("blocked 5.1.1.1 and 4.7.1.2", BOOK).enhanced is None


@pytest.mark.parametrize(
    "text", ["", "   ", "\x00", "\r\n\r\n", "\udcff", "5" * 100_000, "550-" * 10_000]
)
def test_degenerate_input_yields_a_reply(text: str) -> None:
    """Empty, NUL, lone surrogates and huge inputs parse without error."""
    reply = parse_reply(text, BOOK)
    assert reply.raw == text
