"""Show one message's journey through the mail log as a timeline.

Give a queue id (8706536B8A) or a Message-ID (with or without <>), then the log files. The
message's record is rebuilt from the logs: the inbound session, every upstream reject, each
delivery attempt per recipient with the remote reply and what it means, bounce notices (the
notice's own record is shown too), and when and how the message left the queue.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime

from smtp_policy.core.events import Event, MessageReply, MessageSummary
from smtp_policy.core.sanitize import json_text, printable

HELP = "show a message's journey (by queue id or Message-ID) as a timeline"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the trace options."""
    parser.add_argument("id", metavar="QUEUE_ID|MESSAGE_ID", help="the message to show")
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="mail logs, oldest first: files (.gz, .bz2, .xz too), pipes, or - for stdin",
    )
    parser.add_argument("--json", action="store_true", help="print the message records as JSON")
    parser.add_argument("--year", type=int, metavar="YYYY", help="year of timestamps without one")


def run(args: argparse.Namespace) -> int:
    """Replay the files, pick the message (and its bounce notices), print."""
    from smtp_policy.adapters.follow.pipeline import input_problems, progress_bar, replay
    from smtp_policy.adapters.follow.tail import Notice
    from smtp_policy.data import default_knowledge

    notices: list[Notice] = []
    progress, done = progress_bar(args.files)
    try:
        events = replay(
            args.files, default_knowledge(), year=args.year, notices=notices, progress=progress
        )
        found = find(args.id, events)
    finally:
        done()
    failed = input_problems(notices, "trace")
    if not found:
        print(f"smtp-policy trace: no message {args.id} in the logs", file=sys.stderr)
        return max(failed, 1)
    for event in found:
        if args.json:
            print(json_text(event.to_dict()))
        else:
            sys.stdout.write(render(event) + "\n")
    return failed


def find(wanted: str, events: Iterable[Event]) -> list[Event]:
    """The message records that match ``wanted``, with their parents and bounce notices."""
    key = wanted.strip().strip("<>")
    chosen: dict[str, Event] = {}
    with_notices: dict[str, Event] = {}
    for event in events:
        record = event.message
        if record is None or event.queue_id is None:
            continue
        parent = record.notification_for
        msgid = (record.message_id or "").strip("<>")
        if key in (event.queue_id, msgid) or (parent is not None and parent in chosen):
            if parent is not None and parent in with_notices:
                chosen.setdefault(parent, with_notices[parent])
            chosen[event.queue_id] = event
        elif record.notifications:
            with_notices[event.queue_id] = event
    return sorted(chosen.values(), key=lambda e: e.ts)


def render(event: Event) -> str:
    """A message record as a readable timeline; what the log said is shown with its control
    characters escaped (:func:`~smtp_policy.core.sanitize.printable`), one line per line."""
    record = event.message
    if record is None:
        raise ValueError(f"not a message record: {event.event} event")
    out = [_headline(event, record), *_envelope(event, record)]
    for when, what in sorted(_moments(event, record), key=lambda m: m[0]):
        stamp = when.astimezone().strftime("%b %d %H:%M:%S")
        out += [f"  {stamp}  {what[0]}", *(f"  {'':15}  {line}" for line in what[1:])]
    if not record.complete:
        out.append(f"  (incomplete: the log {_why_incomplete(record.flushed)})")
    return "\n".join(printable(line) for line in out) + "\n"


def _headline(event: Event, record: MessageSummary) -> str:
    msgid = record.message_id
    return f"Message {event.queue_id}" + (f" <{msgid}>" if msgid else "") + f": {record.status}"


def _envelope(event: Event, record: MessageSummary) -> list[str]:
    sender = event.sender
    parts = [
        "sender unknown"
        if sender is None
        else f"from {sender}"
        if sender
        else "from <> (the null sender)"
    ]
    if record.size is not None:
        parts.append(f"{record.size} bytes")
    if record.nrcpt is not None:
        parts.append(f"{record.nrcpt} recipient(s)")
    lines = ["  " + ", ".join(parts)]
    if event.client_name or event.client_addr:
        helo = f", HELO {event.helo}" if event.helo else ""
        lines.append(f"  client {event.client_name or '?'}[{event.client_addr or '?'}]{helo}")
    if record.notification_for:
        lines.append(f"  a bounce notice about message {record.notification_for}")
    return lines


def _moments(event: Event, record: MessageSummary) -> Iterator[tuple[datetime, list[str]]]:
    if record.connected:
        yield _at(record.connected), ["client connected"]
    if record.received:
        yield _at(record.received), ["first seen in the log"]
    for reply in record.upstream:
        who = f" for {reply.recipient}" if reply.recipient else ""
        yield _at(reply.ts), [f"we replied at {reply.stage or '?'}{who}", *_reply(reply)]
    for attempt in record.attempts:
        yield _at(attempt.ts), ["delivery attempt (no recipient named)", *_reply(attempt)]
    for rcpt in record.recipients:
        for attempt in rcpt.attempts:
            head = f"{rcpt.recipient} attempt {attempt.attempt or '?'}: {attempt.status or '?'}" + (
                f" via {attempt.relay}" if attempt.relay and attempt.relay != "none" else ""
            )
            yield _at(attempt.ts), [head, *_reply(attempt)]
    for notice in record.notifications:
        kind = notice.type or "bounce"
        yield event.ts, [f"{kind} notice sent as message {notice.queue_id or '?'}"]
    yield event.ts, [_ending(record)]


def _ending(record: MessageSummary) -> str:
    status, delay = record.status, record.delay
    if status == "rejected":
        return "refused at the end of data: never queued"
    if not record.complete:
        return f"last seen, still {status}"
    after = f" after {delay} s" if delay is not None else ""
    if status == "discarded":
        return f"left the queue{after}: discarded by the discard transport, not delivered"
    return f"left the queue: {status}{after}"


def _reply(entry: MessageReply) -> list[str]:
    lines = []
    if entry.text:
        lines.append(f"  {entry.text}")
    meaning = " ".join(v for v in (entry.klass, entry.reason) if v)  # "permanent user_unknown"
    if entry.summary or meaning:
        lines.append(f"  = {meaning}: {entry.summary or ''}".rstrip(": "))
    return lines


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _why_incomplete(flushed: str | None) -> str:
    if flushed == "idle":
        return "said nothing more about it for too long"
    return "ends while it is still in the queue"
