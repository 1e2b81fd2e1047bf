"""The log parser reads Postfix's trailing attributes, whatever the client put in its addresses,
its HELO, its headers or the reply text Postfix echoes them in (issue 16, item 6)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.maillog.parse import parse_line

HEAD = "Dec  6 14:39:00 mx postfix/smtpd[5787]: NOQUEUE: reject: RCPT from localhost[127.0.0.1]: "
CLEANUP = "Dec  6 14:39:01 mx postfix/cleanup[5790]: 4XyZ1C0D9: reject: header Subject: "
POSTSCREEN = (
    "Dec  6 14:39:02 mx postfix/postscreen[5791]: NOQUEUE: reject: RCPT from [127.0.0.1]:4567: "
)

#: Pieces of the attribute syntax an attacker would try, and plain characters.
FRAGMENTS = st.sampled_from(
    [
        "; from=<",
        "> to=<",
        " proto=ESMTP",
        " helo=<",
        ">",
        "<",
        '"',
        "\\",
        "; ",
        ": ",
        ", ",
        " ",
        "ceo@bank.example",
        "forged",
        "@",
        " from mx[192.0.2.1]",
        "é",
    ]
)
TEXT = st.lists(st.one_of(FRAGMENTS, st.text('abc.-_=;:,<>"\\@ ', max_size=4)), max_size=8).map(
    "".join
)
#: Characters a local part may hold without quotes (RFC 5322 atext and dots).
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+\Z")


def external(local: str, domain: str) -> str:
    """An address as Postfix logs it (``info_log_addr_form = external``)."""
    if not _ATEXT.match(local) or local.startswith(".") or ".." in local or local.endswith("."):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}" if domain else local


def neutered(helo: str) -> str:
    """A HELO as Postfix logs it: specials and controls turned into ``?``."""
    return "".join("?" if c in ' <>()\\";@' or not c.isprintable() else c for c in helo)


DOMAINS = st.sampled_from(["", "external.example", "victim.example", "[192.0.2.7]"])
#: A local part and a domain.
ADDRESSES = st.tuples(TEXT, DOMAINS)


@settings(max_examples=400, deadline=None)
@given(ADDRESSES, ADDRESSES, TEXT, st.sampled_from(["SMTP", "ESMTP"]), TEXT)
def test_smtpd_and_postscreen_attributes(
    sender_parts: tuple[str, str],
    rcpt_parts: tuple[str, str],
    helo: str,
    proto: str,
    extra: str,
) -> None:
    """Whatever the sender, recipient and HELO hold, and a reply echoing them raw."""
    (sender, sdom), (rcpt, rdom) = sender_parts, rcpt_parts
    s, r, h = external(sender, sdom), external(rcpt, rdom), neutered(helo) or "x"
    reply = f"554 5.7.1 <{rcpt}@{rdom}>: Relay access denied{extra}"
    smtpd = f"{HEAD}{reply}; from=<{s}> to=<{r}> proto={proto} helo=<{h}>"
    screen = f"{POSTSCREEN}{reply}; from=<{s}>, to=<{r}>, proto={proto}, helo=<{h}>"
    for line in (smtpd, screen):
        record = parse_line(line)
        assert record is not None
        assert (record.sender, record.recipient, record.proto, record.helo) == (s, r, proto, h)
        assert record.reply == reply


@settings(max_examples=400, deadline=None)
@given(TEXT, ADDRESSES, ADDRESSES, TEXT)
def test_header_check_attributes(
    content: str, sender_parts: tuple[str, str], rcpt_parts: tuple[str, str], helo: str
) -> None:
    """A checked header (up to 200 characters) before the attributes, an admin text after."""
    (sender, sdom), (rcpt, rdom) = sender_parts, rcpt_parts
    s, r, h = external(sender, sdom), external(rcpt, rdom), neutered(helo) or "x"
    line = (
        f"{CLEANUP}{content[:200]} from mx[192.0.2.1]; from=<{s}> to=<{r}> proto=ESMTP "
        f"helo=<{h}>: 5.7.1 Message content rejected"
    )
    record = parse_line(line)
    assert record is not None
    assert (record.sender, record.recipient, record.helo) == (s, r, h)
    assert record.reply == "5.7.1 Message content rejected"
    assert record.client_addr == "192.0.2.1"
