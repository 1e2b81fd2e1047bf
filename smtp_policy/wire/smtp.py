"""SMTP commands and replies, incrementally decoded and encoded: the codec of the front proxy.

Theory of operation (h11-style, no I/O): the proxy feeds whatever bytes arrive into a
:class:`ReplyReader` (from the server) or a :class:`CommandReader` (from the client) and pulls
events out until the reader answers None ("need more bytes"). Nothing here reads a socket,
keeps time or logs; malformed input raises :class:`ProtocolError` and nothing else.

Command side. A command line ends at LF (CRLF or a bare LF, as Postfix's ``smtp_get`` accepts)
and may hold at most ``max_line`` octets including the terminator (RFC 5321 §4.5.3.1.4: 512),
or ``max_extended_line`` for MAIL and RCPT, whose parameters the advertised extensions lengthen
(SIZE: RFC 1870 §3, +26; DSN: RFC 3461 §5, +100 for MAIL and +500 for RCPT). A longer line is
reported once as :class:`LineTooLong` and skipped up to its LF; the buffer never holds more
than one line limit plus what was fed. One CR before the LF is the line end's; any other CR
stays in the line, where :func:`has_control` finds it with NUL and the other controls.

DATA mode (after the server's 354) makes the server's own line-end rules irrelevant, which is
what keeps the proxy safe from SMTP smuggling (Postfix < 3.9 by default ends a message at
``<LF>.<LF>``, ``<LF>.<CR><LF>``, ``<CR><LF>.<LF>`` and ``.<CR><CR><LF>``). The message ends
only at ``<CR><LF>.<CR><LF>`` (the DATA command's own CRLF counts as the first), and what goes
on is canonical: every bare LF and every bare CR becomes CRLF, as Postfix 3.9's
``smtpd_forbid_bare_newline = normalize`` reads them, and a "." line that a bare line end
touches is not the end but content, so it goes on dot-stuffed (".."). The server thus never
sees a bare CR or LF, nor a "." line but the last, whatever its ``smtpd_forbid_bare_newline``
says. Normalising rather than refusing (``reject``) keeps the mail of clients that end lines
with a bare LF (scripts, netcat, web applications), as Postfix 3.9's default does. CRLF lines
pass untouched, in chunks as they arrive (no per-line buffering: at most two bytes, a final
"." or CR, wait for the next). After a 334 (AUTH), the caller asks for a :class:`Continuation`
line, which may be longer (RFC 4954 §4: 12288 octets); an over-long line is skipped like any
other and ends the continuation.

Addresses: :func:`mail_path` takes the ``<...>`` path out of a MAIL or RCPT argument, reading
RFC 5321 quoted local parts (``<"a>b"@x>``) whole.

Reply side. ``250-first`` / ``250 last`` lines are assembled into one :class:`ServerReply`;
a reply whose lines disagree on the code, a line that is not ``NNN[ -]text`` or longer than
``max_line``, or more than ``max_lines`` lines is a ProtocolError (the server is broken).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from smtp_policy.core.errors import ProtocolError

#: RFC 5321 §4.5.3.1.4: a command line, CRLF included.
MAX_COMMAND_LINE = 512
#: MAIL/RCPT with the parameters of SIZE (RFC 1870) and DSN (RFC 3461) on top of 512 octets.
MAX_EXTENDED_LINE = 1012
#: RFC 4954 §4: an AUTH continuation line.
MAX_CONTINUATION_LINE = 12288
#: RFC 5321 §4.5.3.1.5 says 512 for a reply line; servers (milters) send up to ~1000. Lenient.
MAX_REPLY_LINE = 4096
#: Postfix's longest replies are EHLO (about 12 lines) and milter replies (32 lines).
MAX_REPLY_LINES = 100

_EXTENDED_VERBS = (b"MAIL", b"RCPT")
_REPLY_LINE = re.compile(rb"([2-5]\d\d)([ -]|\r?$)")
_XTEXT_SAFE = frozenset(range(0x21, 0x7F)) - {ord("+"), ord("=")}
#: A value xtext leaves as it is (the usual address, port and host name): no loop over it.
_XTEXT_PLAIN = re.compile(r"[!-*,-<>-~]*")
#: C0 controls and DEL: no command line may hold one (its CRLF is not part of it).
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_END_OF_DATA = b"\r\n.\r\n"
#: The longest path kept from MAIL/RCPT, angle brackets excluded.
MAX_PATH = 512
_QUOTED_PATH = re.compile(rb'<(?:"(?:[^"\\]|\\[\s\S])*"|[^">])*>')
_PLAIN_PATH = re.compile(rb"<[^>]*>")


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One command line from the client, without its line terminator."""

    line: bytes

    @property
    def verb(self) -> str:
        """The command word, upper-cased ("MAIL", "EHLO"); never any argument."""
        word = self.line.split(None, 1)[0] if self.line.strip() else b""
        return word.decode("ascii", "replace").upper()

    @property
    def argument(self) -> bytes:
        """Everything after the command word, stripped."""
        parts = self.line.split(None, 1)
        return parts[1].strip() if len(parts) > 1 else b""


