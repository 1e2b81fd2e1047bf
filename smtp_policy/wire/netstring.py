"""Netstrings (``12:hello world!,``), incrementally decoded: the framing of Postfix socketmaps."""

from __future__ import annotations

from smtp_policy.core.errors import ProtocolError

#: socketmap_table(5): replies are limited to 100,000 characters; requests get the same bound.
MAX_PAYLOAD = 100_000
_MAX_DIGITS = len(str(MAX_PAYLOAD))


def encode(payload: bytes) -> bytes:
    """Frame one payload."""
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    """Feed bytes as they arrive; take whole payloads out with :meth:`next`.

    Raises ProtocolError on malformed framing or a payload over ``max_payload``; the
    caller then closes the connection, as the protocol gives no way to resynchronise.
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buf = bytearray()
        self._max = max_payload

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """How many bytes wait for the rest of their netstring."""
        return len(self._buf)

    def next(self) -> bytes | None:
        """The next complete payload, or None when more bytes are needed."""
        colon = self._buf.find(b":", 0, _MAX_DIGITS + 1)
        if colon < 0:
            head = bytes(self._buf[: _MAX_DIGITS + 1])
            if head and not head.isdigit():
                raise ProtocolError(f"bad netstring length {head[:20]!r}")
            if len(head) > _MAX_DIGITS:
                raise ProtocolError("netstring length has too many digits")
            return None
        digits = bytes(self._buf[:colon])
        if not digits.isdigit() or (len(digits) > 1 and digits.startswith(b"0")):
            raise ProtocolError(f"bad netstring length {digits[:20]!r}")
        length = int(digits)
        if length > self._max:
            raise ProtocolError(f"netstring of {length} bytes exceeds the {self._max}-byte limit")
        end = colon + 1 + length
        if len(self._buf) < end + 1:
            return None
        if self._buf[end] != ord(","):
            raise ProtocolError("netstring not terminated by ','")
        payload = bytes(self._buf[colon + 1 : end])
        del self._buf[: end + 1]
        return payload
