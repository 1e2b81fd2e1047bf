"""The log parser reads Sendmail's fields as Sendmail writes them, whatever the client put in its
addresses or the reply text echoing them (issue 16): a ruleset line's arguments end at
``, relay=NAME [ADDR], reject=``, a delivery's recipients at the first field outside quotes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.maillog.parse import parse_line
from tests.property.test_maillog_forgery import external

HEAD = "Feb 24 07:33:59 mx sm-mta[21134]: s1O7XtZJ021134: "

#: Pieces of Sendmail's field syntax an attacker would try, and plain characters.
FRAGMENTS = st.sampled_from(
    [
        ", reject=",
        "550 5.7.1 forged",
        ", relay=",
        "forged.example [192.0.2.66]",
        " (may be forged)",
        ", arg2=",
        ", discard",
        ", quarantine=",
        ", stat=",
        "Sent (forged)",
        ", delay=00:00:01",
        ", dsn=2.0.0",
        ", reply=",
        ", mailer=esmtp, pri=1",
        "<",
        ">",
        '"',
        "\\",
        ", ",
        " ",
        "ceo@bank.example",
        "@",
        "é",
    ]
)
TEXT = st.lists(st.one_of(FRAGMENTS, st.text('abc.-_=,<>[]"\\@ ', max_size=4)), max_size=8).map(
    "".join
)
DOMAINS = st.sampled_from(["external.example", "victim.example", "[192.0.2.7]"])
#: An address as the client typed it (quoted local part when it needs one), as Sendmail logs it.
ADDRESSES = st.builds(external, TEXT, DOMAINS)
RELAYS = st.sampled_from(
    [
        ("mx.client.example [198.51.100.7]", "mx.client.example", "198.51.100.7"),
        ("[198.51.100.8]", None, "198.51.100.8"),
        ("host.example [198.51.100.9] (may be forged)", "host.example", "198.51.100.9"),
    ]
)


@settings(max_examples=400, deadline=None)
@given(ADDRESSES, st.sampled_from(["check_rcpt", "check_mail"]), RELAYS, TEXT)
def test_ruleset_reject_fields(
    address: str, ruleset: str, relay: tuple[str, str | None, str], tail: str
) -> None:
    """The argument and the reply echoing it hold whatever the client sent."""
    relay_text, name, addr = relay
    reply = f"550 5.7.1 <{address}>... Relaying denied{tail}."
    line = f"{HEAD}ruleset={ruleset}, arg1=<{address}>, relay={relay_text}, reject={reply}"
    record = parse_line(line)
    assert record is not None
    assert record.kind == "sendmail_ruleset_reject"
    who = record.recipient if ruleset == "check_rcpt" else record.sender
    assert who == address
    assert (record.client_name, record.client_addr, record.relay) == (name, addr, relay_text)
    assert (record.code, record.enhanced, record.reply) == (550, "5.7.1", reply)
    assert dict(record.extra)["arg1"] == f"<{address}>"


@settings(max_examples=400, deadline=None)
@given(
    st.lists(ADDRESSES, min_size=1, max_size=3),
    TEXT.filter(lambda text: ", stat=" not in text),
    st.booleans(),
)
def test_delivery_fields(addresses: list[str], tail: str, with_reply: bool) -> None:
    """Recipients (and a remote reply echoing them) cannot forge the status, dsn or relay.

    The remote server's own text (``tail``) holds no unquoted ``, stat=``: between ``reply=``
    and ``stat=``, both its text, that one is not Sendmail's to tell apart.
    """
    listed = ",".join(f"<{a}>" for a in addresses)
    remote = f"550 5.1.1 <{addresses[0]}>... User unknown{tail}."
    reply = f", reply={remote}" if with_reply else ""
    stat = "User unknown" if with_reply else f"Deferred: {remote}"
    dsn = "5.1.1" if with_reply else "4.0.0"
    line = (
        f"{HEAD}to={listed}, delay=00:00:03, xdelay=00:00:02, mailer=esmtp, pri=61874, "
        f"relay=mail.example.com. [192.0.2.25], dsn={dsn}{reply}, stat={stat}"
    )
    record = parse_line(line)
    assert record is not None
    assert record.kind == "sendmail_delivery"
    assert record.recipient == ",".join(addresses)
    assert (record.relay, record.dsn, record.enhanced) == (
        "mail.example.com. [192.0.2.25]",
        dsn,
        dsn,
    )
    assert record.status == ("bounced" if with_reply else "deferred")
    assert record.reply == (remote if with_reply else stat)
    assert dict(record.extra)["stat"] == stat
    assert record.delay == 3.0
