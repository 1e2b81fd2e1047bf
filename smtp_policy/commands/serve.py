"""What every listening daemon shares: options, the event writer, signals and the loop."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from ..adapters.listen import Handler, ListenAddress, start_server
from ..core.events import Event, Source
from ..emit import EventWriter

HandlerFactory = Callable[[EventWriter], Handler]


def add_daemon_options(parser: argparse.ArgumentParser, default_listen: str) -> None:
    """--listen and --events, the same for every daemon."""
    parser.add_argument(
        "--listen",
        default=default_listen,
        help=f"inet:HOST:PORT or unix:/path (default {default_listen})",
    )
    parser.add_argument(
        "--events",
        metavar="FILE",
        default=None,
        help="append JSON events to FILE instead of standard output",
    )


def serve(args: argparse.Namespace, name: str, make_handler: HandlerFactory) -> int:
    """Listen and serve until SIGTERM/SIGINT; return the exit code."""
    address = ListenAddress.parse(args.listen)
    events = EventWriter.open(args.events)
    try:
        return asyncio.run(_serve(address, name, events, make_handler(events)))
    finally:
        events.close()


async def _serve(address: ListenAddress, name: str, events: EventWriter, handler: Handler) -> int:
    open_tasks: set[asyncio.Task[None]] = set()
    writers: set[asyncio.StreamWriter] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        open_tasks.add(task)
        writers.add(writer)
        try:
            await handler(reader, writer)
        finally:
            writers.discard(writer)
            open_tasks.discard(task)

    server = await start_server(address, tracked)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    source = Source(name)
    events.emit(
        Event(event="started", source=source, ts=datetime.now(UTC), extra={"listen": str(address)})
    )
    print(f"smtp-policy {name}: listening on {address}", file=sys.stderr, flush=True)
    await stop.wait()
    server.close()
    for writer in list(writers):  # open connections end as if the peer had closed them
        writer.transport.abort()
    if open_tasks:
        await asyncio.wait(open_tasks, timeout=5)
    events.emit(Event(event="stopped", source=source, ts=datetime.now(UTC)))
    return 0
