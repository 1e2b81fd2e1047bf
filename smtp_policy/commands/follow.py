"""Follow Postfix and Sendmail logs: every reply as an event, one record per message.

Reads log files (rotation-safe), standard input (-) or the systemd journal, and writes one
"reply" event per reply line (upstream: what your MTA answered a client; downstream: what a
remote server answered your MTA), one "message" event when a message leaves the queue, and
"stats" events (lines read, by kind; unknown lines are counted, never fatal).

Options override the configuration ([follow] logs, journal, journal_unit and state_dir,
[events] output, [metrics] listen: see config/config.toml). The sources are the files, - or
--journal named on the command line; without any, those of [follow]; without those,
/var/log/mail.log if it exists, else the journal. With --state DIR, file positions, the journal
cursor and the messages still in flight are saved atomically after every batch, so a restart
continues exactly where it stopped; without it, [follow] state_dir keeps the state of the
[follow] sources, and $STATE_DIRECTORY (as systemd sets it) that of the others.
With --metrics-listen (or [metrics] listen) it serves Prometheus metrics (docs/metrics.md).
SIGTERM and SIGINT finish the batch, save and exit 0; SIGHUP reopens the events file (for
logrotate's rename-and-signal); other configuration changes take a restart. With --from-start
--once, whole files are replayed and the command exits at their end (exit 1 if one cannot be
read); --once without --from-start needs --state (it continues from the saved positions), else
it is a usage error, as it would read nothing; reading only - ends when standard input does.
Syslog timestamps carry no year: it is taken from --year, else from today's date.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
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
from smtp_policy.commands._options import add_config_option
from smtp_policy.config.listen import LOOPBACK, ListenAddress
from smtp_policy.config.model import MetricsConfig
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.events import EventKind
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.policy import OwnReply, own_replies
from smtp_policy.emit import EventWriter
from smtp_policy.maillog.tracker import DEFAULT_MAX_IDLE

if TYPE_CHECKING:
    from smtp_policy.adapters.follow.metrics import FollowMetrics
    from smtp_policy.config import Config

HELP = "follow mail logs: every reply as an event, one record per message"

DEFAULT_LOG = "/var/log/mail.log"
DEFAULT_UNIT = "postfix@-.service"
#: The metrics address the help shows, in the canonical form.
METRICS_EXAMPLE = "inet:127.0.0.1:9150"


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
        metavar="UNIT",
        help="journal unit to read ('' for the whole journal; "
        f"default: [follow] journal_unit, {DEFAULT_UNIT})",
    )
    parser.add_argument(
        "--events", metavar="FILE", help="append JSON events to FILE (default: [events] output)"
    )
    parser.add_argument(
        "--state",
        metavar="DIR",
        help="keep positions and in-flight messages in DIR "
        "(default: [follow] state_dir for the [follow] sources, else $STATE_DIRECTORY)",
    )
    add_config_option(parser)
    parser.add_argument(
        "--from-start", action="store_true", help="read files from their start, not their end"
    )
    parser.add_argument("--once", action="store_true", help="exit at the end of the input")
    parser.add_argument(
        "--year", type=int, metavar="YYYY", help="year of timestamps that carry none"
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="ADDRESS",
        help=f"serve Prometheus metrics on inet:HOST:PORT, e.g. {METRICS_EXAMPLE} "
        "('' for none; default: [metrics] listen)",
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


@dataclass(frozen=True, slots=True)
class FollowSettings:
    """What the follower does: the command line over the configuration.

    ``journal_unit`` None reads the whole journal; ``state_dir`` None keeps no state;
    ``events`` is a file path or "-"; ``metrics`` None serves none; ``metrics_options`` are
    [metrics]' other keys (domain labels, queue gauges).
    """

    logs: tuple[str, ...] = ()
    stdin: bool = False
    journal: bool = False
    journal_unit: str | None = DEFAULT_UNIT
    state_dir: str | None = None
    events: str = "-"
    metrics: ListenAddress | None = None
    metrics_options: MetricsConfig = field(default_factory=MetricsConfig)
    from_start: bool = False
    once: bool = False
    year: int | None = None
    max_idle: float = DEFAULT_MAX_IDLE
    stats_interval: float = 300.0


def follow_settings(
    args: argparse.Namespace,
    config: Config,
    environ: Mapping[str, str],
    *,
    exists: Callable[[str], bool] = os.path.exists,
) -> FollowSettings:
    """The options over the configuration; ConfigError for a bad --metrics-listen.

    Sources named on the command line replace [follow]'s, and then [follow] state_dir is not
    used (a run by hand never touches the daemon's state); ``exists`` tells whether
    /var/log/mail.log is there when nothing names a source.
    """
    logs = tuple(dict.fromkeys([*args.log, *(p for p in args.inputs if p != "-")]))
    stdin = "-" in args.inputs
    journal: bool = args.journal
    state_dir = args.state or environ.get("STATE_DIRECTORY") or None
    if not (logs or stdin or journal):
        if config.follow.enabled:
            logs, journal = tuple(dict.fromkeys(config.follow.logs)), config.follow.journal
            state_dir = args.state or config.follow.state_dir or None
        elif exists(DEFAULT_LOG):
            logs = (DEFAULT_LOG,)
        else:
            journal = True
    unit = config.follow.journal_unit if args.journal_unit is None else args.journal_unit
    return FollowSettings(
        logs=logs,
        stdin=stdin,
        journal=journal,
        journal_unit=unit or None,
        state_dir=state_dir,
        events=args.events or config.events.output,
        metrics=_metrics_address(args.metrics_listen, config.metrics.listen),
        metrics_options=config.metrics,
        from_start=args.from_start,
        once=args.once,
        year=args.year,
        max_idle=args.max_idle,
        stats_interval=args.stats_interval,
    )


def once_problem(settings: FollowSettings) -> str | None:
    """Why these settings cannot work with --once, or None: without --from-start and without a
    state to resume from, files and the journal are read from their end, i.e. not at all."""
    if not settings.once or settings.from_start or settings.state_dir is not None:
        return None
    if settings.logs or settings.journal:
        return (
            "--once without --from-start reads nothing (files and the journal are read from "
            "their end): add --from-start, or --state DIR to continue where the last run stopped"
        )
    return None


def _metrics_address(option: str | None, configured: str | None) -> ListenAddress | None:
    """--metrics-listen ('' turns metrics off), else [metrics] listen, parsed."""
    text, name = (configured, "metrics.listen") if option is None else (option, "--metrics-listen")
    if not text:
        return None
    try:
        return ListenAddress.parse_tcp(text, default_host=LOOPBACK)
    except ConfigError as exc:
        raise ConfigError([f"{name}: {problem}" for problem in exc.problems]) from None


def run(args: argparse.Namespace) -> int:
    """Follow until SIGTERM/SIGINT (or, with --once, the end of the input)."""
    from smtp_policy.config import load_config
    from smtp_policy.data import default_knowledge

    config = load_config(args.config)
    settings = follow_settings(args, config, os.environ)
    problem = once_problem(settings)
    if problem is not None:
        print(f"smtp-policy follow: {problem}", file=sys.stderr)
        return 1
    kb = default_knowledge()
    own = own_replies(config.rules, kb=kb, texts=config.texts)  # rule rejections: their reason
    store = StateStore(settings.state_dir) if settings.state_dir else None
    state = load_state(store)
    try:
        writer = EventWriter.open(settings.events, line_buffered=False)
    except OSError as exc:
        print(
            f"smtp-policy follow: cannot write {settings.events}: {exc.strerror}", file=sys.stderr
        )
        return 1  # as every daemon that cannot open its events file
    try:
        return _follow(settings, kb, store=store, state=state, writer=writer, own=own)
    finally:
        writer.close()


def _follow(
    settings: FollowSettings,
    kb: KnowledgeBase,
    *,
    store: StateStore | None,
    state: Mapping[str, Any],
    writer: EventWriter,
    own: tuple[OwnReply, ...] = (),
) -> int:
    tz = local_timezone()
    from smtp_policy.maillog.parse import parse_line

    tracker = restore_tracker(
        state, kb, max_idle=settings.max_idle, tz=tz, year=settings.year, own=own
    )
    metrics = _metrics(settings.metrics, kb, settings.metrics_options)
    pipeline = Pipeline(tracker, writer.emit, parse_line, metrics, emit_forms=writer.emit_forms)
    tailer = Tailer(build_sources(settings, state))
    stop = StopFlag()
    stop.install()
    started: dict[str, object] = {"sources": [s.name for s in tailer.sources]}
    if settings.metrics is not None:
        started["metrics"] = str(settings.metrics)
    pipeline.emit_control(EventKind.STARTED, started)
    writer.flush()  # the events are block-buffered: "started" is out before the first poll
    try:
        loop = Loop(tailer, pipeline, store, writer, stats_interval=settings.stats_interval)
        loop.run(stop, once=settings.once)
        if settings.once and store is None:
            pipeline.finish(tailer)
        loop.save()
    finally:
        tailer.close()
        if metrics is not None and metrics.poller is not None:
            metrics.poller.stop()
    pipeline.emit_stats(final=True)
    pipeline.emit_control(EventKind.STOPPED, {})
    writer.flush()
    return 1 if settings.once and pipeline.unreadable else 0


def build_sources(settings: FollowSettings, state: Mapping[str, Any]) -> list[LineSource]:
    """The sources of ``settings``, positioned from ``state``."""
    positions = state.get("files", {})
    sources: list[LineSource] = [
        FileTail(path, position=position_of(positions.get(path)), from_start=settings.from_start)
        for path in settings.logs
    ]
    if settings.stdin:
        sources.append(StreamTail(sys.stdin.buffer))
    if settings.journal:
        sources.append(
            JournalTail(
                settings.journal_unit,
                state.get("journal_cursor"),
                follow=not settings.once,
                from_start=settings.from_start,
            )
        )
    return sources


def _metrics(
    address: ListenAddress | None, kb: KnowledgeBase, options: MetricsConfig
) -> FollowMetrics | None:
    if address is None:
        return None
    from smtp_policy.adapters.follow.metrics import FollowMetrics, serve

    metrics = FollowMetrics(kb, options=options)
    try:
        serve(metrics, address)
    except OSError as exc:
        raise ConfigError([f"metrics {address}: cannot listen: {exc.strerror or exc}"]) from None
    print(
        f"smtp-policy follow: metrics on http://{address.master_cf()}/metrics",
        file=sys.stderr,
        flush=True,
    )
    if metrics.poller is not None:
        metrics.poller.start()
    return metrics
