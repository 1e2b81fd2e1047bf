"""The milter wire protocol (Sendmail's libmilter, version 6) as a sans-I/O codec.

A frame is a 4-byte big-endian length (the command byte included), the command byte and its
data. The MTA sends commands (:class:`Command` subclasses, :func:`parse_command`); the milter
answers with one response per step unless "no reply" was negotiated for it, and may send
modification requests before its answer to end-of-message. Everything here is pure: bytes in,
values out, and bytes that break the protocol raise :class:`MilterProtocolError` (a
:class:`ProtocolError`), never anything else.

Limits: a frame carries at most :data:`MAX_DATA` octets after its command byte (libmilter's
own ``MILTER_MAX_DATA_SIZE``); a macro frame at most :data:`MAX_MACROS` name/value pairs; a
MAIL or RCPT frame at most :data:`MAX_ARGS` arguments.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from smtp_policy.core.errors import ProtocolError

#: The protocol version we speak (Sendmail 8.14+, Postfix 2.6+).
VERSION: Final = 6
#: Octets after the command byte one frame may carry (libmilter's MILTER_MAX_DATA_SIZE).
MAX_DATA: Final = 65535
#: Name/value pairs one macro frame may carry.
MAX_MACROS: Final = 128
#: Arguments (address and ESMTP parameters) one MAIL or RCPT frame may carry.
MAX_ARGS: Final = 64
#: libmilter's reply limits: lines per multi-line reply, octets per line.
MAX_REPLY_LINES: Final = 32
MAX_REPLY_LINE: Final = 980

# Actions the milter may ask for (SMFIF_*).
ADDHDRS: Final = 0x01
CHGBODY: Final = 0x02
ADDRCPT: Final = 0x04
DELRCPT: Final = 0x08
CHGHDRS: Final = 0x10
QUARANTINE: Final = 0x20
CHGFROM: Final = 0x40
ADDRCPT_PAR: Final = 0x80
SETSYMLIST: Final = 0x100
ALL_ACTIONS: Final = 0x1FF

# Protocol bits (SMFIP_*): steps the MTA skips, steps it does not wait for, and features.
NOCONNECT: Final = 0x01
NOHELO: Final = 0x02
NOMAIL: Final = 0x04
NORCPT: Final = 0x08
NOBODY: Final = 0x10
NOHDRS: Final = 0x20
NOEOH: Final = 0x40
NR_HDR: Final = 0x80
NOUNKNOWN: Final = 0x100
NODATA: Final = 0x200
SKIP: Final = 0x400
RCPT_REJ: Final = 0x800
NR_CONN: Final = 0x1000
NR_HELO: Final = 0x2000
NR_MAIL: Final = 0x4000
NR_RCPT: Final = 0x8000
NR_DATA: Final = 0x10000
NR_UNKN: Final = 0x20000
NR_EOH: Final = 0x40000
NR_BODY: Final = 0x80000
HDR_LEADSPC: Final = 0x100000
ALL_PROTOCOL: Final = 0x1FFFFF

#: The "no reply" bit of each MTA command that has one.
NO_REPLY_BIT: Final[Mapping[bytes, int]] = {
    b"C": NR_CONN,
    b"H": NR_HELO,
    b"M": NR_MAIL,
    b"R": NR_RCPT,
    b"T": NR_DATA,
    b"U": NR_UNKN,
    b"L": NR_HDR,
    b"N": NR_EOH,
    b"B": NR_BODY,
}

# Macro stages (SMFIM_*), the index SETSYMLIST names a stage by.
M_CONNECT, M_HELO, M_ENVFROM, M_ENVRCPT, M_DATA, M_EOM, M_EOH = range(7)
#: The stage a macro frame's command byte fills (libmilter's ``st_macros``).
MACRO_STAGE: Final[Mapping[bytes, int]] = {
    b"C": M_CONNECT,
    b"H": M_HELO,
    b"M": M_ENVFROM,
    b"R": M_ENVRCPT,
    b"T": M_DATA,
    b"E": M_EOM,
    b"N": M_EOH,
}

# The milter's answers (SMFIR_*) that carry no data.
CONTINUE: Final = b"c"
REJECT: Final = b"r"
TEMPFAIL: Final = b"t"
ACCEPT: Final = b"a"
DISCARD: Final = b"d"
SKIP_REST: Final = b"s"
PROGRESS: Final = b"p"
CONNFAIL: Final = b"f"
SHUTDOWN: Final = b"6"

_LENGTH = struct.Struct(">I")
_OPTIONS = struct.Struct(">III")
_PORT = struct.Struct(">H")


class MilterProtocolError(ProtocolError):
    """Bytes that are not the milter protocol: the connection cannot go on."""


class MilterReplyError(ValueError):
    """A reply code or text libmilter would refuse (``smfi_setreply`` returns MI_FAILURE)."""


# -- frames ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame: its command byte and the data after it."""

    command: bytes
    data: bytes = b""

    def encode(self) -> bytes:
        """The frame on the wire."""
        return encode_frame(self.command, self.data)


