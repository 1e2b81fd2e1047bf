"""The message tracker: reply events per line, one message record per message."""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtp_policy.core.events import Event, MessageSummary
from smtp_policy.core.explain import explain_text
from smtp_policy.data import default_knowledge
from smtp_policy.maillog.parse import parse_line
from smtp_policy.maillog.tracker import REPLY_KINDS, MessageTracker
from tests.helpers import SAMPLES

SAMPLE = SAMPLES / "postfix-3.7-maillog-sample.log"


def track(lines: Iterable[str], tracker: MessageTracker | None = None) -> list[Event]:
    """Every event of ``lines``, with a fresh tracker unless one is given."""
    tracker = tracker or MessageTracker(default_knowledge(), year=2026)
    records = (parse_line(line) for line in lines)
    return [event for record in records if record is not None for event in tracker.feed(record)]


def info(event: Event) -> MessageSummary:
    """A message event's record."""
    assert event.message is not None
    return event.message


def messages(events: Iterable[Event]) -> dict[str, Event]:
    """Message records by queue id (a duplicate fails the test)."""
    out: dict[str, Event] = {}
    for event in events:
        if event.event == "message":
            assert event.queue_id not in out, f"two records for {event.queue_id}"
            assert event.queue_id is not None
            out[event.queue_id] = event
    return out


@pytest.fixture(name="sample", scope="module")
def _sample() -> list[str]:
    return SAMPLE.read_text(encoding="utf-8").splitlines()


@pytest.fixture(name="sample_events", scope="module")
def _sample_events(sample: list[str]) -> list[Event]:
    return track(sample)


def test_every_removed_queue_id_gets_exactly_one_message_record(
    sample: list[str], sample_events: list[Event]
) -> None:
    """Each queue id with a "removed" line has one complete message record, no more."""
    removed = {m[1] for line in sample if (m := re.search(r": ([0-9A-F]+): removed$", line))}
    records = messages(sample_events)
    complete = {q for q, e in records.items() if info(e).complete}
    assert removed <= complete
    assert len(removed) == 344


def test_one_reply_event_per_reply_line(sample: list[str], sample_events: list[Event]) -> None:
    """Every line the parser calls a reply gives one reply event, in order, from the log."""
    kinds = [r.kind for line in sample if (r := parse_line(line)) is not None]
    replies = [e for e in sample_events if e.event == "reply"]
    assert len(replies) == sum(k in REPLY_KINDS for k in kinds)
    assert all(e.source.value == "log" and e.direction is not None for e in replies)
    assert [e.extra["kind"] for e in replies] == [k for k in kinds if k in REPLY_KINDS]


def test_masked_cache_explains_like_the_real_text(sample_events: list[Event]) -> None:
    """Masking addresses and ids for the cache never changes the class or the reason."""
    kb = default_knowledge()
    for event in sample_events:
        if event.event == "reply" and event.text and event.code is not None:
            real = explain_text(event.text, kb).classification
            assert (event.klass, event.reason) == (
                real.klass.value,
                real.reason.value if real.reason else None,
            ), event.text


DEFER_THEN_SENT = """\
Nov 28 12:32:15 vm postfix/smtpd[19364]: 3A1B536D7D: client=unknown[127.0.0.1]
Nov 28 12:32:15 vm postfix/cleanup[19346]: 3A1B536D7D: message-id=<20261128123215.3A1B536D7D@vm>
Nov 28 12:32:15 vm postfix/qmgr[19298]: 3A1B536D7D: from=<sender369@sender.test>, size=398, nrcpt=2 (queue active)
Nov 28 12:32:15 vm postfix/smtp[19381]: 3A1B536D7D: to=<defer3690@remote.test>, relay=127.0.0.1[127.0.0.1]:2525, delay=0.05, delays=0.04/0/0/0, dsn=4.2.0, status=deferred (host 127.0.0.1[127.0.0.1] said: 450 4.2.0 <defer3690@remote.test>: Recipient address rejected: Greylisted, see https://postgrey.example.test/ (in reply to RCPT TO command))
Nov 28 12:32:15 vm postfix/smtp[19381]: 3A1B536D7D: to=<user3692@remote.test>, relay=127.0.0.1[127.0.0.1]:2525, delay=0.05, delays=0.04/0/0/0, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 1VZ8QJ0D3Q1W)
Nov 28 12:38:55 vm postfix/qmgr[19298]: 3A1B536D7D: from=<sender369@sender.test>, size=398, nrcpt=2 (queue active)
Nov 28 12:38:55 vm postfix/smtp[19381]: 3A1B536D7D: to=<defer3690@remote.test>, relay=127.0.0.1[127.0.0.1]:2525, delay=400, delays=399.9/0/0/0.05, dsn=4.2.0, status=deferred (host 127.0.0.1[127.0.0.1] said: 450 4.2.0 <defer3690@remote.test>: Recipient address rejected: Greylisted, see https://postgrey.example.test/ (in reply to RCPT TO command))
Nov 28 12:55:35 vm postfix/qmgr[19298]: 3A1B536D7D: from=<sender369@sender.test>, size=398, nrcpt=2 (queue active)
Nov 28 12:55:35 vm postfix/smtp[19381]: 3A1B536D7D: to=<defer3690@remote.test>, relay=127.0.0.1[127.0.0.1]:2525, delay=1400, delays=1399.9/0/0/0.05, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 7QK1VZ0D3Q1W)
Nov 28 12:55:35 vm postfix/qmgr[19298]: 3A1B536D7D: removed
"""


