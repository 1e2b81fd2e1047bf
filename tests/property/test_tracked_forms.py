"""The follower's JSON forms (``to_form``, built without an Event) are the events' own dicts,
key order included, whatever the client, the remote server or the log put in the fields."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from smtp_policy.data import default_knowledge
from smtp_policy.maillog.parse import parse_line
from smtp_policy.maillog.tracker import MessageTracker

KB = default_knowledge()

#: Characters a hostile value is made of: the log's own punctuation, non-ASCII letters,
#: controls the log shows escaped, and plain ones (decoded text: no surrogates reach here).
CHARS = st.sampled_from(
    [*"ab@.<>=,;:[]() \\\"'", "é", "ü", "€", "\U0001f600", "\x7f", "\x85", "\u2028", "#"]
)
#: A value, short or long enough to meet every cap (names 512, details 4096).
VALUE = st.text(alphabet=CHARS, min_size=1, max_size=30) | st.builds(
    lambda s, n: s * n, st.text(alphabet=CHARS, min_size=1, max_size=6), st.integers(1, 1500)
)
STATUS = st.sampled_from(["sent", "deferred", "bounced", "expired"])
CODE = st.sampled_from(["250 2.0.0 Ok", "450 4.7.1", "550 5.1.1", "421 4.3.0", "554"])


@settings(max_examples=300, deadline=None)
@given(
    sender=VALUE,
    recipient=VALUE,
    relay=VALUE,
    reply=VALUE,
    helo=VALUE,
    client=VALUE,
    status=STATUS,
    code=CODE,
)
def test_forms_equal_the_events_dicts(
    *,
    sender: str,
    recipient: str,
    relay: str,
    reply: str,
    helo: str,
    client: str,
    status: str,
    code: str,
) -> None:
    head = "Dec  6 14:39:0{n} mx postfix/{p}[{pid}]: "
    lines = [
        head.format(n=0, p="smtpd", pid=7) + f"NOQUEUE: reject: RCPT from {client}[192.0.2.9]: "
        f"{code} <{recipient}>: {reply}; from=<{sender}> to=<{recipient}> proto=ESMTP "
        f"helo=<{helo}>",
        head.format(n=1, p="smtpd", pid=7) + f"4ABC123DEF: client={client}[192.0.2.9]",
        head.format(n=2, p="qmgr", pid=9) + f"4ABC123DEF: from=<{sender}>, size=10, nrcpt=1 "
        "(queue active)",
        head.format(n=3, p="smtp", pid=8) + f"4ABC123DEF: to=<{recipient}>, relay={relay}, "
        f"delay=1.5, delays=0.1/0/0.4/1, dsn=5.1.1, status={status} (host {relay} said: "
        f"{code} {reply} (in reply to RCPT TO command))",
        head.format(n=4, p="qmgr", pid=9) + "4ABC123DEF: removed",
    ]
    tracker = MessageTracker(KB, year=2026)
    tracked = []
    for line in lines:
        record = parse_line(line)
        if record is not None:
            tracked += tracker.track(record)
    tracked += tracker.track_end()
    assume(tracked)  # a line the parser refuses gives nothing to compare
    for item in tracked:
        form, event = item.to_form(), item.to_event().to_dict()
        assert form == event
        assert list(form) == list(event)
