"""What the asyncio daemons (maps, policy) share: options, configuration, signals and the loop.

Options override the configuration file; SIGTERM/SIGINT stop cleanly (open connections are
closed as if the peer had gone); SIGHUP reopens the events file (after logrotate renamed it)
and re-reads the configuration, keeping the running one when the new one has problems (an
error event says why). Configuration warnings are printed at start, one line each on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from smtp_policy.adapters._serve import Connections, Handler, start_server
from smtp_policy.commands._options import add_config_option
from smtp_policy.config import Config, load_config, reload_or_keep
from smtp_policy.config.listen import ListenAddress
from smtp_policy.core.errors import ConfigError
from smtp_policy.core.events import Event, EventKind, Source
from smtp_policy.emit import EventWriter


class Service(Protocol):
    """What a daemon's service object offers the loop."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection."""

    def reconfigure(self, config: Config) -> None:
        """Take a newly loaded configuration."""


ServiceFactory = Callable[[EventWriter, Config], Service]


def add_daemon_options(parser: argparse.ArgumentParser, section: str) -> None:
    """--listen, --events and --config, the same for every daemon."""
    parser.add_argument(
        "--listen",
        metavar="ADDRESS",
        help=f"inet:HOST:PORT, inet:[IPv6]:PORT or unix:/path (default: [{section}] listen)",
    )
    parser.add_argument(
        "--events", metavar="FILE", help="append JSON events to FILE (default: [events] output)"
    )
    add_config_option(parser)


def serve(
    args: argparse.Namespace, source: Source, listen: Callable[[Config], str], make: ServiceFactory
) -> int:
    """Listen on ``--listen`` (else ``listen`` from the config) until SIGTERM/SIGINT."""
    config = load_config(args.config, on_warning=warning_printer(source.value))
    address = ListenAddress.parse(args.listen or listen(config))
    output = args.events or config.events.output
    try:
        events = EventWriter.open(output)
    except OSError as exc:
        raise ConfigError([f"cannot write events to {output}: {exc.strerror or exc}"]) from None
    try:
        service = make(events, config)
        return asyncio.run(
            _serve(address, source, events, service, config_path=args.config, config=config)
        )
    finally:
        events.close()


def warning_printer(daemon: str) -> Callable[[str], None]:
    """Prints a configuration warning as one line on stderr: the daemon starts anyway."""

    def warn(warning: str) -> None:
        print(f"smtp-policy {daemon}: warning: {warning}", file=sys.stderr, flush=True)

    return warn


def _one_line_errors(
    source: Source, events: EventWriter
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """asyncio's own errors (``accept()`` out of descriptors, after which it pauses accepting for
    a second; a callback that raised) as one line on stderr and one error event, never the
    traceback asyncio's default handler prints."""

    def handle(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "event loop error")
        if (exc := context.get("exception")) is not None:
            message = f"{message}: {exc}"
        print(f"smtp-policy {source.value}: {message}", file=sys.stderr, flush=True)
        events.error(source, message)

    return handle


async def _serve(
    address: ListenAddress,
    source: Source,
    events: EventWriter,
    service: Service,
    *,
    config_path: str | None,
    config: Config,
) -> int:
    open_tasks: set[asyncio.Task[None]] = set()
    connections = Connections()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        open_tasks.add(task)
        try:
            await service.handle(reader, writer)
        finally:
            open_tasks.discard(task)

    def reload() -> None:
        nonlocal config
        events.reopen(source)

        def refused(exc: ConfigError) -> None:
            events.error(source, f"reload refused, keeping the running configuration: {exc}")

        fresh = reload_or_keep(config, config_path, refused)
        if fresh is not config:
            config = fresh
            service.reconfigure(fresh)
            events.emit(Event(event=EventKind.RELOADED, source=source, ts=datetime.now(UTC)))

    handler: Handler = connections.wrap(tracked)
    server = await start_server(address, handler)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_one_line_errors(source, events))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    events.emit(
        Event(
            event=EventKind.STARTED,
            source=source,
            ts=datetime.now(UTC),
            extra={"listen": str(address)},
        )
    )
    print(f"smtp-policy {source.value}: listening on {address}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    for writer in connections.writers():  # open connections end as if the peer had closed them
        writer.transport.abort()
    if open_tasks:
        await asyncio.wait(open_tasks, timeout=5)
    events.emit(Event(event=EventKind.STOPPED, source=source, ts=datetime.now(UTC)))
    return 0
