"""The follower's fast paths give what the plain ones give: ``new_event`` (and its siblings) is
``Event(...)``, ``EventWriter.emit_all`` writes what ``emit`` writes, capping takes the same
values as before whatever their type, and the pipeline's batch writes every event in order."""

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


def test_emit_all_writes_what_emit_writes() -> None:
    """Line for line the same JSON (every zone of timestamp, the same second twice)."""
    events = [
        Event(**_reply()),
        Event(**_reply(ts=TS.astimezone(timezone(timedelta(hours=2))))),
        Event(**_reply(ts=TS + timedelta(microseconds=5), recipient=None)),
        Event(event=EventKind.STATS, source=Source.LOG, ts=TS, extra={"lines": 3}),
    ]
    one, many = io.StringIO(), io.StringIO()
    writer = EventWriter(one, line_buffered=False)
    for event in events:
        writer.emit(event)
    EventWriter(many, line_buffered=False).emit_all(events)
    assert many.getvalue() == one.getvalue() and one.getvalue().count("\n") == len(events)
    EventWriter(many, line_buffered=False).emit_all([])
    assert many.getvalue() == one.getvalue()


def test_pipeline_batch_writes_every_event_in_order() -> None:
    """With ``emit_all`` the pipeline writes the same events, in the same order, once each."""
    lines = (SAMPLES / "postfix-3.7-maillog-sample.log").read_text().splitlines()
    kb = default_knowledge()
    one: list[Event] = []
    batches: list[list[Event]] = []
    plain = Pipeline(MessageTracker(kb, year=2026), one.append, parse_line)
    batched = Pipeline(
        MessageTracker(kb, year=2026), one.append, parse_line, emit_all=batches.append
    )
    plain.feed(lines)
    batched.feed(lines)
    assert [e for batch in batches for e in batch] == one and len(one) > 500
    assert len(batches) > 1
    assert all(len(batch) >= WRITE_EVERY for batch in batches[:-1])
    assert batched.events == plain.events


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
