"""Listen addresses: the one parser of every spelling, and one rendering per consumer.

The canonical form is ``inet:HOST:PORT``, ``inet:[IPv6]:PORT`` or ``unix:/path``. Also accepted:
libmilter's ``inet:PORT@HOST``, ``inet6:PORT@HOST`` and ``local:/path``, and the bare
``HOST:PORT`` / ``[IPv6]:PORT`` of the proxy and the metrics endpoint; ``:PORT`` only where the
caller names a default host. In the canonical form brackets mean IPv6: ``inet:[HOST]:PORT``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

from smtp_policy.core.errors import ConfigError

ListenKind = Literal["inet", "inet6", "unix"]

#: The host of ``:PORT`` where a bare port is allowed (the metrics endpoint).
LOOPBACK = "127.0.0.1"
#: The hint for a spelling that is no address at all.
EXPECTED = "expected inet:HOST:PORT or unix:/path"
#: The hint where only TCP will do (the proxy, the metrics endpoint).
TCP_EXPECTED = "expected inet:HOST:PORT"

_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MAX_PORT_DIGITS = 5


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where a daemon listens or a client connects: a TCP host and port, or a unix socket.

    ``kind`` is "inet6" when the host is an IPv6 address (or was written ``inet6:PORT@HOST``
    or ``[HOST]``), so that libmilter gets the right family.
    """

    kind: ListenKind
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str, *, default_host: str | None = None) -> ListenAddress:
        """Any accepted spelling; ``default_host`` allows ``:PORT``. ConfigError if invalid."""
        parsed = _parse(text, default_host)
        if isinstance(parsed, str):
            raise ConfigError([f"cannot parse {text!r}: {parsed}"])
        return parsed

    @classmethod
    def parse_tcp(cls, text: str, *, default_host: str | None = None) -> ListenAddress:
        """Like :meth:`parse`, but a unix socket is refused: the user needs host and port."""
        parsed = _parse(text, default_host)
        if isinstance(parsed, ListenAddress) and parsed.is_unix:
            parsed = f"a unix socket: {TCP_EXPECTED}"
        if isinstance(parsed, str):
            why = parsed.replace(EXPECTED, TCP_EXPECTED)
            raise ConfigError([f"cannot parse {text!r}: {why}"])
        return parsed

    @property
    def is_unix(self) -> bool:
        """Whether this is a unix socket."""
        return self.kind == "unix"

    @property
    def host_port(self) -> tuple[str, int]:
        """``(host, port)`` for a TCP server or client; ConfigError for a unix socket."""
        if self.is_unix:
            raise ConfigError([f"{self} is a unix socket: {TCP_EXPECTED}"])
        return self.host, self.port

    def __str__(self) -> str:
        """The canonical form: ``inet:HOST:PORT``, ``inet:[IPv6]:PORT`` or ``unix:/path``."""
        if self.is_unix:
            return f"unix:{self.path}"
        return f"inet:{self.master_cf()}"

    def libmilter(self) -> str:
        """libmilter's form: ``inet:PORT@HOST``, ``inet6:PORT@HOST`` or ``unix:/path``."""
        if self.is_unix:
            return f"unix:{self.path}"
        return f"{self.kind}:{self.port}@{self.host}"

    def postfix(self) -> str:
        """Postfix's client form (smtpd_milters, check_policy_service, socketmap tables)."""
        return str(self)

    def master_cf(self) -> str:
        """A master.cf TCP service name: ``HOST:PORT`` or ``[IPv6]:PORT`` (a unix path as is)."""
        if self.is_unix:
            return self.path
        host = f"[{self.host}]" if self.kind == "inet6" else self.host
        return f"{host}:{self.port}"


def _parse(text: str, default_host: str | None) -> ListenAddress | str:
    """The address, or why ``text`` is none."""
    scheme, sep, rest = text.partition(":")
    if sep and scheme in ("unix", "local"):
        return _unix(rest)
    if sep and scheme == "inet6":
        if "@" not in rest:
            return EXPECTED
        port, _, host = rest.partition("@")
        host, _ = _unbracketed(host)
        return _tcp(host, port, ipv6=True, default_host=None)
    if sep and scheme == "inet":
        if "@" in rest:
            port, _, host = rest.partition("@")
            host, bracketed = _unbracketed(host)
            return _tcp(host, port, ipv6=bracketed, default_host=None)
        return _host_and_port(rest, default_host=None)
    return _host_and_port(text, default_host)


def _unix(path: str) -> ListenAddress | str:
    if not path.startswith("/"):
        return "a unix socket path must be absolute"
    if not path.isprintable():
        return "a unix socket path cannot hold control characters"
    return ListenAddress("unix", path=path)


def _host_and_port(text: str, default_host: str | None) -> ListenAddress | str:
    """``HOST:PORT`` or ``[IPv6]:PORT`` (an unbracketed IPv6 host works: the port is last)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        return EXPECTED
    host, bracketed = _unbracketed(host)
    return _tcp(host, port, ipv6=bracketed, default_host=default_host)


def _unbracketed(host: str) -> tuple[str, bool]:
    """``host`` without its IPv6 brackets, and whether it had them."""
    if len(host) >= 2 and host[0] == "[" and host[-1] == "]":
        return host[1:-1], True
    return host, False


def _tcp(host: str, port: str, *, ipv6: bool, default_host: str | None) -> ListenAddress | str:
    if not port:
        return "no port: " + EXPECTED
    if not (port.isascii() and port.isdigit() and len(port) <= _MAX_PORT_DIGITS):
        return f"port {port!r} is not a number"
    number = int(port)
    if not 0 < number < 65536:
        return f"port {number} is out of range (1-65535)"
    if not host:
        if default_host is None:
            return "no host: " + EXPECTED
        host, ipv6 = default_host, False
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address" if ipv6 else EXPECTED
        ipv6 = True
    elif not _HOST_NAME.fullmatch(host):
        return f"{host!r} is not a host name or IP address"
    return ListenAddress("inet6" if ipv6 else "inet", host=host, port=number)
