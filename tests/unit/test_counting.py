"""Counting right, once: logs built so that the truth is known, and the shared sample.

Each synthetic log is written line by line as Postfix writes it, so the expected totals follow
from how it was built (N received, M deferrals each with a ``connect to`` line, K bounces each
generating a notice...). The sample's numbers are pflogsumm's on the same file (see
tests/integration/test_report_inputs.py, which runs pflogsumm), plus the milter RCPT rejects
pflogsumm does not count.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from smtp_policy.core.events import Event
from smtp_policy.data import default_knowledge
from smtp_policy.maillog.parse import parse_line
from smtp_policy.maillog.tally import Tally
from smtp_policy.maillog.tracker import MessageTracker

SAMPLE = Path(__file__).parent.parent / "samples" / "postfix-3.7-maillog-sample.log"
#: pflogsumm 1.1.5 on the sample: received 373, delivered 372, deferred 62 (63 deferrals),
#: bounced 68, rejected 61; the sample also has 14 milter RCPT rejects pflogsumm misses.
SAMPLE_TOTALS = {
    "received": 373,
    "generated": 57,
    "delivered": 372,
    "discarded_delivered": 82,
    "deferred": 62,
    "deferrals": 63,
    "bounced": 68,
    "rejected": 61 + 14,
    "reject_warnings": 0,
    "held": 0,
    "discarded": 0,
    "expired": 0,
}


def _lines(
    n_sent: int, n_deferred: int, n_bounced: int, n_rejected: int, n_milter: int
) -> list[str]:
    """A log with known truth; every message has its own queue id and its own second."""
    out: list[str] = []
    second = 0

    def at() -> str:
        return f"Nov 28 12:{second // 60:02d}:{second % 60:02d} mx"

    def received(qid: str, rcpt: str) -> None:
        out.extend(
            [
                f"{at()} postfix/smtpd[10]: connect from c.example[192.0.2.1]",
                f"{at()} postfix/smtpd[10]: {qid}: client=c.example[192.0.2.1]",
                f"{at()} postfix/cleanup[11]: {qid}: message-id=<{qid}@example>",
                f"{at()} postfix/qmgr[12]: {qid}: from=<s@example.org>, size=1000, nrcpt=1 "
                "(queue active)",
            ]
        )

    for i in range(n_sent):
        second += 1
        qid = f"AA{i:05X}"
        received(qid, f"u{i}@remote.test")
        out += [
            f"{at()} postfix/smtp[13]: {qid}: to=<u{i}@remote.test>, relay=mx.remote.test"
            "[198.51.100.1]:25, delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
            f"{at()} postfix/qmgr[12]: {qid}: removed",
        ]
    for i in range(n_deferred):  # one deferral each: a connect line, then the deferral
        second += 1
        qid = f"BB{i:05X}"
        received(qid, f"d{i}@down.test")
        out += [
            f"{at()} postfix/smtp[13]: connect to mx.down.test[198.51.100.2]:25: Connection refused",
            f"{at()} postfix/smtp[13]: {qid}: to=<d{i}@down.test>, relay=none, delay=0.1, "
            "delays=0/0/0/0, dsn=4.4.1, status=deferred (connect to mx.down.test"
            "[198.51.100.2]:25: Connection refused)",
        ]
    for i in range(n_bounced):  # each bounce generates a notice, discarded locally
        second += 1
        qid, notice = f"CC{i:05X}", f"DD{i:05X}"
        received(qid, f"b{i}@remote.test")
        out += [
            f"{at()} postfix/smtp[13]: {qid}: to=<b{i}@remote.test>, relay=mx.remote.test"
            "[198.51.100.1]:25, delay=0.1, delays=0/0/0/0.1, dsn=5.1.1, status=bounced (host "
            "mx.remote.test[198.51.100.1] said: 550 5.1.1 User unknown (in reply to RCPT TO "
            "command))",
            f"{at()} postfix/cleanup[11]: {notice}: message-id=<{notice}@mx>",
            f"{at()} postfix/bounce[14]: {qid}: sender non-delivery notification: {notice}",
            f"{at()} postfix/qmgr[12]: {qid}: removed",
            f"{at()} postfix/qmgr[12]: {notice}: from=<>, size=2000, nrcpt=1 (queue active)",
            f"{at()} postfix/discard[15]: {notice}: to=<s@example.org>, relay=none, delay=0, "
            "delays=0/0/0/0, dsn=2.0.0, status=sent (example.org)",
            f"{at()} postfix/qmgr[12]: {notice}: removed",
        ]
    for i in range(n_rejected):
        second += 1
        out.append(
            f"{at()} postfix/smtpd[10]: NOQUEUE: reject: RCPT from c.example[192.0.2.1]: 550 5.1.1 "
            f"<n{i}@example.org>: Recipient address rejected: User unknown in local recipient "
            f"table; from=<s@example.org> to=<n{i}@example.org> proto=ESMTP helo=<c.example>"
        )
    for i in range(n_milter):
        second += 1
        out.append(
            f"{at()} postfix/smtpd[10]: NOQUEUE: milter-reject: RCPT from c.example[192.0.2.1]: "
            f"550 5.7.1 Recipient rejected by policy; from=<s@example.org> to=<m{i}@example.org> "
            "proto=ESMTP helo=<c.example>"
        )
    return out


def _events(lines: list[str]) -> Iterator[Event]:
    tracker = MessageTracker(default_knowledge(), year=2026)
    now = datetime(2026, 11, 28, 13, tzinfo=UTC)
    for line in lines:
        record = parse_line(line)
        if record is not None:
            yield from tracker.feed(record, now)
    yield from tracker.flush_all()


def _totals(lines: list[str]) -> dict[str, int]:
    tally = Tally()
    for event in _events(lines):
        tally.add(event)
    return tally.totals()


def test_known_truth_is_counted_once() -> None:
    """N sent, M deferred (each with a connect line), K bounced (K notices), R + P rejects."""
    n, m, k, r, p = 7, 5, 3, 4, 2
    totals = _totals(_lines(n, m, k, r, p))
    assert totals["received"] == n + m + k
    assert totals["generated"] == k
    assert totals["delivered"] == n + k  # the notices went to the discard transport
    assert totals["discarded_delivered"] == k
    assert totals["deferred"] == m
    assert totals["deferrals"] == m
    assert totals["bounced"] == k
    assert totals["rejected"] == r + p  # milter RCPT rejects count
    assert totals["expired"] == 0


def test_a_connect_failure_is_one_reason_not_two() -> None:
    """The ``connect to`` line is a detail of the deferral: its reply event says so."""
    events = [e for e in _events(_lines(0, 3, 0, 0, 0)) if e.event == "reply"]
    failures = [e for e in events if e.reason == "network_error"]
    assert len(failures) == 6
    assert [bool(e.extra.get("detail")) for e in failures] == [True, False] * 3
    counted = [e for e in failures if not e.extra.get("detail")]
    assert {e.extra["status"] for e in counted} == {"deferred"}


def test_notices_are_generated_and_discard_is_named() -> None:
    """A notice's record says it was generated; a discard-transport delivery is 'discarded'."""
    records = {e.queue_id: e for e in _events(_lines(0, 0, 1, 0, 0)) if e.event == "message"}
    notice = records["DD00000"].message
    assert notice is not None
    assert notice.origin == "notice"
    assert notice.notification_for == "CC00000"
    assert notice.status == "discarded"
    assert notice.recipients[0].status == "discarded"
    original = records["CC00000"].message
    assert original is not None and original.origin == "smtpd"
    assert records["CC00000"].sender == "s@example.org"  # no angle brackets
    assert records["DD00000"].sender == ""  # the null sender


def test_one_action_vocabulary() -> None:
    """``milter-reject`` is action ``reject`` by ``milter``; smtpd's own is ``reject`` by ``mta``."""
    replies = [e for e in _events(_lines(0, 0, 0, 1, 1)) if e.event == "reply"]
    assert [(e.extra["action"], e.extra.get("by")) for e in replies] == [
        ("reject", "mta"),
        ("reject", "milter"),
    ]
    assert replies[1].recipient == "m0@example.org"


def test_the_sample_matches_pflogsumm() -> None:
    """The shared sample: pflogsumm's totals, milter RCPT rejects on top."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    assert _totals(lines) == SAMPLE_TOTALS
