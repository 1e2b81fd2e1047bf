"""Our own milter engine: the milter protocol on asyncio, driving pymilter's Python API.

It replaces libmilter's C threads and keeps ``Milter.Base`` as it is. Per MTA connection,
:class:`MilterConnection` (an :class:`asyncio.Protocol`) decodes frames with
:mod:`smtp_policy.wire.milter` and calls the milter through pymilter's module-level callbacks
(``Milter.negotiate_callback``, ``connect_callback``, ``close_callback``) and its instance
methods, with a :class:`MilterContext` as the ``_ctx`` (what libmilter's ``milterContext``
offers: macros, replies, macro lists, quarantine, progress, header and recipient changes).

Why: libmilter's ``mi_rd_cmd`` polls before each read and treats POLLHUP/POLLERR as the end of
the session before it reads what is queued. On Linux a unix stream socket reports POLLHUP as
soon as the MTA closes its end, so when "no reply" steps are negotiated and the client quits
right after them, Postfix writes the step, ABORT and QUIT, closes, and libmilter never reads
them. Here every received frame is handled, in order, as it arrives; end-of-file only ends
the session after that, so "no reply" is safe on unix sockets too.

The callbacks run on the event loop's thread one at a time (no threads, no locks). A callback
that raises is one ``on_error`` call and CONTINUE (fail open); bytes that break the protocol
close that connection with one ``on_protocol_error`` call. Limits: a frame's size and
contents (the codec's), an idle timeout per connection, and at most ``limit`` connections (a
new one past it closes the one idle longest).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any, Final, cast

import Milter

from smtp_policy.wire import milter as wire

#: Open MTA connections at most (Postfix holds one per smtpd process).
MAX_CONNECTIONS: Final = 1024

_CONTINUE: Final[int] = Milter.CONTINUE
_REJECT: Final[int] = Milter.REJECT
_TEMPFAIL: Final[int] = Milter.TEMPFAIL
_ACCEPT: Final[int] = Milter.ACCEPT
_DISCARD: Final[int] = Milter.DISCARD
_SKIP: Final[int] = Milter.SKIP
_ALL_OPTS: Final[int] = Milter.ALL_OPTS

#: The macro stages, oldest first: libmilter's ``smfi_getsymval`` searches them the other way.
_OLDEST_FIRST: Final = (
    wire.M_CONNECT,
    wire.M_HELO,
    wire.M_ENVFROM,
    wire.M_ENVRCPT,
    wire.M_DATA,
    wire.M_EOM,
    wire.M_EOH,
)
_TRANSACTION_STAGES: Final = (wire.M_ENVFROM, wire.M_ENVRCPT, wire.M_DATA, wire.M_EOM, wire.M_EOH)

ErrorHook = Callable[[BaseException, object], None]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class MilterActionError(RuntimeError):
    """An action the MTA did not grant, or called outside end-of-message."""


class MilterContext:
    """What ``Milter.Base`` calls on its ``_ctx`` (libmilter's ``milterContext``), for one
    MTA connection. Modifications are collected and sent before the end-of-message answer."""

    __slots__ = (
        "_macros",
        "_merged",
        "_priv",
        "_reply",
        "_send",
        "actions",
        "in_eom",
        "negotiating",
        "pending",
        "symlists",
    )

    def __init__(self, send: Callable[[bytes], None]) -> None:
        self._priv: object = None
        self._macros: list[dict[str, str] | None] = [None] * 7
        self._merged: dict[str, str] = {}
        self._reply: str | None = None
        self.symlists: dict[int, bytes] = {}
        self.negotiating = False
        self.in_eom = False
        self.pending: list[bytes] = []
        self._send = send
        self.actions = 0

    # -- what pymilter's Base calls ----------------------------------------------------------

    def getpriv(self) -> object:
        """The milter instance of this connection."""
        return self._priv

    def setpriv(self, priv: object) -> None:
        """Attach the milter instance."""
        self._priv = priv

    def getsymval(self, name: str) -> str | None:
        """A macro's value; ``{x}`` and ``x`` name the same one-letter macro."""
        merged = self._merged
        value = merged.get(name)
        if value is None:
            if len(name) == 3 and name[0] == "{" and name[2] == "}":
                value = merged.get(name[1])
            elif len(name) == 1:
                value = merged.get(f"{{{name}}}")
        return value

    def setreply(self, rcode: str, xcode: str | None = None, *lines: str | None) -> None:
        """The reply for the next REJECT/TEMPFAIL (libmilter's rules: see ``reply_text``)."""
        text = [line for line in lines if line is not None]
        self._reply = wire.reply_text(rcode, xcode, text)

    def setsymlist(self, stage: int, macros: str | bytes) -> None:
        """The macros the MTA should send for ``stage``; only while negotiating."""
        if not self.negotiating:
            raise MilterActionError("setsymlist is only allowed during option negotiation")
        names = macros.encode() if isinstance(macros, str) else bytes(macros)
        if not 0 <= stage < 7 or b"\0" in names or stage in self.symlists:
            raise ValueError(f"bad or repeated macro list for stage {stage}")
        self.symlists[stage] = names

    def quarantine(self, reason: str) -> None:
        """Put the message on hold (end-of-message only)."""
        self._modify(wire.QUARANTINE, wire.quarantine(reason))

    def progress(self) -> None:
        """Tell the MTA we are still working (sent at once)."""
        self._send(wire.response(wire.PROGRESS))

    def addheader(self, field: str, value: str, idx: int = -1) -> None:
        """Append (``idx`` < 0) or insert a header."""
        frame = wire.add_header(field, value) if idx < 0 else wire.insert_header(idx, field, value)
        self._modify(wire.ADDHDRS, frame)

    def chgheader(self, field: str, idx: int, value: str) -> None:
        """Change (an empty value: delete) the ``idx``-th header called ``field``."""
        self._modify(wire.CHGHDRS, wire.change_header(idx, field, value))

    def addrcpt(self, rcpt: str, params: str | None = None) -> None:
        """Add a recipient."""
        self._modify(
            wire.ADDRCPT if params is None else wire.ADDRCPT_PAR, wire.add_recipient(rcpt, params)
        )

    def delrcpt(self, rcpt: str) -> None:
        """Remove a recipient."""
        self._modify(wire.DELRCPT, wire.delete_recipient(rcpt))

    def chgfrom(self, sender: str, params: str | None = None) -> None:
        """Replace the envelope sender."""
        self._modify(wire.CHGFROM, wire.change_sender(sender, params))

    def replacebody(self, chunk: bytes) -> None:
        """Send (a chunk of) the new body."""
        for start in range(0, len(chunk), wire.MAX_DATA):
            self._modify(wire.CHGBODY, wire.replace_body(chunk[start : start + wire.MAX_DATA]))

    # -- what the connection uses ------------------------------------------------------------

    def _modify(self, action: int, frame: bytes) -> None:
        if not self.in_eom:
            raise MilterActionError("message changes are only allowed at end of message")
        if not self.actions & action:
            raise MilterActionError(f"action {action:#x} was not negotiated")
        self.pending.append(frame)

    def take_reply(self) -> str | None:
        """The reply set since the last step (each is used once)."""
        reply, self._reply = self._reply, None
        return reply

    def set_macros(self, stage: int, values: dict[str, str]) -> None:
        """The macros the MTA sent for ``stage`` (they replace that stage's earlier ones)."""
        self._macros[stage] = values
        self._merge()

    def _merge(self) -> None:
        """One lookup table, a newer stage's value first (libmilter searches the stages from
        the newest)."""
        merged: dict[str, str] = {}
        macros = self._macros
        for stage in _OLDEST_FIRST:
            values = macros[stage]
            if values:
                merged.update(values)
        self._merged = merged

    def clear_transaction(self) -> None:
        """Forget the macros of a finished or aborted transaction."""
        for stage in _TRANSACTION_STAGES:
            self._macros[stage] = None
        self._merge()

    def clear_all(self) -> None:
        """Forget every macro and the milter instance (a new SMTP session follows)."""
        self._macros = [None] * 7
        self._merged = {}
        self._priv = None
        self._reply = None


def _hostaddr(connect: wire.Connect) -> tuple[int, object]:
    """``(family, hostaddr)`` as pymilter gives them to ``connect``."""
    address = _text(connect.address)
    if connect.family == b"L":
        return socket.AF_UNIX, address
    if connect.family == b"U":
        return socket.AF_UNSPEC, None
    if address[:5].lower() == "ipv6:":
        address = address[5:]
    with contextlib.suppress(ValueError):  # else kept as the MTA sent it
        address = str(ipaddress.ip_address(address))
    if connect.family == b"6":
        return socket.AF_INET6, (address, connect.port, 0, 0)
    return socket.AF_INET, (address, connect.port)


class MilterConnection(asyncio.Protocol):
    """One MTA connection: frames in, callbacks, answers out."""

    def __init__(self, server: MilterServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._decoder = wire.FrameDecoder()
        self._out: list[bytes] = []
        self._ctx = MilterContext(self._send_now)
        self._offer: wire.OptionNegotiation | None = None
        self._protocol = 0
        self._closed = False
        self._in_transaction = False  # between MAIL and end-of-message or abort
        self.last_active = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._server.opened(self)
        self._arm_timer(self._server.timeout)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        server = self._server
        server.hold_events()
        try:
            then = self._take(data)
        finally:
            server.release_events()  # what was handled is written before any reply goes out
        then()

    def _take(self, data: bytes) -> Callable[[], None]:
        """Handle every whole frame in ``data``; what to do once its events are written:
        answer, close after answering (a broken protocol), or abort (a bug of ours: this
        connection ends, the MTA fails open)."""
        decoder = self._decoder
        decoder.feed(data)
        try:
            while not self._closed and (frame := decoder.next()) is not None:
                self._handle(frame)
        except wire.MilterProtocolError as exc:
            self._server.on_protocol_error(f"milter protocol error, connection closed: {exc}")
            return self.close  # close() sends what is queued first
        except Exception as exc:
            self._server.on_error(exc, self._ctx.getpriv())
            return self.abort
        return self._flush

    def eof_received(self) -> bool:
        # Every frame that arrived before end-of-file has been handled by now.
        self._end_session()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_session()
        if self._timer is not None:
            self._timer.cancel()
        self._server.closed(self)

    # -- the protocol ------------------------------------------------------------------------

    def _handle(self, frame: wire.Frame) -> None:
        command = wire.parse_command(frame)
        if type(command) is wire.OptionNegotiation:
            if self._ctx.getpriv() is not None:  # negotiating again ends the open session
                self._end_session()
                self._closed = False
            self._negotiate(command, answer=True)
            return
        if self._offer is None:
            raise wire.MilterProtocolError(
                f"milter command {frame.command!r} before option negotiation"
            )
        _DISPATCH[type(command)](self, command)

    def _milter(self) -> Any:
        """The session's milter instance (after QUIT_NC, a new one on the same options)."""
        milter = self._ctx.getpriv()
        if milter is None and self._offer is not None:
            self._negotiate(self._offer, answer=False)
            milter = self._ctx.getpriv()
        return milter

    def _reply(self, code: bytes, rc: int) -> None:
        """Answer a step, unless "no reply" was negotiated for it."""
        if self._protocol & wire.NO_REPLY_BIT[code]:
            self._ctx.take_reply()  # the MTA is not waiting
        else:
            self._out.append(self._answer(rc))

    def _on_macros(self, command: wire.Macros) -> None:
        stage = wire.MACRO_STAGE.get(command.stage)
        if stage is not None:  # others (Postfix's for unknown commands) are not kept
            self._ctx.set_macros(stage, {_text(n): _text(v) for n, v in command.pairs})

    def _on_bare(self, command: wire.Bare) -> None:
        code = command.command
        if code == wire.QUIT:
            self._end_session()
            self.close()
        elif code == wire.QUIT_NC:
            self._end_session()
            self._ctx.clear_all()
            self._closed = False  # the connection stays for the next SMTP session
        elif code == wire.ABORT:  # the abort callback only inside a transaction, as libmilter
            if self._in_transaction:
                self._in_transaction = False
                self._call(self._milter().abort)
            self._ctx.clear_transaction()
        elif code == wire.DATA:
            self._reply(code, self._call(self._milter().data))
        else:
            self._reply(code, self._call(self._milter().eoh))

    def _on_connect(self, command: wire.Connect) -> None:
        self._milter()
        family, hostaddr = _hostaddr(command)
        hostname = _text(command.hostname)
        rc = self._call(Milter.connect_callback, self._ctx, hostname, family, hostaddr)
        self._reply(b"C", rc)

    def _on_helo(self, command: wire.Helo) -> None:
        self._reply(b"H", self._call(self._milter().hello, _text(command.name)))

    def _on_mail(self, command: wire.Mail) -> None:
        self._in_transaction = True
        self._reply(b"M", self._call(self._milter().envfrom_bytes, *command.args))

    def _on_rcpt(self, command: wire.Rcpt) -> None:
        self._reply(b"R", self._call(self._milter().envrcpt_bytes, *command.args))

    def _on_header(self, command: wire.Header) -> None:
        rc = self._call(self._milter().header_bytes, _text(command.name), command.value)
        self._reply(b"L", rc)

    def _on_body(self, command: wire.Body) -> None:
        self._reply(b"B", self._call(self._milter().body, command.chunk))

    def _on_unknown(self, command: wire.Unknown) -> None:
        self._reply(b"U", self._call(self._milter().unknown, _text(command.command)))

    def _on_end_of_message(self, command: wire.EndOfMessage) -> None:
        self._end_of_message(self._milter(), command.chunk)

    def _negotiate(self, offer: wire.OptionNegotiation, *, answer: bool) -> None:
        if offer.version < 2:
            raise wire.MilterProtocolError(f"milter protocol version {offer.version} too old")
        self._offer = offer
        ctx = self._ctx
        ctx.clear_all()
        ctx.symlists.clear()
        opts = [offer.actions, offer.protocol, 0, 0]
        ctx.negotiating = True
        try:
            rc = self._call(Milter.negotiate_callback, ctx, opts)
        finally:
            ctx.negotiating = False
        if rc == _CONTINUE:
            actions, protocol = opts[0] & offer.actions, opts[1] & offer.protocol
        else:  # ALL_OPTS or a failure: every step, each with a reply
            actions, protocol = offer.actions & wire.ALL_ACTIONS, 0
        if not answer:
            return  # the MTA keeps what this connection negotiated first
        ctx.actions, self._protocol = actions, protocol
        symlists = tuple(sorted(ctx.symlists.items())) if actions & wire.SETSYMLIST else ()
        version = min(wire.VERSION, offer.version)
        self._out.append(wire.OptionNegotiation(version, actions, protocol, symlists).encode())

    def _end_of_message(self, milter: Any, chunk: bytes) -> None:
        ctx = self._ctx
        rc = _CONTINUE
        if chunk:
            rc = self._call(milter.body, chunk)
        if rc == _CONTINUE:
            ctx.in_eom = True
            try:
                rc = self._call(milter.eom)
            finally:
                ctx.in_eom = False
        self._out.extend(ctx.pending)
        ctx.pending.clear()
        self._out.append(self._answer(rc))
        ctx.clear_transaction()
        self._in_transaction = False

    def _call(self, callback: Callable[..., object], *args: object) -> int:
        """Run a callback; an exception is reported and counts as CONTINUE (fail open)."""
        try:
            rc = callback(*args)
        except Exception as exc:
            self._server.on_error(exc, self._ctx.getpriv())
            return _CONTINUE
        return rc if isinstance(rc, int) else _CONTINUE

    def _answer(self, rc: int) -> bytes:
        """libmilter's answer for a callback's code, with the reply set for it if it fits."""
        reply = self._ctx.take_reply()
        if rc == _REJECT:
            if reply is not None and reply[:1] == "5":
                return wire.reply_code(reply)
            return wire.response(wire.REJECT)
        if rc == _TEMPFAIL:
            if reply is not None and reply[:1] == "4":
                return wire.reply_code(reply)
            return wire.response(wire.TEMPFAIL)
        if rc == _ACCEPT:
            return wire.response(wire.ACCEPT)
        if rc == _DISCARD:
            return wire.response(wire.DISCARD)
        if rc == _SKIP and self._protocol & wire.SKIP:
            return wire.response(wire.SKIP_REST)
        return wire.response(wire.CONTINUE)

    # -- output, idleness, the end -----------------------------------------------------------

    def _flush(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._send_now(data)

    def _send_now(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _end_session(self) -> None:
        """The SMTP session ended (QUIT, end-of-file, a timeout): the close callback, once."""
        ctx = self._ctx
        milter: Any = ctx.getpriv()
        if milter is not None:
            if self._in_transaction:  # cut off mid-transaction: abort first, as libmilter
                self._in_transaction = False
                self._call(milter.abort)
            self._call(Milter.close_callback, ctx)
            ctx.setpriv(None)
        self._closed = True

    def close(self) -> None:
        """Close the connection after what is queued for the MTA."""
        self._closed = True
        if self._transport is not None:
            self._flush()
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once (idle too long, or room for a new one)."""
        if self._transport is not None:
            self._transport.abort()

    def _arm_timer(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        idle = time.monotonic() - self.last_active
        timeout = self._server.timeout
        if idle >= timeout:
            self._server.on_protocol_error(f"milter connection idle for {timeout:g} s, closed")
            self.abort()
        else:
            self._arm_timer(timeout - idle)


def _nothing() -> None:
    """No events to hold or release."""


class MilterServer:
    """The listening side: connections, their limit, and the hooks that report trouble."""

    def __init__(
        self,
        *,
        timeout: float,
        on_error: ErrorHook,
        on_protocol_error: Callable[[str], None],
        limit: int = MAX_CONNECTIONS,
        hold_events: Callable[[], None] = _nothing,
        release_events: Callable[[], None] = _nothing,
    ) -> None:
        self.timeout = timeout
        self.on_error = on_error
        self.on_protocol_error = on_protocol_error
        self.limit = limit
        self.hold_events = hold_events  # a batch of the MTA's commands begins
        self.release_events = release_events  # it was handled: write its events at once
        self.connections: set[MilterConnection] = set()
        self.closed_idle = 0

    def opened(self, connection: MilterConnection) -> None:
        """Track a new connection; past the limit, drop the one idle longest."""
        while len(self.connections) >= self.limit:
            idlest = min(self.connections, key=lambda c: c.last_active)
            self.connections.discard(idlest)
            idlest.abort()
            self.closed_idle += 1
        self.connections.add(connection)

    def closed(self, connection: MilterConnection) -> None:
        """Forget a closed connection."""
        self.connections.discard(connection)

    async def listen(self, sock: socket.socket) -> asyncio.AbstractServer:
        """Start accepting on a bound, listening socket (shared by the worker processes)."""
        loop = asyncio.get_running_loop()
        if sock.family == socket.AF_UNIX:
            return await loop.create_unix_server(lambda: MilterConnection(self), sock=sock)
        return await loop.create_server(lambda: MilterConnection(self), sock=sock)

    def abort_all(self) -> None:
        """Drop every open connection (their sessions end with their close callbacks)."""
        for connection in list(self.connections):
            connection.abort()


_DISPATCH: Final[dict[type, Callable[[MilterConnection, Any], None]]] = {
    wire.Macros: MilterConnection._on_macros,
    wire.Bare: MilterConnection._on_bare,
    wire.Connect: MilterConnection._on_connect,
    wire.Helo: MilterConnection._on_helo,
    wire.Mail: MilterConnection._on_mail,
    wire.Rcpt: MilterConnection._on_rcpt,
    wire.Header: MilterConnection._on_header,
    wire.Body: MilterConnection._on_body,
    wire.Unknown: MilterConnection._on_unknown,
    wire.EndOfMessage: MilterConnection._on_end_of_message,
}