def test_deferral_then_success() -> None:
    """Deferred twice, then delivered: one record, every attempt kept and numbered in order."""
    events = track(DEFER_THEN_SENT.splitlines())
    (record,) = messages(events).values()
    assert info(record).status == "delivered"
    assert info(record).delay == 1400
    greylisted, other = info(record).recipients
    assert [a.status for a in greylisted.attempts] == ["deferred", "deferred", "sent"]
    assert [a.attempt for a in greylisted.attempts] == [1, 2, 3]
    assert greylisted.attempts[0].reason == "greylisting"
    assert greylisted.status == "sent" and other.status == "sent"
    replies = [e for e in events if e.event == "reply"]
    assert [e.extra["attempt"] for e in replies] == [1, 1, 2, 3]


def test_deferred_messages_stay_in_the_queue(sample: list[str]) -> None:
    """A message with a deferred recipient and no "removed" line is still in flight."""
    tracker = MessageTracker(default_knowledge(), year=2026)
    events = track(sample, tracker)
    deferred = {
        e.queue_id for e in events if e.event == "reply" and e.extra.get("status") == "deferred"
    }
    recorded = set(messages(events))
    assert deferred and not deferred & recorded
    assert tracker.in_flight >= len(deferred)


def test_bounce_with_its_notice(sample_events: list[Event]) -> None:
    """A bounced message links to its non-delivery notice, and the notice back to it."""
    records = messages(sample_events)
    bounced = records["0895436B76"]
    assert info(bounced).status == "bounced"
    assert bounced.reason == "mailbox_full"
    assert bounced.code == 552
    assert bounced.recipient == "full70@remote.test"
    assert [n.queue_id for n in info(bounced).notifications] == ["15AC736B7A"]
    notice = records["15AC736B7A"]
    assert info(notice).notification_for == "0895436B76"
    assert notice.sender == ""
    assert info(notice).origin == "notice"
    assert info(notice).status == "discarded"  # the sample's sender.test goes to discard:


def test_reply_events_carry_the_message_context(sample_events: list[Event]) -> None:
    """A delivery reply names the client and sender that the earlier lines told."""
    reply = next(
        e
        for e in sample_events
        if e.event == "reply" and e.queue_id == "0895436B76" and e.extra["kind"] == "delivery"
    )
    assert reply.direction is not None and reply.direction.value == "downstream"
    assert reply.stage == "rcpt"
    assert reply.sender == "sender7@sender.test"
    assert reply.client_addr == "127.0.0.1"
    assert reply.extra["attempt"] == 1
    assert reply.reason == "mailbox_full"


def test_end_of_message_reject_ends_the_message(sample_events: list[Event]) -> None:
    """A milter reject at END-OF-MESSAGE: the message was never queued; one rejected record."""
    record = messages(sample_events)["408E336B80"]
    assert info(record).status == "rejected"
    assert info(record).complete is True
    assert record.helo == "client6.example.net"
    assert info(record).upstream[0].stage == "eom"


