"""The Postfix socketmap protocol (socketmap_table(5)): ``name key`` in, ``OK data`` out."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from smtp_policy.core.errors import ProtocolError
from smtp_policy.wire.netstring import MAX_PAYLOAD, encode


class Status(StrEnum):
    """The reply statuses a socketmap server may send."""

    OK = "OK"
    NOTFOUND = "NOTFOUND"
    TEMP = "TEMP"
    TIMEOUT = "TIMEOUT"
    PERM = "PERM"


@dataclass(frozen=True, slots=True)
class Request:
    """One lookup: the map's name and the key, exactly as Postfix sent them."""

    name: str
    key: str

    @classmethod
    def decode(cls, payload: bytes) -> Request:
        """Read ``name SP key``; the key may hold any text, spaces included."""
        text = payload.decode("utf-8", "surrogateescape")
        name, sep, key = text.partition(" ")
        if not sep or not name:
            raise ProtocolError("socketmap request is not 'name key'")
        return cls(name, key)


@dataclass(frozen=True, slots=True)
class SocketmapReply:
    """One answer; ``data`` is the value (OK) or the reason (TEMP, TIMEOUT, PERM)."""

    status: Status
    data: str = ""

    def encode(self) -> bytes:
        """The framed reply; data is cut to the protocol's limit and kept on one line."""
        data = " ".join(self.data.split()) if self.status is not Status.OK else self.data
        body = f"{self.status.value} {data}".encode("utf-8", "surrogateescape")
        return encode(body[:MAX_PAYLOAD])


NOT_FOUND = SocketmapReply(Status.NOTFOUND)
