"""Listen addresses as the admin writes them: ``inet:127.0.0.1:PORT`` or ``unix:/path``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..core.errors import ConfigError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where a daemon listens."""

    kind: str  # "inet" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        """Parse ``inet:HOST:PORT``, ``inet:PORT@HOST`` (milter style) or ``unix:PATH``."""
        kind, sep, rest = text.partition(":")
        if kind == "unix" and sep and rest:
            return cls("unix", path=rest)
        if kind == "inet" and sep:
            if "@" in rest:
                port, _, host = rest.partition("@")
            else:
                host, _, port = rest.rpartition(":")
            if port.isdigit() and 0 < int(port) < 65536 and host:
                return cls("inet", host=host.strip("[]"), port=int(port))
        raise ConfigError([f"listen address {text!r}: expected inet:HOST:PORT or unix:/path"])

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"inet:{self.host}:{self.port}"


async def start_server(address: ListenAddress, handler: Handler) -> asyncio.Server:
    """Start listening; a stale unix socket is replaced, a live one is an error."""
    try:
        if address.kind == "unix":
            _remove_stale_socket(address.path)
            old = os.umask(0o111)  # Postfix daemons run as another user: let them connect
            try:
                return await asyncio.start_unix_server(handler, path=address.path)
            finally:
                os.umask(old)
        return await asyncio.start_server(handler, address.host, address.port, reuse_address=True)
    except OSError as exc:
        raise ConfigError([f"cannot listen on {address}: {exc.strerror or exc}"]) from None


def _remove_stale_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