EXPIRED = """\
Nov 28 10:00:00 vm postfix/smtpd[100]: connect from mail.example.org[192.0.2.7]
Nov 28 10:00:00 vm postfix/smtpd[100]: 1A2B3C4D5E: client=mail.example.org[192.0.2.7]
Nov 28 10:00:00 vm postfix/cleanup[101]: 1A2B3C4D5E: message-id=<x1@example.org>
Nov 28 10:00:01 vm postfix/qmgr[102]: 1A2B3C4D5E: from=<alice@example.org>, size=1234, nrcpt=1 (queue active)
Nov 28 10:00:01 vm postfix/smtpd[100]: disconnect from mail.example.org[192.0.2.7] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5
Nov 28 10:00:31 vm postfix/smtp[103]: 1A2B3C4D5E: to=<bob@down.example>, relay=none, delay=30, delays=0.1/0/30/0, dsn=4.4.1, status=deferred (connect to mx.down.example[198.51.100.9]:25: Connection timed out)
Nov 28 11:06:31 vm postfix/smtp[104]: 1A2B3C4D5E: to=<bob@down.example>, relay=mx.down.example[198.51.100.9]:25, delay=3990, delays=3960/0/30/0, dsn=4.7.0, status=deferred (host mx.down.example[198.51.100.9] said: 421 4.7.0 Try again later (in reply to MAIL FROM command))
Dec  3 10:00:02 vm postfix/qmgr[102]: 1A2B3C4D5E: from=<alice@example.org>, status=expired, returned to sender
Dec  3 10:00:02 vm postfix/cleanup[101]: 9F8E7D6C5B: message-id=<20261203100002.9F8E7D6C5B@vm>
Dec  3 10:00:02 vm postfix/bounce[105]: 1A2B3C4D5E: sender non-delivery notification: 9F8E7D6C5B
Dec  3 10:00:02 vm postfix/qmgr[102]: 1A2B3C4D5E: removed
"""


def test_expired_message() -> None:
    """Deferred until it expired: one record, status expired, every attempt kept."""
    events = track(EXPIRED.splitlines())
    record = messages(events)["1A2B3C4D5E"]
    assert info(record).status == "expired"
    assert info(record).complete is True
    (rcpt,) = info(record).recipients
    assert rcpt.status == "expired"
    assert [a.status for a in rcpt.attempts] == ["deferred", "deferred", "expired"]
    assert record.helo is None or isinstance(record.helo, str)
    assert record.client_name == "mail.example.org"
    assert info(record).message_id == "x1@example.org"
    assert info(record).size == 1234
    assert [n.queue_id for n in info(record).notifications] == ["9F8E7D6C5B"]


def test_idle_messages_are_flushed_as_incomplete() -> None:
    """An entry idle longer than max_idle (log time) comes out as an incomplete record."""
    tracker = MessageTracker(default_knowledge(), max_idle=3600, year=2026)
    later = "Nov 28 13:00:00 vm postfix/smtpd[200]: connect from other.example[192.0.2.8]"
    lines = [*EXPIRED.splitlines()[:4], later]
    events = track(lines, tracker)
    record = messages(events)["1A2B3C4D5E"]
    assert info(record).status == "incomplete"
    assert info(record).complete is False
    assert tracker.in_flight == 0


def test_flush_all_at_the_end_of_input() -> None:
    """At the end of a replay, messages still queued are incomplete records."""
    tracker = MessageTracker(default_knowledge(), year=2026)
    track(EXPIRED.splitlines()[:6], tracker)
    assert tracker.in_flight == 1
    (record,) = tracker.flush_all()
    assert info(record).status == "incomplete"
    assert info(record).flushed == "end"


@pytest.mark.parametrize("cut", [1, 700, 1500, 2999])
def test_state_round_trip_changes_nothing(sample: list[str], cut: int) -> None:
    """Stopping anywhere, saving to JSON and resuming gives exactly the same events."""
    whole = [e.to_dict() for e in track(sample)]
    first = MessageTracker(default_knowledge(), year=2026)
    events = track(sample[:cut], first)
    state = json.loads(json.dumps(first.to_json()))
    second = MessageTracker.from_json(state, default_knowledge())
    events += track(sample[cut:], second)
    assert [e.to_dict() for e in events] == whole


def test_unknown_state_version_is_refused() -> None:
    """A state file from another version is not silently misread."""
    with pytest.raises(ValueError, match="version"):
        MessageTracker.from_json({"version": 99}, default_knowledge())


