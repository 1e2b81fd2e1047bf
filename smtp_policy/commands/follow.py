"""Follow Postfix and Sendmail logs: every reply as an event, one record per message.

Reads log files (rotation-safe), standard input (-) or the systemd journal, and writes one
"reply" event per reply line (upstream: what your MTA answered a client; downstream: what a
remote server answered your MTA), one "message" event when a message leaves the queue, and
"stats" events (lines read, by kind; unknown lines are counted, never fatal).

With --state DIR (default: $STATE_DIRECTORY, as systemd sets it), file positions, the journal
cursor and the messages still in flight are saved atomically after every batch, so a restart
continues exactly where it stopped. SIGTERM and SIGINT finish the batch, save and exit 0;
SIGHUP reopens the --events file (for logrotate's rename-and-signal). With --from-start
--once, whole files are replayed and the command exits at their end; reading only - ends when
standard input does.
Without --log, --journal or -, it follows /var/log/mail.log if it exists, else the journal.
Syslog timestamps carry no year: it is taken from --year, else from today's date.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from smtp_policy.adapters.follow.journal import JournalTail
from smtp_policy.adapters.follow.pipeline import Loop, Pipeline, StopFlag, local_timezone
from smtp_policy.adapters.follow.state import (
    StateStore,
    load_state,
    position_of,
    restore_tracker,
)
from smtp_policy.adapters.follow.tail import FileTail, LineSource, StreamTail, Tailer
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.events import EventKind
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.emit import EventWriter
from smtp_policy.maillog.tracker import DEFAULT_MAX_IDLE

if TYPE_CHECKING:
    from smtp_policy.adapters.follow.metrics import FollowMetrics

HELP = "follow mail logs: every reply as an event, one record per message"

DEFAULT_LOG = "/var/log/mail.log"
DEFAULT_UNIT = "postfix@-.service"


def register(parser: argparse.ArgumentParser) -> None:
    """Add the follow options."""
    parser.add_argument(
        "inputs", nargs="*", metavar="FILE|-", help="log files to follow; - for standard input"
    )
    parser.add_argument(
        "--log", action="append", default=[], metavar="FILE", help="a log file (repeatable)"
    )
    parser.add_argument("--journal", action="store_true", help="read the systemd journal")
    parser.add_argument(
        "--journal-unit",
        default=DEFAULT_UNIT,
        metavar="UNIT",
        help=f"journal unit to read (default {DEFAULT_UNIT}; '' for the whole journal)",
    )
    parser.add_argument(
        "--events", metavar="FILE", help="append JSON events to FILE instead of standard output"
    )
    parser.add_argument(
        "--state",
        metavar="DIR",
        default=os.environ.get("STATE_DIRECTORY") or None,
        help="keep positions and in-flight messages in DIR (default: $STATE_DIRECTORY)",
    )
    parser.add_argument(
        "--from-start", action="store_true", help="read files from their start, not their end"
    )
    parser.add_argument("--once", action="store_true", help="exit at the end of the input")
    parser.add_argument(
        "--year", type=int, metavar="YYYY", help="year of timestamps that carry none"
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics, e.g. 127.0.0.1:9150",
    )
    parser.add_argument(
        "--max-idle",
        type=float,
        default=DEFAULT_MAX_IDLE,
        metavar="SECONDS",
        help="flush messages idle this long (log time) as incomplete (default 10800)",
    )
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="write a stats event this often (default 300)",
    )


def run(args: argparse.Namespace) -> int:
    """Follow until SIGTERM/SIGINT (or, with --once, the end of the input)."""
    from smtp_policy.data import default_knowledge

    kb = default_knowledge()
    store = StateStore(args.state) if args.state else None
    state = load_state(store)
    try:
        writer = EventWriter.open(args.events, line_buffered=False)
    except OSError as exc:
        print(f"smtp-policy follow: cannot write {args.events}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        return _follow(args, kb, store=store, state=state, writer=writer)
    finally:
        writer.close()


def _follow(
    args: argparse.Namespace,
    kb: KnowledgeBase,
    *,
    store: StateStore | None,
    state: Mapping[str, Any],
    writer: EventWriter,
) -> int:
    tz = local_timezone()
    from smtp_policy.maillog.parse import parse_line

    tracker = restore_tracker(state, kb, max_idle=args.max_idle, tz=tz, year=args.year)
    metrics = _metrics(args.metrics_listen, kb)
    pipeline = Pipeline(tracker, writer.emit, parse_line, metrics)
    tailer = Tailer(build_sources(args, state))
    stop = StopFlag()
    stop.install()
    pipeline.emit_control(EventKind.STARTED, {"sources": [s.name for s in tailer.sources]})
    try:
        loop = Loop(tailer, pipeline, store, writer, stats_interval=args.stats_interval)
        loop.run(stop, once=args.once)
        if args.once and store is None:
            pipeline.finish(tailer)
        loop.save()
    finally:
        tailer.close()
    pipeline.emit_stats(final=True)
    pipeline.emit_control(EventKind.STOPPED, {})
    writer.flush()
    return 1 if args.once and pipeline.unreadable else 0


def build_sources(args: argparse.Namespace, state: Mapping[str, Any]) -> list[LineSource]:
    """The sources named on the command line (or the default one), positioned from ``state``."""
    paths = [*args.log, *(p for p in args.inputs if p != "-")]
    stdin = "-" in args.inputs
    journal = args.journal
    if not paths and not stdin and not journal:
        if os.path.exists(DEFAULT_LOG):
            paths = [DEFAULT_LOG]
        else:
            journal = True
    positions = state.get("files", {})
    sources: list[LineSource] = [
        FileTail(path, position=position_of(positions.get(path)), from_start=args.from_start)
        for path in dict.fromkeys(paths)
    ]
    if stdin:
        sources.append(StreamTail(sys.stdin.buffer))
    if journal:
        sources.append(
            JournalTail(
                args.journal_unit or None,
                state.get("journal_cursor"),
                follow=not args.once,
                from_start=args.from_start,
            )
        )
    return sources


def _metrics(listen: str | None, kb: KnowledgeBase) -> FollowMetrics | None:
    if not listen:
        return None
    from smtp_policy.adapters.follow.metrics import FollowMetrics, serve

    metrics = FollowMetrics(kb)
    try:
        serve(metrics, listen)
    except (ValueError, OSError) as exc:
        raise ConfigError([f"--metrics-listen {listen}: {exc}"]) from None
    return metrics
