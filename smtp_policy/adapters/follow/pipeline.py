"""The follower's loop: lines from the tails, parsed and tracked, events written, state saved.

``Pipeline`` turns lines into events (and counts them); ``Loop`` drives it from a ``Tailer``
until stopped, saving positions and in-flight messages after every batch; ``replay`` reads
whole files for ``report`` and ``trace``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from types import FrameType
from typing import TYPE_CHECKING

from smtp_policy.adapters.follow.inputs import Progress
from smtp_policy.adapters.follow.state import StateStore, snapshot
from smtp_policy.adapters.follow.tail import Batch, Notice, Tailer
from smtp_policy.core.events import Event, EventKind
from smtp_policy.core.events import Source as EventSource
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.policy import OwnReply
from smtp_policy.emit import EventWriter
from smtp_policy.maillog.tracker import MessageTracker, SeenReply, Tracked

if TYPE_CHECKING:
    from smtp_policy.adapters.follow.metrics import FollowMetrics
    from smtp_policy.maillog.record import LogRecord

#: Notices that mean a source could not be read at all (reported on stderr, too).
_FATAL_NOTICES = frozenset({"missing", "unreadable", "journal_error"})
#: Notices about a whole input that make ``report`` and ``trace`` exit 1.
INPUT_PROBLEMS = frozenset({*_FATAL_NOTICES, "corrupt", "no_mail_lines"})

Parse = Callable[[str], "LogRecord | None"]
#: Writes events given in their JSON form (``Event.to_dict``'s), in order.
WriteForms = Callable[[list[dict[str, object]]], None]
#: With ``emit_forms``, the pipeline hands the writer this many events at a time (at least).
WRITE_EVERY = 256


class StopFlag:
    """Set by SIGTERM/SIGINT: the loop finishes its batch, saves its state and returns.

    SIGHUP sets ``reopen``: the loop reopens the events file between batches (logrotate).
    """

    def __init__(self) -> None:
        self.stopped = False
        self.reopen = False

    def __call__(self) -> bool:
        return self.stopped

    def install(self) -> None:
        """Catch SIGTERM, SIGINT and SIGHUP."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGHUP, self._reopen)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True

    def _reopen(self, signum: int, frame: FrameType | None) -> None:
        self.reopen = True


