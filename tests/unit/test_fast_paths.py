"""The follower's fast paths give what the plain ones give: ``new_event`` (and its siblings) is
``Event(...)``, ``EventWriter.emit_forms`` writes what ``emit`` writes, capping takes the same
values as before whatever their type, and the pipeline's forms are its events, in order."""

from __future__ import annotations

import dataclasses
import io
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from smtp_policy.adapters.follow.pipeline import WRITE_EVERY, Pipeline
from smtp_policy.core.events import (
    DETAIL_CAP,
    NAME_CAP,
    REPLY_KEYS,
    Direction,
    Event,
    EventKind,
    MessageReply,
    MessageSummary,
    RecipientSummary,
    Source,
    capped,
    capped_detail,
    new_event,
    new_message_reply,
    new_message_summary,
    new_recipient_summary,
)
from smtp_policy.data import default_knowledge
from smtp_policy.emit import EventWriter
from smtp_policy.maillog.parse import parse_line
from smtp_policy.maillog.tracker import MessageTracker
from tests.helpers import SAMPLES

TS = datetime(2026, 11, 28, 12, 31, 59, tzinfo=UTC)


def _reply(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event": EventKind.REPLY,
        "source": Source.LOG,
        "ts": TS,
        "direction": Direction.DOWNSTREAM,
        "recipient": "<bob@example.org>",
        "code": 550,
        "text": "550 5.1.1 no such user " + "é" * 3,
        "extra": {"status": "bounced", "delays": (0.1, 0.2), "relay": "x" * (DETAIL_CAP + 5)},
    }
    return {**fields, **changes}


def test_new_event_is_an_event() -> None:
    """Same type, same value, same hash, frozen, and the same checks."""
    fast, plain = new_event(**_reply()), Event(**_reply())
    assert type(fast) is Event and fast == plain and fast.to_dict() == plain.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.code = 250  # type: ignore[misc]
    with pytest.raises(ValueError, match="timezone-aware"):
        new_event(**_reply(ts=datetime(2026, 1, 1)))
    with pytest.raises(ValueError, match="shadow"):
        new_event(**_reply(extra={"code": 1}))
    assert new_event(event=EventKind.STATS, source=Source.LOG, ts=TS).extra == {}


def test_fast_summaries_are_the_classes() -> None:
    """MessageReply, RecipientSummary and MessageSummary built fast equal the plain ones."""
    reply = new_message_reply(ts="t", code=250, attempt=1)
    assert type(reply) is MessageReply and reply == MessageReply(ts="t", code=250, attempt=1)
    rcpt = new_recipient_summary(recipient="a@b", attempts=(reply,))
    assert type(rcpt) is RecipientSummary and rcpt == RecipientSummary("a@b", attempts=(reply,))
    summary = new_message_summary(status="delivered", complete=True, received="t", delay=1.0)
    assert type(summary) is MessageSummary
    assert summary == MessageSummary(status="delivered", complete=True, received="t", delay=1.0)


def test_capping_is_unchanged() -> None:
    """Long, non-ASCII, surrogate-escaped strings are capped at any depth; keys too; numbers,
    booleans and None as they are; a tuple is a list."""
    long = "y" * (DETAIL_CAP + 1)
    value = {"k" * (NAME_CAP + 1): [long, ("\udcff", 1, 2.5, True, None)], "ok": "short"}
    out = capped_detail(value)
    assert isinstance(out, dict)
    assert out == {
        capped("k" * (NAME_CAP + 1), NAME_CAP): [
            capped(long, DETAIL_CAP),
            ["\\xff", 1, 2.5, True, None],
        ],
        "ok": "short",
    }
    assert capped_detail(Direction.UPSTREAM) == "upstream"


def test_emit_forms_writes_what_emit_writes() -> None:
    """``emit_forms``, given the events' JSON forms: line for line the same JSON as ``emit``
    (every zone of timestamp, the same second twice); an empty slice writes nothing."""
    events = [
        Event(**_reply()),
        Event(**_reply(ts=TS.astimezone(timezone(timedelta(hours=2))))),
        Event(**_reply(ts=TS + timedelta(microseconds=5), recipient=None)),
        Event(event=EventKind.STATS, source=Source.LOG, ts=TS, extra={"lines": 3}),
    ]
    one, forms = io.StringIO(), io.StringIO()
    writer = EventWriter(one, line_buffered=False)
    for event in events:
        writer.emit(event)
    EventWriter(forms, line_buffered=False).emit_forms([event.to_dict() for event in events])
    assert forms.getvalue() == one.getvalue() and one.getvalue().count("\n") == len(events)
    EventWriter(forms, line_buffered=False).emit_forms([])
    assert forms.getvalue() == one.getvalue()


