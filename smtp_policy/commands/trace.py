"""Show one message's journey through the mail log as a timeline.

Give a queue id (8706536B8A) or a Message-ID (with or without <>), then the log files. The
message's record is rebuilt from the logs: the inbound session, every upstream reject, each
delivery attempt per recipient with the remote reply and what it means, bounce notices (the
notice's own record is shown too), and when and how the message left the queue.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from smtp_policy.core.events import Event

HELP = "show a message's journey (by queue id or Message-ID) as a timeline"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the trace options."""
    parser.add_argument("id", metavar="QUEUE_ID|MESSAGE_ID", help="the message to show")
    parser.add_argument("files", nargs="+", metavar="FILE", help="mail log files, oldest first")
    parser.add_argument("--json", action="store_true", help="print the message records as JSON")
    parser.add_argument("--year", type=int, metavar="YYYY", help="year of timestamps without one")


def run(args: argparse.Namespace) -> int:
    """Replay the files, pick the message (and its bounce notices), print."""
    from smtp_policy.adapters.follow.pipeline import readable, replay
    from smtp_policy.data import default_knowledge

    if not readable(args.files, "trace"):
        return 2
    found = find(args.id, replay(args.files, default_knowledge(), year=args.year))
    if not found:
        print(f"smtp-policy trace: no message {args.id} in the logs", file=sys.stderr)
        return 1
    for event in found:
        if args.json:
            print(json.dumps(event.to_dict(), ensure_ascii=False))
        else:
            sys.stdout.write(render(event) + "\n")
    return 0


def find(wanted: str, events: Iterable[Event]) -> list[Event]:
    """The message records that match ``wanted``, with their parents and bounce notices."""
    key = wanted.strip().strip("<>")
    chosen: dict[str, Event] = {}
    with_notices: dict[str, Event] = {}
    for event in events:
        if event.event != "message" or event.queue_id is None:
            continue
        extra = event.extra
        parent = extra.get("notification_for")
        msgid = str(extra.get("message_id") or "").strip("<>")
        if key in (event.queue_id, msgid) or (parent in chosen and parent is not None):
            if isinstance(parent, str) and parent in with_notices:
                chosen.setdefault(parent, with_notices[parent])
            chosen[event.queue_id] = event
        elif extra.get("notifications"):
            with_notices[event.queue_id] = event
    return sorted(chosen.values(), key=lambda e: e.ts)


def render(event: Event) -> str:
    """A message record as a readable timeline."""
    extra = event.extra
    out = [_headline(event), *_envelope(event)]
    for when, what in sorted(_moments(event), key=lambda m: m[0]):
        stamp = when.astimezone().strftime("%b %d %H:%M:%S")
        out += [f"  {stamp}  {what[0]}", *(f"  {'':15}  {line}" for line in what[1:])]
    if extra.get("complete") is False:
        out.append(f"  (incomplete: the log {_why_incomplete(extra.get('flushed'))})")
    return "\n".join(out) + "\n"


def _headline(event: Event) -> str:
    extra = event.extra
    msgid = extra.get("message_id")
    status = extra.get("status", "?")
    return f"Message {event.queue_id}" + (f" <{msgid}>" if msgid else "") + f": {status}"


def _envelope(event: Event) -> list[str]:
    extra = event.extra
    parts = [f"from {event.sender}" if event.sender is not None else "sender unknown"]
    if extra.get("size") is not None:
        parts.append(f"{extra['size']} bytes")
    if extra.get("nrcpt") is not None:
        parts.append(f"{extra['nrcpt']} recipient(s)")
    lines = ["  " + ", ".join(parts)]
    if event.client_name or event.client_addr:
        helo = f", HELO {event.helo}" if event.helo else ""
        lines.append(f"  client {event.client_name or '?'}[{event.client_addr or '?'}]{helo}")
    if extra.get("notification_for"):
        lines.append(f"  a bounce notice about message {extra['notification_for']}")
    return lines


def _moments(event: Event) -> Iterator[tuple[datetime, list[str]]]:
    extra = event.extra
    if extra.get("connected"):
        yield _at(extra["connected"]), ["client connected"]
    if extra.get("received"):
        yield _at(extra["received"]), ["first seen in the log"]
    for reply in _list(extra.get("upstream")):
        who = f" for {reply['recipient']}" if reply.get("recipient") else ""
        yield _at(reply["ts"]), [f"we replied at {reply.get('stage') or '?'}{who}", *_reply(reply)]
    for attempt in _list(extra.get("attempts")):
        yield _at(attempt["ts"]), ["delivery attempt (no recipient named)", *_reply(attempt)]
    for rcpt in _list(extra.get("recipients")):
        for attempt in _list(rcpt.get("attempts")):
            head = (
                f"{rcpt['recipient']} attempt {attempt.get('attempt', '?')}: "
                f"{attempt.get('status', '?')}"
                + (f" via {attempt['relay']}" if attempt.get("relay") else "")
            )
            yield _at(attempt["ts"]), [head, *_reply(attempt)]
    for notice in _list(extra.get("notifications")):
        kind = notice.get("type") or "bounce"
        yield event.ts, [f"{kind} notice sent as message {notice.get('queue_id', '?')}"]
    yield event.ts, [_ending(extra)]


def _ending(extra: Mapping[str, Any]) -> str:
    status, delay = extra.get("status", "?"), extra.get("delay")
    if status == "rejected":
        return "refused at the end of data: never queued"
    if extra.get("complete") is False:
        return f"last seen, still {status}"
    return f"left the queue: {status}" + (f" after {delay} s" if delay is not None else "")


def _reply(entry: Mapping[str, Any]) -> list[str]:
    lines = []
    if entry.get("text"):
        lines.append(f"  {entry['text']}")
    meaning = " ".join(
        str(entry[k]) for k in ("class", "reason") if entry.get(k)
    )  # e.g. "permanent user_unknown"
    if entry.get("summary") or meaning:
        lines.append(f"  = {meaning}: {entry.get('summary') or ''}".rstrip(": "))
    return lines


def _list(value: object) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _at(value: object) -> datetime:
    return datetime.fromisoformat(str(value))


def _why_incomplete(flushed: object) -> str:
    if flushed == "idle":
        return "said nothing more about it for too long"
    return "ends while it is still in the queue"