@dataclass(frozen=True, slots=True)
class Continuation:
    """A line that answers a 334 challenge (an AUTH response), without its terminator."""

    line: bytes


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A command line over the limit; the reader skips it up to its line end."""

    limit: int


@dataclass(frozen=True, slots=True)
class Data:
    """Message bytes with canonical CRLF line ends; ``last`` when they end the message."""

    data: bytes
    last: bool = False


ClientEvent = Command | Continuation | LineTooLong | Data


@dataclass(frozen=True, slots=True)
class ServerReply:
    """One whole server reply: the code and the text of each line (after ``NNN-``/``NNN ``)."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        """The reply as on the wire, lines joined by LF, no final line end."""
        last = len(self.lines) - 1
        return "\n".join(
            f"{self.code}{' ' if i == last else '-'}{line}".rstrip()
            for i, line in enumerate(self.lines)
        )


# -- the client side --------------------------------------------------------------------------

_COMMAND, _CONTINUATION, _DATA = "command", "continuation", "data"
# DATA mode: what precedes the buffer, a CRLF (or the DATA line), a bare CR or LF, or text.
_AFTER_CRLF, _AFTER_BARE, _MID_LINE = "crlf", "bare", "mid"


class CommandReader:
    """Client bytes in, :data:`ClientEvent` values out.

    Feed bytes with :meth:`feed`; call :meth:`next_event` until it returns None. The reader is
    in command mode until :meth:`start_data` (after a 354) or :meth:`expect_continuation`
    (after a 334); it returns to command mode by itself at the end of the message or line.
    """

    __slots__ = (
        "_buf",
        "_data_state",
        "_max_continuation",
        "_max_extended",
        "_max_line",
        "_mode",
        "_skipping",
    )

    def __init__(
        self,
        max_line: int = MAX_COMMAND_LINE,
        max_extended_line: int = MAX_EXTENDED_LINE,
        max_continuation_line: int = MAX_CONTINUATION_LINE,
    ) -> None:
        self._buf = bytearray()
        self._max_continuation = max_continuation_line
        self._max_line = max_line
        self._max_extended = max(max_line, max_extended_line)
        self._mode = _COMMAND
        self._skipping = False
        self._data_state = _AFTER_CRLF

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """How many received bytes wait to be turned into events."""
        return len(self._buf)

    @property
    def in_data(self) -> bool:
        """Whether the reader is passing message bytes through."""
        return self._mode == _DATA

    def start_data(self) -> None:
        """The server said 354: what follows is the message, up to the end-of-data line."""
        self._mode = _DATA
        self._data_state = _AFTER_CRLF

    def expect_continuation(self) -> None:
        """The server said 334: the next line answers it and is not a command."""
        self._mode = _CONTINUATION

    def discard_buffer(self) -> int:
        """Drop everything buffered (bytes pipelined after STARTTLS); return how many."""
        dropped = len(self._buf)
        self._buf.clear()
        self._skipping = False
        return dropped

    def next_event(self) -> ClientEvent | None:
        """The next event, or None when more bytes are needed."""
        if self._mode == _DATA:
            return self._next_data()
        return self._next_line()

    def _next_line(self) -> Command | Continuation | LineTooLong | None:
        while True:
            end = self._buf.find(b"\n")
            if self._skipping:
                if end < 0:
                    self._buf.clear()
                    return None
                del self._buf[: end + 1]
                self._skipping = False
                continue
            limit = self._limit()
            if end < 0 and len(self._buf) < limit:
                return None
            if end < 0 or end + 1 > limit:  # the line is skipped, and so is its role
                del self._buf[: len(self._buf) if end < 0 else end + 1]
                self._skipping = end < 0
                self._mode = _COMMAND
                return LineTooLong(limit)
            line = bytes(self._buf[: end - 1 if self._buf[end - 1 : end] == b"\r" else end])
            del self._buf[: end + 1]
            if self._mode == _CONTINUATION:
                self._mode = _COMMAND
                return Continuation(line)
            return Command(line)

    def _limit(self) -> int:
        if self._mode == _CONTINUATION:
            return self._max_continuation
        if bytes(self._buf[:4]).upper() in _EXTENDED_VERBS:
            return self._max_extended
        return self._max_line

    def _next_data(self) -> Data | None:
        buf = bytes(self._buf)
        # A final CR may start a CRLF, a final "." (or ".\r") the end-of-data line: wait.
        hold = 2 if buf.endswith(b".\r") else 1 if buf.endswith((b".", b"\r")) else 0
        ready = len(buf) - hold
        if ready <= 0:
            return None
        if self._data_state == _AFTER_CRLF and buf.startswith(b".\r\n"):
            end = 3
        else:
            found = buf.find(_END_OF_DATA, 0, ready)
            end = found + len(_END_OF_DATA) if found >= 0 else -1
        size = ready if end < 0 else end
        if size == len(buf):
            self._buf.clear()
        else:
            del self._buf[:size]
        chunk, self._data_state = _normalize(buf, size, self._data_state, ended=end >= 0)
        if end >= 0:
            self._mode = _COMMAND
        return Data(chunk, last=end >= 0)


def _has_bare_line_end(buf: bytes, size: int) -> bool:
    """Whether ``buf[:size]`` holds a CR or LF that is not part of a CRLF.

    Counting in C instead of a regular expression: every CRLF takes one CR and one LF, so
    there is a bare one exactly when there are more CRs or more LFs than CRLFs.
    """
    crlf = buf.count(b"\r\n", 0, size)
    return buf.count(b"\n", 0, size) != crlf or buf.count(b"\r", 0, size) != crlf


def _normalize(buf: bytes, size: int, state: str, *, ended: bool) -> tuple[bytes, str]:
    """``buf[:size]`` with canonical line ends, and the state after it.

    A bare CR or LF becomes CRLF and a "." line that is not the end gets a second dot, so the
    server sees the same lines and the same end as the proxy. ``ended``: ``buf[:size]`` ends
    with the end-of-data line, the one "." line kept as it is. The next byte, ``buf[size]``,
    is known whenever ``buf[:size]`` ends with a CR (the caller holds back a final CR).
    """
    starts_dot_line = state == _AFTER_BARE and buf.startswith((b".\r", b".\n"))
    if not starts_dot_line and not _has_bare_line_end(buf, size):
        chunk = buf if size == len(buf) else buf[:size]  # the usual case: CRLF lines only
        return chunk, _AFTER_CRLF if chunk.endswith(b"\r\n") else _MID_LINE
    out = bytearray()
    pos, line_start = 0, state != _MID_LINE
    last_end = None
    for match in _LINE_END.finditer(buf, 0, size):
        last_end = match
        line = buf[pos : match.start()]
        is_end = ended and match.end() == size
        if line == b"." and line_start and not is_end:
            out += b"."
        out += line + b"\r\n"
        pos, line_start = match.end(), True
    out += buf[pos:size]
    if pos < size:
        return bytes(out), _MID_LINE
    if last_end is None:
        return bytes(out), state
    return bytes(out), _AFTER_CRLF if last_end[0] == b"\r\n" else _AFTER_BARE


# -- the server side --------------------------------------------------------------------------


class ReplyReader:
    """Server bytes in, whole :class:`ServerReply` values out."""

    __slots__ = ("_buf", "_code", "_lines", "_max_line", "_max_lines")

    def __init__(self, max_line: int = MAX_REPLY_LINE, max_lines: int = MAX_REPLY_LINES) -> None:
        self._buf = bytearray()
        self._lines: list[str] = []
        self._code: int | None = None
        self._max_line = max_line
        self._max_lines = max_lines

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned reply."""
        return len(self._buf)

    @property
    def pending(self) -> bool:
        """Whether a reply has started (some lines read) but not ended."""
        return bool(self._lines) or bool(self._buf)

    def next_reply(self) -> ServerReply | None:
        """The next whole reply, or None when more bytes are needed."""
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self._max_line:
                    raise ProtocolError(f"reply line longer than {self._max_line} octets")
                return None
            if end + 1 > self._max_line:
                raise ProtocolError(f"reply line longer than {self._max_line} octets")
            raw = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[: end + 1]
            reply = self._take(raw)
            if reply is not None:
                return reply

    def _take(self, raw: bytes) -> ServerReply | None:
        m = _REPLY_LINE.match(raw)
        if m is None:
            raise ProtocolError(f"not an SMTP reply line: {raw[:40]!r}")
        code = int(m[1])
        if self._code is not None and code != self._code:
            raise ProtocolError(f"reply line with code {code} inside a {self._code} reply")
        if len(self._lines) >= self._max_lines:
            raise ProtocolError(f"reply of more than {self._max_lines} lines")
        self._code = code
        self._lines.append(raw[4:].decode("utf-8", "replace"))
        if m[2] == b"-":
            return None
        reply = ServerReply(code, tuple(self._lines))
        self._lines, self._code = [], None
        return reply