class Pipeline:
    """Lines to records (the parser) to events (the tracker) to the writer and the metrics."""

    def __init__(
        self,
        tracker: MessageTracker,
        emit: Callable[[Event], None],
        parse: Parse,
        metrics: FollowMetrics | None = None,
        *,
        emit_forms: WriteForms | None = None,
    ) -> None:
        self.tracker = tracker
        self._emit = emit
        self._emit_forms = emit_forms
        self._parse = parse
        self._metrics = metrics
        self.kinds: collections.Counter[str] = collections.Counter()
        self.events: collections.Counter[str] = collections.Counter()
        self.lines = 0
        self.unreadable: set[str] = set()

    @property
    def metrics(self) -> FollowMetrics | None:
        """Where the counts go, if anywhere."""
        return self._metrics

    def batch(self, batch: Batch) -> None:
        """Handle one batch: its notices, then its lines in order."""
        for notice in batch.notices:
            self.notice(notice)
        self.feed(batch.lines)

    def feed(self, lines: Sequence[str]) -> None:
        """Parse and track lines; write every event they complete: with ``emit_forms`` as JSON
        forms built without Event objects (Events only for the metrics), in slices of
        :data:`WRITE_EVERY` or more, what was done written even if the tracker fails midway;
        otherwise one Event at a time through ``emit``."""
        parse, track, emit, emit_forms = (
            self._parse,
            self.tracker.track,
            self._emit,
            self._emit_forms,
        )
        kinds: collections.Counter[str] = collections.Counter()
        names: collections.Counter[str] = collections.Counter()
        observe = self._metrics.observe if self._metrics is not None else None
        observe_record = self._metrics.observe_record if self._metrics is not None else None
        counted = self._metrics.record_kinds if self._metrics is not None else frozenset()
        now = datetime.now(UTC)
        done: list[dict[str, object]] = []
        try:
            for line in lines:
                try:
                    record = parse(line)
                except Exception:  # a parser bug must not stop the follower: count the line
                    kinds["parse_error"] += 1
                    continue
                if record is None:
                    kinds["other"] += 1
                    continue
                kinds[record.kind] += 1
                if observe_record is not None and record.kind in counted:
                    observe_record(record)
                for item in track(record, now):
                    event = None
                    if emit_forms is not None:
                        done.append(item.to_form())
                    else:
                        event = item.to_event()
                        emit(event)
                    names[
                        EventKind.REPLY if isinstance(item, SeenReply) else EventKind.MESSAGE
                    ] += 1
                    if observe is not None:
                        observe(event or item.to_event())
                if emit_forms is not None and len(done) >= WRITE_EVERY:  # memory stays small
                    emit_forms(done)
                    done = []
        finally:
            if emit_forms is not None and done:
                emit_forms(done)
            self.events.update(names)
        self._counted(lines, kinds)

    def _counted(self, lines: Sequence[str], kinds: collections.Counter[str]) -> None:
        self.lines += len(lines)
        self.kinds.update(kinds)
        if self._metrics is not None:
            self._metrics.count_lines(kinds)
            self._metrics.in_flight.set(self.tracker.in_flight)

    def notice(self, notice: Notice) -> None:
        """A source's notice becomes a warning event (and a line on stderr when fatal)."""
        if notice.kind in _FATAL_NOTICES:
            self.unreadable.add(notice.source)
            if self._metrics is not None:
                self._metrics.up.set(0)
            print(f"smtp-policy follow: {notice.message}", file=sys.stderr, flush=True)
        self._emit(
            Event(
                event=EventKind.WARNING,
                source=EventSource.LOG,
                ts=datetime.now(UTC),
                text=notice.message,
                extra={"file": notice.source, "kind": notice.kind},
            )
        )

    def finish(self, tailer: Tailer) -> None:
        """The input is over: partial last lines, then every message still in flight."""
        for batch in tailer.finish():
            self.batch(batch)
        for event in self.tracker.flush_all():
            self._emit(event)
            self.events[event.event] += 1
            if self._metrics is not None:
                self._metrics.observe(event)

    def emit_stats(self, *, final: bool = False) -> None:
        """A stats event: lines by kind, events by name, messages in flight."""
        extra = {
            "final": final,
            "lines": self.lines,
            "kinds": dict(sorted(self.kinds.items())),
            "unknown": self.kinds.get("unknown", 0),
            "other": self.kinds.get("other", 0),
            "events": dict(sorted(self.events.items())),
            "in_flight": self.tracker.in_flight,
        }
        self._emit(
            Event(event=EventKind.STATS, source=EventSource.LOG, ts=datetime.now(UTC), extra=extra)
        )

    def emit_control(self, name: EventKind, extra: Mapping[str, object]) -> None:
        """A started/stopped event."""
        self._emit(Event(event=name, source=EventSource.LOG, ts=datetime.now(UTC), extra=extra))


