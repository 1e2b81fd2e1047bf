"""The Postfix SMTPD access policy delegation protocol (SMTPD_POLICY_README).

A request is ``name=value`` lines ended by an empty line; the answer is one ``action=…``
line and an empty line; the connection is then reused for the next request.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from smtp_policy.core.errors import ProtocolError

MAX_LINE = 8192  # longer than any attribute Postfix sends (a 10 kB address is refused by smtpd)
MAX_ATTRIBUTES = 128
MAX_REQUEST = 64 * 1024


class PolicyDecoder:
    """Feed bytes; take whole requests out with :meth:`next`."""

    __slots__ = ("_attrs", "_buf", "_size")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._attrs: dict[str, str] = {}
        self._size = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    def next(self) -> Mapping[str, str] | None:
        """The next complete request's attributes, or None when more bytes are needed.

        Raises ProtocolError on an over-long line or request, or a line without ``=``;
        the server then logs and disconnects, as the protocol asks.
        """
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    raise ProtocolError(f"policy request line longer than {MAX_LINE} bytes")
                return None
            line = bytes(self._buf[:nl]).rstrip(b"\r")
            del self._buf[: nl + 1]
            if not line:
                if not self._attrs:
                    continue  # stray empty line between requests
                done, self._attrs, self._size = MappingProxyType(self._attrs), {}, 0
                return done
            self._add(line)

    def _add(self, line: bytes) -> None:
        if len(line) > MAX_LINE:
            raise ProtocolError(f"policy request line longer than {MAX_LINE} bytes")
        name, sep, value = line.partition(b"=")
        if not sep or not name:
            raise ProtocolError(f"policy request line without name=value: {line[:40]!r}")
        self._size += len(line)
        if len(self._attrs) >= MAX_ATTRIBUTES or self._size > MAX_REQUEST:
            raise ProtocolError("policy request too large")
        key = name.decode("ascii", "replace")
        self._attrs[key] = value.decode("utf-8", "replace")


def encode_action(action: str) -> bytes:
    """The answer block for one request; the action is kept to one line."""
    line = " ".join(action.split())
    if not line:
        raise ValueError("empty policy action")
    return f"action={line}\n\n".encode("utf-8", "replace")