def test_memory_is_bounded_by_finished_messages(sample: list[str]) -> None:
    """After the sample, only messages with a deferred recipient are in flight."""
    tracker = MessageTracker(default_knowledge(), year=2026)
    events = track(sample, tracker)
    finished = len(messages(events))
    assert finished > 300
    deferred = {e.queue_id for e in events if e.extra.get("status") == "deferred"}
    assert tracker.in_flight == len(deferred)
    counts = collections.Counter(info(e).status for e in events if e.event == "message")
    assert counts["delivered"] > counts["bounced"] > 0


_LINES = SAMPLE.read_text(encoding="utf-8").splitlines()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=300),
            st.tuples(st.sampled_from(_LINES), st.integers(0, 400)).map(lambda t: t[0][: t[1]]),
            st.sampled_from(_LINES),
        ),
        max_size=40,
    )
)
def test_random_and_truncated_lines_never_raise(lines: list[str]) -> None:
    """Garbage, truncated and shuffled real lines go through the tracker without an error."""
    tracker = MessageTracker(default_knowledge(), max_idle=60, year=2026)
    for event in track(lines, tracker):
        assert event.ts.tzinfo is not None
        json.dumps(event.to_dict())
    tracker.flush_all()
    assert tracker.in_flight == 0


def test_lines_after_an_idle_flush_start_a_new_record() -> None:
    """A message flushed as idle that shows up again is tracked again (not silently dropped)."""
    tracker = MessageTracker(default_knowledge(), max_idle=3600, year=2026)
    later = "Nov 28 13:00:00 vm postfix/smtpd[200]: connect from other.example[192.0.2.8]"
    first = messages(track([*EXPIRED.splitlines()[:4], later], tracker))
    assert info(first["1A2B3C4D5E"]).complete is False
    again = [
        "Nov 28 13:05:00 vm postfix/smtp[104]: 1A2B3C4D5E: to=<bob@down.example>, "
        "relay=mx.down.example[198.51.100.9]:25, delay=18300, delays=18299/0/0.5/0.5, "
        "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 9QK1VZ0D3Q1W)",
        "Nov 28 13:05:00 vm postfix/qmgr[102]: 1A2B3C4D5E: removed",
        "Nov 28 13:05:01 vm postfix/qmgr[102]: 1A2B3C4D5E: removed",
    ]
    second = messages(track(again, tracker))
    assert info(second["1A2B3C4D5E"]).status == "delivered"
    assert info(second["1A2B3C4D5E"]).complete is True


@pytest.mark.parametrize(
    ("code", "body", "form", "command"),
    [
        (
            550,
            "550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown",
            "smtp",
            None,
        ),
        (450, "450-4.2.0 Greylisted 450 4.2.0 try again later", "smtp", None),
        (554, "554 Service unavailable; Client host [192.0.2.1] blocked", "smtp", None),
        (552, "552 5.2.2 <full@remote.test>: Mailbox full", "postfix", "RCPT TO"),
        (421, "421 Too many connections", "postfix", "CONNECT"),
    ],
)
def test_reply_from_parts_reads_like_the_parser(
    code: int, body: str, form: str, command: str | None
) -> None:
    """A reply the log parser took apart is read exactly as parse_reply reads the whole text."""
    from smtp_policy.core.model import ReplyForm
    from smtp_policy.core.parse import parse_reply, reply_from_parts

    kb = default_knowledge()
    whole = (
        body
        if form == "smtp"
        else f"host mx[192.0.2.9] said: {body} (in reply to {command} command)"
    )
    if command == "CONNECT":
        whole = f"host mx[192.0.2.9] refused to talk to me: {body}"
    expected = parse_reply(whole, kb.codebook)
    got = reply_from_parts(
        whole,
        code,
        body,
        form=ReplyForm(form),
        command=expected.command,
        remote=expected.remote,
        codes=kb.codebook,
    )
    assert got is not None
    assert (got.code, got.enhanced, got.text, got.form, got.command, got.lines) == (
        expected.code,
        expected.enhanced,
        expected.text,
        expected.form,
        expected.command,
        expected.lines,
    )


@pytest.mark.parametrize(
    "body", ["550", "stat=Deferred: 451 x", "550 5.1.1 host mx[1.2.3.4] said: 550 x", "a\n550 b"]
)
def test_reply_from_parts_leaves_wrapped_texts_to_the_parser(body: str) -> None:
    """A bare code, a wrapping or several lines: None, the whole text must be parsed."""
    from smtp_policy.core.parse import reply_from_parts

    assert reply_from_parts(body, 550, body) is None