def encode_frame(command: bytes, data: bytes = b"") -> bytes:
    """Length, command byte and data."""
    if len(command) != 1:
        raise MilterProtocolError("a milter command is one byte")
    if len(data) > MAX_DATA:
        raise MilterProtocolError(f"milter frame of {len(data)} octets is over {MAX_DATA}")
    return _LENGTH.pack(len(data) + 1) + command + data


class FrameDecoder:
    """Bytes in, whole frames out; a frame over the limit or of length 0 is an error."""

    __slots__ = ("_buffer", "_start")

    def __init__(self) -> None:
        self._buffer = b""
        self._start = 0

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        if self._start >= len(self._buffer):
            self._buffer = data  # the common case: the last chunk ended on a frame boundary
        else:
            self._buffer = self._buffer[self._start :] + data
        self._start = 0

    def next(self) -> Frame | None:
        """The next whole frame, or None until more bytes arrive."""
        buffer, start = self._buffer, self._start
        if len(buffer) - start < 4:
            return None
        (length,) = _LENGTH.unpack_from(buffer, start)
        if length == 0 or length > MAX_DATA + 1:
            raise MilterProtocolError(f"milter frame length {length} out of range")
        end = start + 4 + length
        if len(buffer) < end:
            return None
        self._start = end
        return Frame(buffer[start + 4 : start + 5], buffer[start + 5 : end])

    def pending(self) -> int:
        """Octets received and not yet returned in a frame."""
        return len(self._buffer) - self._start


def _nul_fields(data: bytes, what: str) -> list[bytes]:
    """NUL-terminated strings, each terminator required."""
    if not data.endswith(b"\0"):
        raise MilterProtocolError(f"milter {what}: strings must end in NUL")
    return data[:-1].split(b"\0")


# -- the MTA's commands ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OptionNegotiation:
    """``O``: the version, actions and protocol bits the MTA offers (or the milter takes);
    in the milter's answer, the macro lists it asks for per stage (SETSYMLIST)."""

    version: int
    actions: int
    protocol: int
    symlists: tuple[tuple[int, bytes], ...] = ()

    def encode(self) -> bytes:
        """The frame: three 32-bit numbers, then ``stage`` + NUL-ended list per macro stage."""
        data = _OPTIONS.pack(self.version, self.actions, self.protocol)
        data += b"".join(_LENGTH.pack(stage) + names + b"\0" for stage, names in self.symlists)
        return encode_frame(b"O", data)

    @classmethod
    def decode(cls, data: bytes) -> OptionNegotiation:
        """Read an ``O`` frame's data."""
        if len(data) < _OPTIONS.size:
            raise MilterProtocolError("milter option negotiation is shorter than 12 octets")
        version, actions, protocol = _OPTIONS.unpack_from(data)
        rest = data[_OPTIONS.size :]
        symlists = []
        while rest:
            if len(rest) < 5 or b"\0" not in rest[4:]:
                raise MilterProtocolError("milter option negotiation: bad macro list")
            (stage,) = _LENGTH.unpack_from(rest)
            names, _, rest = rest[4:].partition(b"\0")
            symlists.append((stage, names))
        return cls(version, actions, protocol, tuple(symlists))


