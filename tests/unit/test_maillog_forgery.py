"""Issue 16, item 6: a crafted recipient, sender, HELO or header cannot forge the follower's
sender, recipient, HELO or reply."""

from __future__ import annotations

from smtp_policy.maillog.parse import parse_line

#: RCPT TO:<"; from=<ceo@bank.example> to=<forged@victim.example> proto=ESMTP
#: helo=<forged.helo"@external.example> after EHLO 'a;b<c> d"e helo=<x @y', as Postfix 3.7.11
#: logged it on the untrusted listener of a private instance.
ATTACK = (
    "Dec 06 14:39:00 mx postfix/untrusted/smtpd[5787]: NOQUEUE: reject: RCPT from "
    "localhost[127.0.0.1]: 554 5.7.1 <; from=<ceo@bank.example> to=<forged@victim.example> "
    "proto=ESMTP helo=<forged.helo@external.example>: Relay access denied; "
    'from=<real@sender.example> to=<"; from=<ceo@bank.example> to=<forged@victim.example> '
    'proto=ESMTP helo=<forged.helo"@external.example> proto=ESMTP helo=<a?b?c??d?e?helo=?x??y>'
)


def test_the_attack_line() -> None:
    record = parse_line(ATTACK)
    assert record is not None and record.kind == "smtpd_reject"
    assert record.sender == "real@sender.example"
    assert record.recipient == (
        '"; from=<ceo@bank.example> to=<forged@victim.example> proto=ESMTP '
        'helo=<forged.helo"@external.example'
    )
    assert record.helo == "a?b?c??d?e?helo=?x??y"
    assert record.proto == "ESMTP"
    assert record.reply == (
        "554 5.7.1 <; from=<ceo@bank.example> to=<forged@victim.example> proto=ESMTP "
        "helo=<forged.helo@external.example>: Relay access denied"
    )
    assert (record.code, record.enhanced) == (554, "5.7.1")


def test_a_lookalike_inside_a_quoted_sender() -> None:
    line = (
        "Dec 06 14:39:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from x[192.0.2.1]: "
        "554 5.7.1 <a@b>: Relay access denied; "
        'from=<"; from=<ceo@bank.example> to=<x@y> proto=ESMTP helo=<h"@d> to=<a@b> '
        "proto=ESMTP helo=<real>"
    )
    record = parse_line(line)
    assert record is not None
    assert record.sender == '"; from=<ceo@bank.example> to=<x@y> proto=ESMTP helo=<h"@d'
    assert (record.recipient, record.helo) == ("a@b", "real")


def test_a_header_lookalike_that_runs_into_a_quoted_sender() -> None:
    """The header ends in an open quote that the sender's quotes would close."""
    line = (
        "Dec 06 14:39:01 mx postfix/cleanup[2]: 4XyZ1C0D9: reject: header Subject: "
        'hi from evil[192.0.2.66]; from=<" from mx[192.0.2.1]; from=<">: forged"@d> '
        "to=<r@d> proto=ESMTP helo=<h>: 5.7.1 Message content rejected"
    )
    record = parse_line(line)
    assert record is not None
    assert (record.sender, record.recipient, record.helo) == ('">: forged"@d', "r@d", "h")
    assert record.client_addr == "192.0.2.1"
    assert record.reply == "5.7.1 Message content rejected"
    assert record.extra_value("header") == ('Subject: hi from evil[192.0.2.66]; from=<"')


def test_a_header_lookalike() -> None:
    line = (
        "Dec 06 14:39:01 mx postfix/cleanup[2]: 4XyZ1C0D9: reject: header Subject: "
        "x from evil[192.0.2.66]; from=<ceo@bank.example>: 2.0.0 fine from mx[192.0.2.1]; "
        "from=<s@d> to=<r@d> proto=ESMTP helo=<h>: 5.7.1 Message content rejected"
    )
    record = parse_line(line)
    assert record is not None
    assert (record.sender, record.client_addr) == ("s@d", "192.0.2.1")
    assert record.reply == "5.7.1 Message content rejected"
