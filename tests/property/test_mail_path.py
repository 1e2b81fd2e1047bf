"""The proxy's MAIL/RCPT path parser on generated addresses and on garbage."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.wire.smtp import MAX_PATH, mail_path

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
#: RFC 5321 qtextSMTP (printable ASCII but '"' and '\') or a quoted pair.
QUOTED_CHAR = st.one_of(
    st.sampled_from([chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\']),
    st.sampled_from([chr(c) for c in range(0x20, 0x7F)]).map(lambda c: "\\" + c),
)
dot_atom = st.lists(st.text(ATEXT, min_size=1, max_size=10), min_size=1, max_size=4).map(".".join)
quoted = st.lists(QUOTED_CHAR, max_size=30).map(lambda chars: '"' + "".join(chars) + '"')
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)
domain = st.lists(label, min_size=1, max_size=4).map(".".join)
path = st.builds(lambda local, dom: f"<{local}@{dom}>", st.one_of(dot_atom, quoted), domain)
parameters = st.sampled_from(["", " NOTIFY=NEVER", " SIZE=100 BODY=8BITMIME", " ORCPT=rfc822;a>b"])


@settings(max_examples=500)
@given(st.sampled_from(["FROM:", "TO:", "from: "]), path, parameters)
def test_round_trip(prefix: str, address: str, params: str) -> None:
    """A generated path, quoted or not, comes back whole from its MAIL/RCPT argument."""
    assert mail_path(f"{prefix}{address}{params}".encode()) == address


@settings(max_examples=500)
@given(st.one_of(st.binary(max_size=1100), st.text(max_size=600).map(str.encode)))
def test_garbage_never_raises(argument: bytes) -> None:
    """Any bytes: a bracketed path of at most MAX_PATH octets inside, or None."""
    found = mail_path(argument)
    if found is not None:
        assert found.startswith("<")
        assert found.endswith(">")
        assert len(found.encode("utf-8", "replace")) <= 3 * (MAX_PATH + 2)