@dataclass(frozen=True, slots=True)
class Macros:
    """``D``: the macros for the command ``stage`` (its command byte) that follows."""

    stage: bytes
    pairs: tuple[tuple[bytes, bytes], ...]

    def encode(self) -> bytes:
        """The frame."""
        fields = b"".join(name + b"\0" + value + b"\0" for name, value in self.pairs)
        return encode_frame(b"D", self.stage + fields)


@dataclass(frozen=True, slots=True)
class Connect:
    """``C``: the client's name, its address family (``4``, ``6``, ``L`` local, ``U``
    unknown), port and address."""

    hostname: bytes
    family: bytes
    port: int = 0
    address: bytes = b""

    def encode(self) -> bytes:
        """The frame."""
        data = self.hostname + b"\0" + self.family
        if self.family != b"U":
            data += _PORT.pack(self.port) + self.address + b"\0"
        return encode_frame(b"C", data)


@dataclass(frozen=True, slots=True)
class Helo:
    """``H``: the name the client gave in HELO or EHLO."""

    name: bytes

    def encode(self) -> bytes:
        """The frame."""
        return encode_frame(b"H", self.name + b"\0")


@dataclass(frozen=True, slots=True)
class Mail:
    """``M``: the sender, then the ESMTP parameters."""

    args: tuple[bytes, ...]

    def encode(self) -> bytes:
        """The frame."""
        return encode_frame(b"M", b"".join(a + b"\0" for a in self.args))


@dataclass(frozen=True, slots=True)
class Rcpt:
    """``R``: one recipient, then its ESMTP parameters."""

    args: tuple[bytes, ...]

    def encode(self) -> bytes:
        """The frame."""
        return encode_frame(b"R", b"".join(a + b"\0" for a in self.args))


@dataclass(frozen=True, slots=True)
class Header:
    """``L``: one header's name and value."""

    name: bytes
    value: bytes

    def encode(self) -> bytes:
        """The frame."""
        return encode_frame(b"L", self.name + b"\0" + self.value + b"\0")


@dataclass(frozen=True, slots=True)
class Body:
    """``B``: a chunk of the body."""

    chunk: bytes

    def encode(self) -> bytes:
        """The frame."""
        return encode_frame(b"B", self.chunk)


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """``E``: end of message, with a last body chunk (usually empty)."""

    chunk: bytes = b""

    def encode(self) -> bytes:
        """The frame."""
        return encode_frame(b"E", self.chunk)


@dataclass(frozen=True, slots=True)
class Unknown:
    """``U``: an SMTP command the MTA did not know."""

    command: bytes

    def encode(self) -> bytes:
        """The frame."""
        return encode_frame(b"U", self.command + b"\0")


@dataclass(frozen=True, slots=True)
class Bare:
    """A command without data: ``T`` DATA, ``N`` end of headers, ``A`` abort, ``Q`` quit,
    ``K`` quit with a new connection to follow."""

    command: bytes

    def encode(self) -> bytes:
        """The frame."""
        return encode_frame(self.command, b"")


Command = (
    OptionNegotiation
    | Macros
    | Connect
    | Helo
    | Mail
    | Rcpt
    | Header
    | Body
    | EndOfMessage
    | Unknown
    | Bare
)

DATA, EOH, ABORT, QUIT, QUIT_NC = b"T", b"N", b"A", b"Q", b"K"


