"""The asyncio side the socketmap and policy servers share: listening, the request loop, and
their limits (open connections, requests per connection, events per second)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Final, Protocol, TypeVar

from smtp_policy.config.listen import ListenAddress
from smtp_policy.core.errors import ConfigError, ProtocolError
from smtp_policy.core.events import Event, EventKind, Source

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

#: Open connections per server: well below the units' LimitNOFILE (Postfix opens one per smtpd
#: process, and reuses it); past it, a new connection closes the one idle longest.
MAX_CONNECTIONS: Final = 256
#: Requests answered on one connection before the server closes it (Postfix reconnects).
MAX_REQUESTS: Final = 10_000
#: Events a server writes a second for its requests; past it, one ``warning`` with the count.
EVENTS_PER_SECOND: Final = 1000

#: Set for each connection by :class:`Connections`: call it when the connection is in use.
_IN_USE: ContextVar[Callable[[], None] | None] = ContextVar("_IN_USE", default=None)


class Connections:
    """The open connections of one server, at most ``limit``: a new connection past it closes
    the one idle longest (an idle flood cannot lock Postfix out or use up file descriptors)."""

    def __init__(self, limit: int = MAX_CONNECTIONS) -> None:
        self.limit = limit
        self.closed_idle = 0  # connections closed to make room
        self._last_use: dict[asyncio.StreamWriter, float] = {}

    def __len__(self) -> int:
        return len(self._last_use)

    def writers(self) -> list[asyncio.StreamWriter]:
        """The open connections' writers."""
        return list(self._last_use)

    def wrap(self, handler: Handler) -> Handler:
        """``handler`` run for each connection, within the limit."""

        async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while len(self._last_use) >= self.limit:
                idlest = min(self._last_use, key=self._last_use.__getitem__)
                del self._last_use[idlest]
                idlest.transport.abort()
                self.closed_idle += 1
            self._last_use[writer] = time.monotonic()
            _IN_USE.set(lambda: self._used(writer))
            try:
                await handler(reader, writer)
            finally:
                self._last_use.pop(writer, None)

        return limited

    def _used(self, writer: asyncio.StreamWriter) -> None:
        if writer in self._last_use:
            self._last_use[writer] = time.monotonic()


class EventBudget:
    """At most ``per_second`` request events in each second; the ones past it are counted, and
    the count is handed over with the first event of a later second."""

    def __init__(
        self, per_second: int = EVENTS_PER_SECOND, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = per_second
        self._clock = clock
        self._second = -1
        self._used = 0
        self._held = 0

    def take(self) -> tuple[bool, int]:
        """Whether to write this event, and how many earlier seconds held back (to report now,
        once: 0 when none)."""
        second = int(self._clock())
        held = 0
        if second != self._second:
            held, self._held = self._held, 0
            self._second, self._used = second, 0
        self._used += 1
        if self._used > self.per_second:
            self._held += 1
            return False, held
        return True, held


async def start_server(address: ListenAddress, handler: Handler) -> asyncio.Server:
    """Start listening; a stale unix socket is replaced, a live one is an error."""
    try:
        if address.is_unix:
            _remove_stale_socket(address.path)
            old = os.umask(0o111)  # Postfix daemons run as another user: let them connect
            try:
                return await asyncio.start_unix_server(handler, path=address.path)
            finally:
                os.umask(old)
        host, port = address.host_port
        return await asyncio.start_server(handler, host, port, reuse_address=True)
    except OSError as exc:
        raise ConfigError([f"cannot listen on {address}: {exc.strerror or exc}"]) from None


def _remove_stale_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


class Decoder(Protocol[T_co]):
    """An incremental sans-I/O decoder: bytes in, whole requests out (None: need more)."""

    def feed(self, data: bytes) -> None:
        """Append received bytes."""

    def next(self) -> T_co | None:
        """The next whole request, or None."""


def flood_warning(source: Source, held: int, per_second: int) -> Event:
    """The one ``warning`` that stands for the request events a flood held back."""
    return Event(
        event=EventKind.WARNING,
        source=source,
        ts=datetime.now(UTC),
        text=f"{held} request events not written: more than {per_second} a second",
        extra={"held_back": held},
    )


async def serve_requests(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    decoder: Decoder[T],
    answer: Callable[[T], bytes],
    *,
    idle_timeout: float,
    on_error: Callable[[str], None],
    max_requests: int = MAX_REQUESTS,
) -> None:
    """The request/answer loop of the socketmap and policy servers, for one connection.

    Requests are answered in order as they complete; the connection ends when the peer closes
    it, stays idle for ``idle_timeout`` seconds, has had ``max_requests`` answers, or breaks the
    protocol (``on_error`` says why: neither protocol can resynchronise after a malformed
    request).
    """
    answered = 0
    in_use = _IN_USE.get()
    try:
        while answered < max_requests:
            data = await asyncio.wait_for(reader.read(65536), idle_timeout)
            if not data:
                break
            if in_use is not None:
                in_use()
            decoder.feed(data)
            while answered < max_requests and (request := decoder.next()) is not None:
                writer.write(answer(request))
                answered += 1
            await writer.drain()
    except ProtocolError as exc:
        on_error(f"closing connection: {exc}")
    except TimeoutError:
        on_error(f"closing connection idle for {idle_timeout:.0f} s")
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
