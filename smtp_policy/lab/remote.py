"""A scripted downstream SMTP server on loopback: answers each recipient from a script."""

from __future__ import annotations

import contextlib
import enum
import re
import socket
import socketserver
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import BinaryIO, Self

from smtp_policy.lab.instance import poll


class NoReply(enum.Enum):
    """Script values that are not replies."""

    STALL = "stall"  #: send nothing; read and drop input until the client hangs up
    CLOSE = "close"  #: close the connection without a reply


STALL = NoReply.STALL
CLOSE = NoReply.CLOSE
ScriptedReply = str | NoReply
"""A scripted reply: SMTP reply text (lines joined by CRLF or LF), or a NoReply."""

# Gmail/Spamhaus/postgrey-style replies, keyed by recipient local part.
SAMPLE_SCRIPT: dict[str, ScriptedReply | Mapping[str, ScriptedReply]] = {
    "nouser": (
        "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
        "550 5.1.1 Learn more at https://support.google.com/mail/?p=NoSuchUser - gsmtp"
    ),
    "full": "452 4.2.2 The email account that you tried to reach is over quota",
    "grey": "450 4.7.1 Greylisted, see http://postgrey.schweikert.ch/help/local.test.html",
    "block": (
        "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org"
    ),
    "timeout": STALL,
    "r421": "421 4.7.0 Try again later, closing connection",
}

_REPLY_LINE = re.compile(r"^[2-5]\d\d([ -]|$)")


def wire_reply(reply: str) -> bytes:
    """Encode a scripted reply as an SMTP reply: ``NNN-`` on every line but the last, CRLF ends.

    Raises:
        ValueError: a line does not start with a reply code, or the lines' codes differ.
    """
    lines = reply.replace("\r\n", "\n").rstrip("\n").split("\n")
    if not all(_REPLY_LINE.match(line) for line in lines) or len({ln[:3] for ln in lines}) != 1:
        raise ValueError(f"not an SMTP reply: {reply!r}")
    last = len(lines) - 1
    out = [f"{ln[:3]}{'-' if i < last else ' '}{ln[4:]}" for i, ln in enumerate(lines)]
    return "".join(f"{ln}\r\n" for ln in out).encode()


@dataclass
class Transaction:
    """One MAIL transaction the scripted server saw."""

    mail_from: str
    rcpt_tos: list[str] = field(default_factory=list)  #: accepted recipients
    refused: dict[str, str] = field(default_factory=dict)  #: recipient -> reply (or "STALL")
    data: bytes | None = None  #: message as received (dot-unstuffed), if DATA completed


class _HangupError(Exception):
    """The conversation ends here (QUIT, CLOSE, 421, or the client left)."""


class _Handler(socketserver.BaseRequestHandler):
    """Hands each accepted connection to its ScriptedServer."""

    server: _TCPServer

    def handle(self) -> None:
        self.server.owner.converse(self.request)


class _TCPServer(socketserver.ThreadingTCPServer):
    """A threading TCP server that knows its ScriptedServer."""

    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True

    def __init__(self, owner: ScriptedServer, host: str) -> None:
        self.owner = owner
        super().__init__((host, 0), _Handler)