def parse_command(frame: Frame) -> Command:
    """The MTA command in ``frame``; anything else is a :class:`MilterProtocolError`."""
    parse = _PARSERS.get(frame.command)
    if parse is None:
        raise MilterProtocolError(f"unknown milter command {frame.command!r}")
    return parse(frame.command, frame.data)


def _parse_macros(_cmd: bytes, data: bytes) -> Macros:
    if not data:
        raise MilterProtocolError("milter macros without a stage")
    if len(data) == 1:
        return Macros(data, ())
    fields = _nul_fields(data[1:], "macros")
    if len(fields) % 2 or len(fields) > 2 * MAX_MACROS:
        raise MilterProtocolError("milter macros: odd or too many names and values")
    return Macros(data[:1], tuple(zip(fields[::2], fields[1::2], strict=True)))


def _parse_args(cmd: bytes, data: bytes) -> Mail | Rcpt:
    args = tuple(_nul_fields(data, "MAIL/RCPT"))
    if len(args) > MAX_ARGS:
        raise MilterProtocolError(f"milter MAIL/RCPT with more than {MAX_ARGS} arguments")
    return Mail(args) if cmd == b"M" else Rcpt(args)


def _parse_header(_cmd: bytes, data: bytes) -> Header:
    fields = _nul_fields(data, "header")
    if len(fields) != 2:
        raise MilterProtocolError("milter header is not name and value")
    return Header(fields[0], fields[1])


_BARE: Final = {code: Bare(code) for code in (DATA, EOH, ABORT, QUIT, QUIT_NC)}
_PARSERS: Final[Mapping[bytes, Callable[[bytes, bytes], Command]]] = {
    b"D": _parse_macros,
    b"M": _parse_args,
    b"R": _parse_args,
    b"B": lambda _cmd, data: Body(data),
    b"E": lambda _cmd, data: EndOfMessage(data),
    **{code: (lambda cmd, _data: _BARE[cmd]) for code in _BARE},
    b"L": _parse_header,
    b"H": lambda _cmd, data: Helo(_one_string(data, "HELO")),
    b"C": lambda _cmd, data: _parse_connect(data),
    b"O": lambda _cmd, data: OptionNegotiation.decode(data),
    b"U": lambda _cmd, data: Unknown(_one_string(data, "unknown command")),
}


def _one_string(data: bytes, what: str) -> bytes:
    fields = _nul_fields(data, what)
    if len(fields) != 1:
        raise MilterProtocolError(f"milter {what}: one string expected")
    return fields[0]


def _parse_connect(data: bytes) -> Connect:
    hostname, sep, rest = data.partition(b"\0")
    if not sep or not rest:
        raise MilterProtocolError("milter connect: no address family")
    family = rest[:1]
    if family == b"U":
        return Connect(hostname, family)
    if family not in (b"4", b"6", b"L") or len(rest) < 3:
        raise MilterProtocolError(f"milter connect: bad address family {family!r}")
    (port,) = _PORT.unpack_from(rest, 1)
    return Connect(hostname, family, port, _one_string(rest[3:], "connect address"))


# -- the milter's responses -----------------------------------------------------------------

_RESPONSES: Final = frozenset(b"cratdspf6yqhimb+-2el"[i : i + 1] for i in range(20))


def response(code: bytes, data: bytes = b"") -> bytes:
    """One response frame (``c``, ``r``, ``y``, ``h``...)."""
    if code not in _RESPONSES:
        raise MilterProtocolError(f"unknown milter response {code!r}")
    return encode_frame(code, data)


def _text(value: str | bytes) -> bytes:
    """A string's octets (undecodable input bytes restored); NUL or a lone surrogate is an
    error."""
    try:
        raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    except UnicodeEncodeError:
        raise MilterReplyError("milter strings cannot carry lone surrogates") from None
    if b"\0" in raw:
        raise MilterReplyError("milter strings cannot carry NUL")
    return raw


