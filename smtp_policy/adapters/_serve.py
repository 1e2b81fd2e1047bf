"""The asyncio side the socketmap and policy servers share: listening and the request loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from smtp_policy.config.listen import ListenAddress
from smtp_policy.core.errors import ConfigError, ProtocolError

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


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


async def serve_requests(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    decoder: Decoder[T],
    answer: Callable[[T], bytes],
    *,
    idle_timeout: float,
    on_error: Callable[[str], None],
) -> None:
    """The request/answer loop of the socketmap and policy servers, for one connection.

    Requests are answered in order as they complete; the connection ends when the peer closes
    it, stays idle for ``idle_timeout`` seconds, or breaks the protocol (``on_error`` says why:
    neither protocol can resynchronise after a malformed request).
    """
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), idle_timeout)
            if not data:
                break
            decoder.feed(data)
            while (request := decoder.next()) is not None:
                writer.write(answer(request))
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