# -- encoding ---------------------------------------------------------------------------------


def has_control(line: bytes) -> bool:
    """Whether a command line (without its line end) holds a C0 control or DEL.

    NUL, a stray CR, TAB and the rest have no place in a command (RFC 5321 §4.1.1: SP
    separates its words) and may read differently to the server (``XCLIENT\\0``).
    """
    return _CONTROL.search(line) is not None


def mail_path(argument: bytes) -> str | None:
    """The path of ``FROM:<a@b> SIZE=1`` or ``TO:<"a>b"@x>``, with its angle brackets.

    A quoted local part (RFC 5321 §4.1.2) may hold ">" and backslash escapes; an unbalanced
    quote falls back to the first ">". The path starts at the first "<" (linear time). None
    without a path or with one over ``MAX_PATH``.
    """
    start = argument.find(b"<")
    if start < 0:
        return None
    found = _QUOTED_PATH.match(argument, start) or _PLAIN_PATH.match(argument, start)
    if found is None or len(found[0]) > MAX_PATH + 2:
        return None
    return found[0].decode("utf-8", "replace")


def encode_command(line: bytes) -> bytes:
    """One command line with its CRLF; a CR or LF inside is a bug in the caller."""
    if b"\r" in line or b"\n" in line:
        raise ValueError("a command line cannot contain CR or LF")
    return line + b"\r\n"


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext: printable ASCII except "+" and "=", the rest as ``+HH``."""
    if _XTEXT_PLAIN.fullmatch(value):
        return value
    return "".join(
        chr(b) if b in _XTEXT_SAFE else f"+{b:02X}" for b in value.encode("utf-8", "replace")
    )


def xclient_command(attributes: Mapping[str, str]) -> bytes:
    """``XCLIENT NAME=value ...`` (Postfix XCLIENT_README), values xtext-encoded."""
    if not attributes:
        raise ValueError("XCLIENT needs at least one attribute")
    parts = " ".join(f"{name}={xtext(value)}" for name, value in attributes.items())
    return encode_command(f"XCLIENT {parts}".encode("ascii"))


def ehlo_keyword(line: str) -> str:
    """The keyword of one EHLO reply line ("SIZE 10240000" -> "SIZE")."""
    return line.split(None, 1)[0].upper() if line.strip() else ""


def filter_ehlo(
    lines: Iterable[str], keep: Iterable[str], add: Iterable[str] = ()
) -> tuple[str, ...]:
    """An EHLO reply's lines with only the ``keep`` keywords, then ``add``; line 1 (the
    server's name) stays as it is."""
    items = list(lines)
    wanted = {k.upper() for k in keep}
    kept = [line for line in items[1:] if ehlo_keyword(line) in wanted]
    present = {ehlo_keyword(line) for line in kept}
    extra = [a for a in add if ehlo_keyword(a) not in present]
    return tuple(items[:1] + kept + extra)