def reply_code(text: str) -> bytes:
    """``y``: the reply text :func:`reply_text` built, NUL-terminated."""
    return response(b"y", _text(text) + b"\0")


def add_header(name: str, value: str) -> bytes:
    """``h``: append a header."""
    return response(b"h", _text(name) + b"\0" + _text(value) + b"\0")


def insert_header(index: int, name: str, value: str) -> bytes:
    """``i``: insert a header at ``index`` (0: first)."""
    return response(b"i", _LENGTH.pack(index) + _text(name) + b"\0" + _text(value) + b"\0")


def change_header(index: int, name: str, value: str) -> bytes:
    """``m``: change the ``index``-th (from 1) header called ``name``; an empty value deletes."""
    return response(b"m", _LENGTH.pack(index) + _text(name) + b"\0" + _text(value) + b"\0")


def add_recipient(rcpt: str, params: str | None = None) -> bytes:
    """``+`` (or ``2`` with ESMTP parameters): add a recipient."""
    if params is None:
        return response(b"+", _text(rcpt) + b"\0")
    return response(b"2", _text(rcpt) + b"\0" + _text(params) + b"\0")


def delete_recipient(rcpt: str) -> bytes:
    """``-``: remove a recipient."""
    return response(b"-", _text(rcpt) + b"\0")


def change_sender(sender: str, params: str | None = None) -> bytes:
    """``e``: replace the envelope sender."""
    tail = _text(params) + b"\0" if params is not None else b""
    return response(b"e", _text(sender) + b"\0" + tail)


def replace_body(chunk: bytes) -> bytes:
    """``b``: (a chunk of) the new body."""
    return response(b"b", chunk)


def quarantine(reason: str) -> bytes:
    """``q``: put the message on hold."""
    return response(b"q", _text(reason) + b"\0")


# -- reply texts (smfi_setreply / smfi_setmlreply) ------------------------------------------

_CODE = re.compile(r"[45][0-9][0-9]\Z")
_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_ODD_PERCENT = re.compile(r"(?<!%)(?:%%)*%(?!%)")


def reply_text(code: str, enhanced: str | None, lines: Sequence[str]) -> str:
    """The reply libmilter would send: ``550 5.7.1 text`` for one line (``setreply``), and
    ``550-5.7.1 a\\r\\n550 5.7.1 b`` for several (``setmlreply``, which puts ``4.0.0`` or
    ``5.0.0`` where no enhanced code is given). A code that is not 4xx/5xx, an enhanced code
    not ``D.DDD.DDD``, CR or LF in a line, a line over 980 octets, more than 32 lines or a
    single ``%`` (the MTA formats the text) raise :class:`MilterReplyError`."""
    if not _CODE.match(code):
        raise MilterReplyError(f"reply code {code!r} is not 4xx or 5xx")
    if enhanced is not None and not _ENHANCED.match(enhanced):
        raise MilterReplyError(f"enhanced status code {enhanced!r} is malformed")
    if len(lines) > MAX_REPLY_LINES:
        raise MilterReplyError(f"more than {MAX_REPLY_LINES} reply lines")
    for line in lines:
        if "\r" in line or "\n" in line:
            raise MilterReplyError("a reply line cannot carry CR or LF")
        if len(_text(line)) > MAX_REPLY_LINE:
            raise MilterReplyError(f"a reply line is over {MAX_REPLY_LINE} octets")
        if _ODD_PERCENT.search(line):
            raise MilterReplyError("'%' must be doubled in a reply line")
    if len(lines) <= 1:
        parts = [code, enhanced, lines[0] if lines else None]
        head = f"{code} " if enhanced is None and not lines else ""
        return head or " ".join(p for p in parts if p is not None)
    xc = enhanced or f"{code[0]}.0.0"
    last = len(lines) - 1
    return "\r\n".join(
        f"{code}{' ' if n == last else '-'}{xc} {line}" for n, line in enumerate(lines)
    )