class Loop:
    """Poll, process, flush, save; a stats event every ``stats_interval`` seconds."""

    def __init__(
        self,
        tailer: Tailer,
        pipeline: Pipeline,
        store: StateStore | None,
        writer: EventWriter,
        *,
        stats_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tailer = tailer
        self.pipeline = pipeline
        self.store = store
        self.writer = writer
        self.stats_interval = stats_interval
        self._clock = clock
        self._next_stats = clock() + stats_interval

    def run(self, stop: StopFlag, *, once: bool) -> None:
        """Until ``stop()`` (or the end of the input with ``once``); reopen the events on SIGHUP."""
        metrics = self.pipeline.metrics
        for round_ in self.tailer.batches(stop, once=once):
            if metrics is not None:
                metrics.last_poll.set_to_current_time()
            for batch in round_:
                self.pipeline.batch(batch)
            if round_:
                self.save()
            if stop.reopen:
                stop.reopen = False
                self.writer.flush()
                self.writer.reopen(EventSource.LOG)
            if self._clock() >= self._next_stats:
                self._next_stats = self._clock() + self.stats_interval
                self.pipeline.emit_stats()
            self.writer.flush()  # what a quiet round wrote (stats) is out too; cheap when empty

    def save(self) -> None:
        """Flush the events, then replace the state file (events first: never lose one)."""
        self.writer.flush()
        if self.store is not None:
            self.store.save(snapshot(self.tailer, self.pipeline.tracker))


def local_timezone() -> tzinfo:
    """This machine's UTC offset now, for syslog timestamps that carry no zone."""
    tz = datetime.now().astimezone().tzinfo
    return tz if tz is not None else UTC


def replay(
    paths: Sequence[str],
    kb: KnowledgeBase,
    *,
    year: int | None = None,
    notices: list[Notice] | None = None,
    own: Iterable[OwnReply] = (),
    tap: Callable[[str, LogRecord], None] | None = None,
    progress: Progress | None = None,
) -> Iterator[Event]:
    """Every event of whole inputs, in order, then the messages still in flight (incomplete):
    :func:`replay_tracked`'s replies and messages made events."""
    for tracked in replay_tracked(
        paths, kb, year=year, notices=notices, own=own, tap=tap, progress=progress
    ):
        yield tracked.to_event()


def replay_tracked(
    paths: Sequence[str],
    kb: KnowledgeBase,
    *,
    year: int | None = None,
    notices: list[Notice] | None = None,
    own: Iterable[OwnReply] = (),
    tap: Callable[[str, LogRecord], None] | None = None,
    progress: Progress | None = None,
    tap_kinds: Collection[str] | None = None,
    keep_replies: bool = True,
) -> Iterator[Tracked]:
    """What the tracker makes of whole inputs (files, ``-``, pipes, compressed archives): each
    reply and each message that left, in order, then the messages still in flight (incomplete;
    ``report`` counts them so, without making events); ``own`` are the replies of the
    configured rules, recognised in the log; ``tap`` is given every line the parser
    recognised, with its record (``report`` reads warnings and TLS so), or only those of
    ``tap_kinds`` when given (the kinds the tap reads: a call per line costs);
    ``keep_replies=False`` makes the message records without their replies (``report``
    counts outcomes only: :class:`~smtp_policy.maillog.tracker.MessageTracker`). Problems go to
    ``notices``: an input that cannot be read, a damaged archive, or one without a single mail
    log line (``no_mail_lines``)."""
    from smtp_policy.adapters.follow.inputs import read_lines
    from smtp_policy.maillog.parse import parse_line

    found = notices if notices is not None else []
    tracker = MessageTracker(kb, tz=local_timezone(), year=year, own=own, keep_replies=keep_replies)
    now = datetime.now(UTC)
    track = tracker.track
    for path in paths:
        before = len(found)
        mail_lines = 0
        for lines in read_lines(path, found, progress):
            for line in lines:
                record = parse_line(line)
                if record is not None:
                    mail_lines += 1
                    if tap is not None and (tap_kinds is None or record.kind in tap_kinds):
                        tap(line, record)
                    tracked = track(record, now)
                    if tracked:  # most lines complete nothing
                        yield from tracked
        unread = any(n.kind in INPUT_PROBLEMS for n in found[before:])
        if not mail_lines and not unread:
            name = "standard input" if path == "-" else path
            found.append(Notice(path, "no_mail_lines", f"{name}: no Postfix or Sendmail log line"))
    yield from tracker.track_end()


def input_problems(notices: Sequence[Notice], command: str) -> int:
    """Say on stderr what went wrong with the inputs; the exit code it calls for: 2 when an
    input could not be read at all, 1 when one was damaged or held no mail log line, else 0."""
    problems = [n for n in notices if n.kind in INPUT_PROBLEMS]
    for notice in problems:
        print(f"smtp-policy {command}: warning: {notice.message}", file=sys.stderr)
    if any(n.kind in _FATAL_NOTICES for n in problems):
        return 2
    return 1 if problems else 0


def progress_bar(paths: Sequence[str]) -> tuple[Progress | None, Callable[[], None]]:
    """A progress line on stderr when it is a terminal (the bytes of the inputs), else none;
    and what closes it."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += os.stat(path).st_size if path != "-" and os.path.isfile(path) else 0
    bar = tqdm(total=total or None, unit="B", unit_scale=True, leave=False, file=sys.stderr)
    return bar.update, bar.close