class ScriptedServer:
    """A downstream SMTP server on 127.0.0.1 that answers per recipient from a script.

    ``script`` maps a recipient's local part (case-insensitive) to either a ``ScriptedReply``
    for its RCPT TO, or a mapping ``{"RCPT": ..., "DATA": ..., "EOM": ...}`` for several commands;
    ``DATA``/``EOM`` (the reply after the final dot) apply when that recipient was accepted.
    Unscripted commands get ``250``/``354`` replies. Any reply starting ``421`` closes the
    connection after it is sent; ``STALL`` never answers; ``CLOSE`` hangs up. ``greeting`` may
    be scripted the same way. EHLO offers no PIPELINING, so every command waits for its reply.

    Everything received is kept in ``transactions`` and ``commands``; protocol errors in the
    script (malformed replies) land in ``errors`` and make ``stop()`` raise.
    """

    def __init__(
        self,
        script: Mapping[str, ScriptedReply | Mapping[str, ScriptedReply]] | None = None,
        *,
        greeting: ScriptedReply = "220 mx.remote.test ESMTP scripted",
        hostname: str = "mx.remote.test",
    ) -> None:
        self.script: dict[str, ScriptedReply | Mapping[str, ScriptedReply]] = {
            k.lower(): v for k, v in (SAMPLE_SCRIPT if script is None else script).items()
        }
        self.greeting = greeting
        self.hostname = hostname
        self.transactions: list[Transaction] = []
        self.commands: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._server is None:
            raise RuntimeError("ScriptedServer not started")
        return int(self._server.server_address[1])

    @property
    def messages(self) -> list[Transaction]:
        """Transactions whose DATA completed."""
        with self._lock:
            return [t for t in self.transactions if t.data is not None]

    def start(self) -> Self:
        """Listen on a free port of 127.0.0.1 and serve in a background thread."""
        self._server = _TCPServer(self, "127.0.0.1")
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Hang up on every client, stop serving and join all threads.

        Raises:
            AssertionError: the script produced protocol errors while serving.
        """
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None
        if self.errors:
            raise AssertionError("ScriptedServer errors:\n" + "\n".join(self.errors))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_for(self, predicate: Callable[[ScriptedServer], bool], timeout: float = 20.0) -> None:
        """Poll until ``predicate(self)`` holds (e.g. ``lambda s: len(s.messages) == 2``)."""
        poll(lambda: True if predicate(self) else None, timeout, lambda: f"{predicate!r}")

    def reply_for(self, rcpt: str, command: str) -> ScriptedReply | None:
        """The scripted reply to ``command`` for recipient ``rcpt``, if any."""
        entry = self.script.get(rcpt.strip("<>").rsplit("@", 1)[0].lower())
        if entry is None or isinstance(entry, str | NoReply):
            return entry if command == "RCPT" else None
        return entry.get(command)

    # -- the conversation (runs in one thread per connection) ------------------------------

    def converse(self, conn: socket.socket) -> None:
        """Run one SMTP session on ``conn``."""
        with self._lock:
            self._conns.add(conn)
        if self._stopping.is_set():  # accepted just before stop() shut the others down
            return
        reader = conn.makefile("rb")
        try:
            self._send(conn, reader, self.greeting)
            self._session(conn, reader)
        except _HangupError:
            pass
        except OSError:
            pass  # the client hung up, or stop() shut the socket down
        except ValueError as e:  # a malformed scripted reply: a bug in the test
            with self._lock:
                self.errors.append(str(e))
        finally:
            reader.close()
            with self._lock:
                self._conns.discard(conn)

    def _session(self, conn: socket.socket, reader: BinaryIO) -> None:
        """The command loop, after the greeting."""
        txn: Transaction | None = None
        while True:
            line = self._readline(reader)
            with self._lock:
                self.commands.append(line)
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                exts = ("8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8")
                self._send(conn, reader, "\n".join(f"250 {x}" for x in (self.hostname, *exts)))
            elif verb == "HELO":
                self._send(conn, reader, f"250 {self.hostname}")
            elif verb == "MAIL":
                txn = Transaction(mail_from=_address(arg))
                with self._lock:
                    self.transactions.append(txn)
                self._send(conn, reader, "250 2.1.0 Ok")
            elif verb == "RCPT" and txn is None:
                self._send(conn, reader, "503 5.5.1 Error: need MAIL command")
            elif verb == "RCPT" and txn is not None:
                rcpt = _address(arg)
                reply = self.reply_for(rcpt, "RCPT") or "250 2.1.5 Ok"
                with self._lock:
                    if isinstance(reply, NoReply) or not reply.startswith("2"):
                        txn.refused[rcpt] = reply if isinstance(reply, str) else reply.name
                    else:
                        txn.rcpt_tos.append(rcpt)
                self._send(conn, reader, reply)
            elif verb == "DATA" and txn is not None and txn.rcpt_tos:
                self._data(conn, reader, txn)
                txn = None
            elif verb == "DATA":
                self._send(conn, reader, "554 5.5.1 Error: no valid recipients")
            elif verb == "RSET":
                txn = None
                self._send(conn, reader, "250 2.0.0 Ok")
            elif verb == "NOOP":
                self._send(conn, reader, "250 2.0.0 Ok")
            elif verb == "QUIT":
                self._send(conn, reader, "221 2.0.0 Bye")
                raise _HangupError
            else:
                self._send(conn, reader, "502 5.5.2 Error: command not recognized")

    def _data(self, conn: socket.socket, reader: BinaryIO, txn: Transaction) -> None:
        """DATA: the scripted or default 354, the message, then the end-of-data reply."""
        scripted = [self.reply_for(r, "DATA") for r in txn.rcpt_tos]
        reply = next((r for r in scripted if r is not None), "354 End data with <CR><LF>.<CR><LF>")
        self._send(conn, reader, reply)
        if not (isinstance(reply, str) and reply.startswith("354")):
            return
        body = []
        while (line := _rawline(reader)) not in (b".\r\n", b".\n"):
            body.append(line[1:] if line.startswith(b".") else line)
        with self._lock:
            txn.data = b"".join(body)
        scripted = [self.reply_for(r, "EOM") for r in txn.rcpt_tos]
        done = next((r for r in scripted if r is not None), None)
        self._send(conn, reader, done or f"250 2.0.0 Ok: queued as S{len(self.transactions)}")

    def _readline(self, reader: BinaryIO) -> str:
        """The next command line, without CRLF."""
        return _rawline(reader).decode("utf-8", "replace").rstrip("\r\n")

    def _send(self, conn: socket.socket, reader: BinaryIO, reply: ScriptedReply) -> None:
        """Send ``reply`` (or act on STALL/CLOSE); a 421 ends the session after sending."""
        if reply is NoReply.CLOSE:
            raise _HangupError
        if reply is NoReply.STALL:
            with contextlib.suppress(OSError, _HangupError):
                while not self._stopping.is_set():
                    _rawline(reader)
            raise _HangupError
        assert isinstance(reply, str)
        conn.sendall(wire_reply(reply))
        if reply.startswith("421"):
            raise _HangupError


def _rawline(reader: BinaryIO) -> bytes:
    """One line from a socket file; _HangupError at EOF."""
    line = reader.readline()
    if not line:
        raise _HangupError
    return line


def _address(arg: str) -> str:
    """The address in ``FROM:<a@b> SIZE=...`` / ``TO:<a@b>``, without brackets."""
    m = re.search(r"<([^>]*)>", arg)
    return m.group(1) if m else arg.partition(":")[2].strip().split(" ")[0]