def test_distinct_messages_forget_finished_ids() -> None:
    """Counted once per message; an id is dropped when its record arrives (memory does not
    grow with the log) and a late line within the memory does not count it again."""
    from smtp_policy.maillog.tally import DistinctMessages

    seen = DistinctMessages(memory=2)
    for qid in ("A", "A", "B"):
        seen.add(qid)
    assert len(seen) == 2
    seen.finish("A")
    seen.finish("C")  # nothing happened to C: not counted
    seen.add("A")  # a late line about A
    assert len(seen) == 2 and seen._open == {"B"}
    for qid in ("B", "D", "E"):
        seen.add(qid)
        seen.finish(qid)
    assert len(seen) == 4 and len(seen._done) == 2


def test_pipeline_forms_write_what_the_events_write() -> None:
    """With ``emit_forms`` the pipeline writes each event's JSON form, built without the
    event: the very dicts (key order too) the events give, in order, in slices."""
    lines = (SAMPLES / "postfix-3.7-maillog-sample.log").read_text().splitlines()
    kb = default_knowledge()
    one: list[Event] = []
    batches: list[list[dict[str, object]]] = []
    plain = Pipeline(MessageTracker(kb, year=2026), one.append, parse_line)
    forms = Pipeline(
        MessageTracker(kb, year=2026), one.append, parse_line, emit_forms=batches.append
    )
    plain.feed(lines)
    forms.feed(lines)
    written = [form for batch in batches for form in batch]
    expected = [event.to_dict() for event in one]
    assert written == expected and len(written) > 500
    assert [list(form) for form in written] == [list(form) for form in expected]
    assert len(batches) > 1
    assert all(len(batch) >= WRITE_EVERY for batch in batches[:-1])
    assert forms.events == plain.events


@pytest.mark.parametrize(
    "line",
    [
        "Nov 28 12:00:01 mx postfix/smtp[7]: 4ABC123DEF: to=<a@é.test>, relay=none, "
        "delay=1.5, delays=0.1/0/0.4/1, dsn=4.4.1, status=deferred (connect to "
        "é.test[192.0.2.1]:25: Connection refused)",
        "Nov 28 12:00:02 mx postfix/smtp[7]: 4ABC123DEF: to=<" + "x" * 600 + "@b>, "
        "orig_to=<é@b>, relay=" + "r" * 5000 + ", delay=2, delays=1/0/0/1, dsn=5.1.1, "
        "status=bounced (host mx[192.0.2.1] said: 550 5.1.1 " + "ü" * 20000 + " (in reply to "
        "RCPT TO command))",
        "Nov 28 12:00:03 mx postfix/smtpd[8]: NOQUEUE: reject: RCPT from "
        + "h" * 700
        + "[192.0.2.9]: 554 5.7.1 <é@x>: Relay access denied; from=<"
        + "s" * 900
        + "@x> to=<é@x> proto=ESMTP helo=<"
        + "ö" * 600
        + ">",
        "Nov 28 12:00:04 mx postfix/qmgr[9]: 4ABC123DEF: removed",
    ],
)
def test_forms_of_long_and_foreign_values(line: str) -> None:
    """Long and non-ASCII values are capped in the forms exactly as the events cap them."""
    tracker = MessageTracker(default_knowledge(), year=2026)
    prelude = "Nov 28 12:00:00 mx postfix/qmgr[9]: 4ABC123DEF: from=<" + "é" * 700 + ">, "
    queued = parse_line(prelude + "size=10, nrcpt=1 (queue active)")
    assert queued is not None
    tracker.track(queued)
    record = parse_line(line)
    assert record is not None
    tracked = tracker.track(record) + tracker.track_end()
    assert tracked
    for item in tracked:
        form, event = item.to_form(), item.to_event().to_dict()
        assert form == event and list(form) == list(event)


def test_message_reply_writes_every_field_in_order() -> None:
    """``MessageReply.to_dict`` names its fields one by one: every field, in the dataclass's
    order (``klass`` as ``class``), a long or non-ASCII text capped, a non-string as the cap
    gives it."""
    values: dict[str, Any] = {f.name: f"v-{f.name}" for f in dataclasses.fields(MessageReply)}
    values.update(code=550, delay=1.5, attempt=2, text="é" * (DETAIL_CAP + 10))
    reply = MessageReply(**values)
    out = reply.to_dict(capped_detail)
    assert tuple(out) == REPLY_KEYS
    assert out["text"] == capped("é" * (DETAIL_CAP + 10), DETAIL_CAP) and out["code"] == 550
    assert reply.to_dict() == {k: values["klass" if k == "class" else k] for k in REPLY_KEYS}
    odd_relay: Any = ["a", ("b",)]  # as a hand-edited state may hold
    odd = dataclasses.replace(reply, relay=odd_relay)
    assert odd.to_dict(capped_detail)["relay"] == ["a", ["b"]]


@pytest.mark.parametrize(
    "status",
    [None, "sent", "deliverable", "discarded", "bounced", "expired", "undeliverable", "deferred"],
)
def test_one_recipients_status_is_the_sets(status: str | None) -> None:
    """A message with one recipient takes a shortcut to its status: the one the rule over the
    set of its recipients' statuses gives."""
    from smtp_policy.maillog.tracker import _Message, _message_status, _Recipient

    msg = _Message("4ABC123DEF", 0.0, 0.0)
    msg.recipients["<a@b.example>"] = _Recipient("<a@b.example>", status=status)
    other = _Recipient("<c@b.example>", status=status)
    two = dataclasses.replace(msg, recipients={**msg.recipients, "<c@b.example>": other})
    assert _message_status(msg, None) == _message_status(two, None)


_QUEUED_REPLIES = [
    "250 2.0.0 Ok: queued as V57VEQCWNT00",
    "250 2.0.0 Ok: queued as R3FN9PEQCZIC",
    "250 2.0.0 Ok: queued as a.b-c_d",
    "250 2.0.0 Ok: queued as ABC/DEF",
    "250 2.0.0 Ok: queued as ABC (more)",
    "250 2.0.0 Ok: queued as ",
    "250 2.0.0 Ok: queued as é9",
    "250 2.0.0 Ok id: queued as ABC123",
    "250 2.0.0 Ok id: queued as XYZ789",
    "250 2.0.0 <a@b> queued as ABC123",
    "250 2.0.0 <c@d> queued as ABC124",
    "250 2.0.0 from [192.0.2.7] queued as ABC125",
    "250 2.0.0 queued as X queued as ABC126",
    "251 2.0.0 Ok: queued as ABC127",
    "250 2.1.5 Ok: queued as ABC128",
    "host mx.example[192.0.2.1] said: 250 2.0.0 Ok: queued as ABC129",
    "250 2.0.0 Ok: " + "x" * 5000 + " queued as ABC130",
]


@pytest.mark.parametrize("order", [1, -1])
def test_queued_as_shortcut_explains_as_the_full_path(order: int) -> None:
    """A reply ending ``queued as <id>`` explained from the text before the id is explained as
    if no other reply had been seen: same class, reason and summary, whatever came first."""
    kb = default_knowledge()
    shared = MessageTracker(kb, year=2026)
    replies = _QUEUED_REPLIES[::order] * 2
    for number, reply in enumerate(replies):
        code = reply.split(" ", 1)[0] if reply[0].isdigit() else reply.split(": ")[1][:3]
        line = (
            f"Nov 28 12:31:59 vm postfix/smtp[19347]: B935436B{number:02X}: to=<u@remote.test>, "
            f"relay=127.0.0.1[127.0.0.1]:2525, delay=0.06, delays=0.05/0.01/0/0, "
            f"dsn=2.0.0, status=sent ({reply})"
        )
        record = parse_line(line)
        assert record is not None and record.code == int(code)
        fresh = MessageTracker(kb, year=2026).track(record)
        seen = shared.track(record)
        assert [t.to_event().to_dict() for t in seen] == [t.to_event().to_dict() for t in fresh]
        assert [getattr(t, "known", None) for t in seen] == [
            getattr(t, "known", None) for t in fresh
        ]
