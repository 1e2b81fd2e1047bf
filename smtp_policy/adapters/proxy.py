"""The SMTP front proxy: every reply to a client customizable and recorded, Postfix behind it.

Theory of operation
-------------------
One :class:`ProxySession` per client connection, with an :class:`asyncio.Protocol` for each
of its two connections (the client's is taken over from the server's stream once the
greeting is out); no task and no timer per read or per reply:

* the *client pump* (``_pump``, run from ``_Client.data_received``) feeds client bytes to a
  :class:`~smtp_policy.wire.smtp.CommandReader` and handles each whole command as it arrives:
  a command Postfix answers is queued and forwarded at once, as the client pipelined it, and
  message bytes are passed on in the chunks they came in. What the proxy handles itself
  (XCLIENT/XFORWARD/BDAT/ETRN are refused, and AUTH unless ``offer_auth``; STARTTLS is
  terminated here; over-long lines and lines with a control character get 500 5.5.2), the
  opening of the inner session, an AUTH continuation and the end of the session are *slow
  steps*: one task at a time, the pump stopped until it is done;
* Postfix's bytes go into a :class:`~smtp_policy.wire.smtp.ReplyReader` as they arrive
  (``_Upstream.data_received``), and each whole reply is sent to the client in that callback.

The two meet in ``_pending``, a FIFO of the commands still owed a reply. Forwarded commands
are appended *before* their bytes go out, so a reply always finds its command at the head; the
proxy's own replies (refusals, 500s) sit in the same queue and are sent when they reach the
head, so the client hears every reply in the order of its commands even when it pipelines.
The queue is bounded (``max_pipeline``): when it is full the client pump stops, and past
``2 * READ_SIZE`` unhandled bytes the client's transport stops reading, so TCP pushes back on
the client (as it does while Postfix's side is over its write-buffer limit). Commands whose
reply decides how the following bytes are read are *barriers*: after DATA the pump stops
until the reply and switches the reader to message mode only on 354; after a 334 the next
line is an AUTH continuation; after QUIT nothing more.

Message bytes go upstream with canonical CRLF line ends (dot-stuffing untouched): the reader
ends a message only at CRLF "." CRLF, turns bare CR and LF into CRLF and stuffs any other "."
line, so that Postfix sees the same end whatever its ``smtpd_forbid_bare_newline`` (no SMTP
smuggling, see ``wire/smtp.py``). Nothing is ever accepted locally: the client hears Postfix's
own reply to the final dot.

STARTTLS (RFC 3207) is answered only between transactions (503 5.5.1 after a MAIL that
Postfix accepted, until the transaction ends) and never renegotiated. After the handshake the
proxy forgets the HELO name and sends XCLIENT again, which resets the inner session as if the
client had just connected (Postfix answers with a new 220 that the client does not see), so
nothing said in plaintext carries over and the client must EHLO again. Postfix's XCLIENT has no
attribute for TLS (NAME, REVERSE_NAME, ADDR, PORT, PROTO, HELO, LOGIN, DESTADDR, DESTPORT), so
Postfix's Received header says ESMTP, not ESMTPS: the proxy's ``tls`` and reply events record
the TLS version and cipher instead.

The proxy greets the client itself, with Postfix's own greeting (learnt once from the inner
listener, then from every inner session; ``<hostname> ESMTP`` if Postfix cannot be asked),
rewritten by the admin's ``[banner]``. It opens the inner connection only at the client's
first command that Postfix's smtpd knows (EHLO, HELO, MAIL, ...), the way postscreen keeps
idle clients away from smtpd: until then a client has ``greet_timeout`` to speak, unknown
commands get 502 5.5.2 and QUIT 221 from the proxy, and each client address has at most
``max_per_address`` sessions. The inner session starts with Postfix's greeting (read and
consumed) and ``XCLIENT ADDR= PORT= NAME=`` (the real client; ``NAME`` forward-confirmed or
``[UNAVAILABLE]``); Postfix answers with a fresh greeting, consumed too, or with 421/554 when a
milter or policy refuses the client: that reply answers the client's first command. HELO
and PROTO need no XCLIENT: the client's own EHLO/HELO, sent next, sets both. Postfix must
trust the proxy (``smtpd_authorized_xclient_hosts``); if it refuses XCLIENT the proxy fails
closed (421), as otherwise every client would look like the proxy's own trusted address.

Hostile clients: the proxy counts its own error replies as smtpd does (past
``soft_error_limit`` each waits ``error_sleep``, past ``hard_error_limit`` 421 4.7.0 and
close), waits for the client to read what it was sent before reading more, and cuts a client
that leaves more than ``max_unread`` reply bytes unread (or any for ``idle_timeout``). A run
of identical refusals is recorded as its first reply plus one event with ``repeated``.

Every reply to the client, Postfix's or the proxy's own, goes through :meth:`_answer`: it is
explained by the core, rewritten by the admin's texts (220 greeting, 221 goodbye, any 4xx/5xx
by code, enhanced code or reason), filtered (EHLO keywords), passed through the one sanitizer
(``sanitize_reply``) and recorded as one ``reply`` event with the original and the sent text.

Cost: the daemon runs on uvloop when it is installed (``smtp-policy proxy --event-loop``).
Both sides are handled in their protocols' callbacks; the waits for client bytes share one
idle timer that each wait moves forward, and Postfix's silence is one timer per
``reply_timeout``; what one callback makes for a peer leaves in one write, DATA chunks go to
the transport without another copy, and each distinct reply is explained, sanitized and
encoded once (bounded caches on the service), as is each ``[banner]`` text per value of its
placeholders and each reply's part of its events (``event_fields``); what a message costs
beyond that is mostly its reply events and the kernel's work for two connections.

Faults: upstream unreachable, closed mid-session, silent or speaking garbage -> 421 4.3.0 and
close. Client gone -> QUIT upstream when the session is between commands, a plain close in
the middle of a message (Postfix then discards it). Idle and total session time are bounded,
as are the number of sessions (421 4.7.0 beyond it) and every buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import re
import socket
import ssl
import string
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from types import MappingProxyType
from typing import Any, Protocol, cast

from smtp_policy.config import BannerConfig, Config
from smtp_policy.core.errors import ProtocolError
from smtp_policy.core.events import (
    TEXT_CAP,
    Direction,
    EventKind,
    Source,
    capped,
    described_fields,
    event_fields,
)
from smtp_policy.core.explain import explain_text
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import EnhancedCode, Explanation
from smtp_policy.core.sanitize import sanitize_reply
from smtp_policy.core.texts import (
    PLACEHOLDERS,
    TextsConfig,
    audience_of,
    render_reply_text,
    render_template,
)
from smtp_policy.emit import EventWriter
from smtp_policy.wire.smtp import (
    ClientEvent,
    Command,
    CommandReader,
    Continuation,
    Data,
    LineTooLong,
    ReplyReader,
    ServerReply,
    encode_command,
    filter_ehlo,
    has_control,
    mail_path,
    xclient_command,
)

#: EHLO keywords passed on to clients; everything else Postfix offers is dropped.
KEEP_KEYWORDS = ("SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "PIPELINING", "SMTPUTF8", "DSN")
#: Commands the proxy answers 502 itself and never forwards: they would either hand the
#: client Postfix's trust in the proxy (XCLIENT, XFORWARD) or need handling the proxy lacks.
REFUSED_VERBS = frozenset({"XCLIENT", "XFORWARD", "BDAT", "ETRN"})
#: Commands that open the inner connection when they come first: what Postfix's smtpd knows.
#: Until one arrives the proxy answers alone (postscreen-like), so idle or garbage-speaking
#: clients take no smtpd process.
OPENING_VERBS = frozenset(
    {"EHLO", "HELO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "VRFY", "EXPN", "HELP", "AUTH"}
)
READ_SIZE = 65536
#: Distinct replies whose explanation and sanitized wire form are kept (Postfix repeats a few
#: hundred texts; a full cache starts afresh).
CACHED_REPLIES = 4096

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
_ENHANCED_PREFIX = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: +|$)")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


class ReplyTexts(Protocol):
    """The admin's reply texts; each method returns the new lines, or None to keep the text.

    ``context`` holds the session facts a template may use (``texts.CONTEXT_KEYS``:
    hostname, date, client_addr, client_name, sender, recipient, queue_id).
    """

    def greeting(self, upstream: Explanation, context: Mapping[str, str]) -> Sequence[str] | None:
        """Lines of the 220 greeting, given Postfix's own greeting."""

    def goodbye(self, upstream: Explanation, context: Mapping[str, str]) -> Sequence[str] | None:
        """Lines of the 221 reply to QUIT."""

    def rewrite(self, explanation: Explanation, context: Mapping[str, str]) -> Sequence[str] | None:
        """Lines of a 4xx/5xx reply, chosen by its code, enhanced code or reason."""


class KeepTexts:
    """No admin texts: Postfix's replies keep their text, the proxy's own use its defaults."""

    def greeting(self, upstream: Explanation, context: Mapping[str, str]) -> Sequence[str] | None:
        """Keep Postfix's greeting."""
        return None

    def goodbye(self, upstream: Explanation, context: Mapping[str, str]) -> Sequence[str] | None:
        """Keep Postfix's goodbye."""
        return None

    def rewrite(self, explanation: Explanation, context: Mapping[str, str]) -> Sequence[str] | None:
        """Keep every failure text."""
        return None


class ConfiguredTexts:
    """The admin's configuration: ``[banner]`` for 220/221, ``[texts]`` for every 4xx/5xx.

    The audience of a failure text is ``internal`` for clients in ``internal_networks``.
    """

    def __init__(self, texts: TextsConfig, banner: BannerConfig) -> None:
        self._texts = texts
        self._banner = banner
        self._greeting = _BannerTemplate(banner.greeting, 220)
        self._goodbye = _BannerTemplate(banner.goodbye, 221)

    def greeting(self, upstream: Explanation, context: Mapping[str, str]) -> Sequence[str] | None:
        """``[banner] greeting``."""
        return self._greeting.render(context)

    def goodbye(self, upstream: Explanation, context: Mapping[str, str]) -> Sequence[str] | None:
        """``[banner] goodbye``."""
        return self._goodbye.render(context)

    def rewrite(self, explanation: Explanation, context: Mapping[str, str]) -> Sequence[str] | None:
        """``[texts]``: enhanced code, then code, then reason, then the default text."""
        audience = audience_of(context.get("client_addr", ""), self._texts)
        return render_reply_text(self._texts, explanation, context, audience)


class _BannerTemplate:
    """A ``[banner]`` template, rendered once per distinct value of the placeholders it uses
    (``{hostname} ESMTP`` once per host name, not once per session)."""

    def __init__(self, template: str, code: int) -> None:
        self.template = template
        self.code = code
        self.names = _placeholders(template)  # None: rendered every time
        self._rendered: dict[tuple[str, ...], list[str]] = {}

    def render(self, context: Mapping[str, str]) -> list[str]:
        """The template filled in with ``context`` and sanitized."""
        if self.names is None:
            return render_template(self.template, context, code=self.code)
        key = tuple(context.get(name, "") for name in self.names)
        lines = self._rendered.get(key)
        if lines is None:
            lines = render_template(self.template, context, code=self.code)
            if len(self._rendered) >= CACHED_REPLIES:
                self._rendered.clear()
            self._rendered[key] = lines
        return list(lines)


def _placeholders(template: str) -> tuple[str, ...] | None:
    """The placeholders a template uses, or None when that is not plain (an index, an
    attribute, a nested field, a brace error): such a template is never cached."""
    try:
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(template)]
    except ValueError:
        return None
    names = {name for name, _ in fields if name is not None}
    if any(spec and "{" in spec for _, spec in fields) or not names <= PLACEHOLDERS:
        return None
    return tuple(sorted(names))


def _local(code: int, text: str) -> ServerReply:
    """One of the proxy's own replies, in the form Postfix's replies arrive in."""
    return ServerReply(code, (text,))


#: The proxy's own replies (default texts; the admin's texts apply to them as to Postfix's).
UPSTREAM_DOWN = _local(421, "4.3.0 Mail system temporarily unavailable")
UPSTREAM_LOST = _local(421, "4.3.0 Mail server temporarily unavailable, closing connection")
TOO_MANY = _local(421, "4.7.0 Too many connections, please try again later")
TIMED_OUT = _local(421, "4.4.2 Timeout exceeded, closing connection")
NOT_IMPLEMENTED = _local(502, "5.5.1 Command not implemented")
LINE_TOO_LONG = _local(500, "5.5.2 Line too long")
CONTROL_CHARACTER = _local(500, "5.5.2 Syntax error: control character in command")
IN_TRANSACTION = _local(503, "5.5.1 Error: MAIL transaction in progress")
TLS_READY = _local(220, "2.0.0 Ready to start TLS")
TLS_ACTIVE = _local(503, "5.5.1 TLS already active")
TLS_SYNTAX = _local(501, "5.5.4 Syntax: STARTTLS")
NOT_RECOGNIZED = _local(502, "5.5.2 Error: command not recognized")
TOO_MANY_FROM_YOU = _local(421, "4.7.0 Error: too many connections from your address")
TOO_MANY_ERRORS = _local(421, "4.7.0 Error: too many errors")
GOODBYE = _local(221, "2.0.0 Bye")

Resolver = Callable[[str], Awaitable[str | None]]


async def forward_confirmed_name(addr: str) -> str | None:
    """The client's host name if its reverse lookup resolves back to ``addr``, else None."""
    loop = asyncio.get_running_loop()
    try:
        host, _ = await loop.getnameinfo((addr, 0), socket.NI_NAMEREQD)
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None
    return host if any(info[4][0] == addr for info in infos) else None


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Where the inner Postfix listens, TLS, and the proxy's limits."""

    upstream_host: str = "127.0.0.1"
    upstream_port: int = 10026
    upstream_path: str | None = None  # a unix socket instead of host and port
    tls: ssl.SSLContext | None = None
    max_connections: int = 200
    max_pipeline: int = 100
    idle_timeout: float = 300.0
    session_timeout: float = 3600.0
    connect_timeout: float = 30.0
    reply_timeout: float = 600.0
    resolve_timeout: float = 5.0
    tls_handshake_timeout: float = 60.0
    keep_keywords: tuple[str, ...] = KEEP_KEYWORDS
    #: Pass Postfix's AUTH on (EHLO keyword and command); off, AUTH gets 502 5.5.1 here.
    offer_auth: bool = False
    max_per_address: int = 50  # sessions from one client address (421 4.7.0 beyond)
    greet_timeout: float = 30.0  # for the first command, before any inner connection
    soft_error_limit: int = 10  # the proxy's own error replies before each waits error_sleep
    hard_error_limit: int = 20  # beyond it: 421 4.7.0 and close
    error_sleep: float = 1.0
    max_unread: int = 65536  # reply bytes a client may leave unread before it is dropped
    #: ``each``: one reply event per reply; ``failures``: reply events for 4xx/5xx only, and
    #: one ``session`` event per connection that counts every reply (fewer events to write).
    reply_events: str = "each"


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server-side TLS context from the admin's certificate chain and key (PEM files).

    Renegotiation is off (TLS 1.2 and older have it; a client could use it to make the
    proxy spend a handshake's CPU at will).
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    ctx.load_cert_chain(cert, key)
    return ctx


class ProxyService:
    """Accepts client connections and runs one :class:`ProxySession` for each."""

    def __init__(
        self,
        settings: ProxySettings,
        kb: KnowledgeBase,
        events: EventWriter,
        texts: ReplyTexts | None = None,
        resolver: Resolver = forward_confirmed_name,
    ) -> None:
        self.settings = settings
        self.kb = kb
        self.events = events
        self.texts: ReplyTexts = texts if texts is not None else KeepTexts()
        self.resolver = resolver
        self.active = 0
        self.hostname = socket.gethostname()  # until Postfix's greeting names the server
        self.per_address: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._greeting: ServerReply | None = None
        self._greeting_lock = asyncio.Lock()
        self._at_cap: dict[str, _CapRefusals] = {}
        self._rendered: dict[tuple[ServerReply, tuple[str, ...] | None], tuple[bytes, str]] = {}
        self._described: dict[tuple[str | None, str | None], Mapping[str, object]] = {}
        self._ehlo: dict[tuple[ServerReply, bool], tuple[str, ...]] = {}

    # A reply that names a queue id ("250 2.0.0 Ok: queued as 4ABCDEF", one per message) is
    # worked out with the id masked, so that it is not a new text for every cache: the
    # explanation does not depend on the id, and the id is put back into what is sent and
    # recorded (when the masked form holds the mask exactly once; otherwise the long way).

    def explain(self, text: str, queue_id: str | None = None) -> Explanation:
        """The core's explanation of a reply text (``explain_text`` remembers each one)."""
        if queue_id:
            text = text.replace(queue_id, _queue_id_mask(queue_id))
        return explain_text(text, self.kb)

    def render(
        self, reply: ServerReply, lines: Sequence[str] | None, queue_id: str | None = None
    ) -> tuple[bytes, str]:
        """``reply`` (with ``lines`` instead of its text, if given) sanitized: its bytes on
        the wire and its lines joined by LF; worked out once per distinct reply and lines
        (and ``queue_id``, which the reply names, once for all ids)."""
        if queue_id and lines is None:
            mask = _queue_id_mask(queue_id)
            masked = ServerReply(reply.code, tuple(x.replace(queue_id, mask) for x in reply.lines))
            wire, friendly = self._render(masked, None)
            wire_mask = mask.encode("ascii")
            if wire.count(wire_mask) == 1 and friendly.count(mask) == 1:
                sent = wire.replace(wire_mask, queue_id.encode("ascii"))
                return sent, friendly.replace(mask, queue_id)
        return self._render(reply, lines)

    def _render(self, reply: ServerReply, lines: Sequence[str] | None) -> tuple[bytes, str]:
        key = (reply, None if lines is None else tuple(lines))
        rendered = self._rendered.get(key)
        if rendered is None:
            enhanced, body = _split_enhanced(reply)
            safe = sanitize_reply(reply.code, enhanced, body if lines is None else lines)
            if len(self._rendered) >= CACHED_REPLIES:
                self._rendered.clear()
            rendered = self._rendered[key] = (safe.wire().encode("ascii"), "\n".join(safe.lines))
        return rendered

    def ehlo_lines(self, reply: ServerReply, offer_tls: bool) -> tuple[str, ...]:
        """Postfix's EHLO reply with only the keywords the proxy passes on (and STARTTLS when
        ``offer_tls``); worked out once per distinct reply."""
        key = (reply, offer_tls)
        lines = self._ehlo.get(key)
        if lines is None:
            cfg = self.settings
            keep = (*cfg.keep_keywords, *(("AUTH",) if cfg.offer_auth else ()))
            lines = filter_ehlo(reply.lines, keep, ("STARTTLS",) if offer_tls else ())
            if len(self._ehlo) >= CACHED_REPLIES:
                self._ehlo.clear()
            self._ehlo[key] = lines
        return lines

    def described(
        self,
        explanation: Explanation | None,
        text: str | None,
        friendly: str | None,
        queue_id: str | None = None,
    ) -> Mapping[str, object]:
        """The reply's part of an event (``described_fields``), worked out once per distinct
        reply as sent (and ``queue_id``, which it names, once for all ids); an error event's
        text (no explanation) is not kept."""
        if explanation is None:
            if text is None and friendly is None:  # a session event: always the same
                return _NOTHING_DESCRIBED
            return described_fields(None, text, friendly)
        if queue_id and text and friendly:
            mask = _queue_id_mask(queue_id)
            masked_text = text.replace(queue_id, mask)
            masked_friendly = friendly.replace(queue_id, mask)
            if masked_text.count(mask) == 1 and masked_friendly.count(mask) == 1:
                masked = self.described(explanation, masked_text, masked_friendly)
                return {
                    **masked,
                    "text": capped(text, TEXT_CAP),
                    "friendly": capped(friendly, TEXT_CAP),
                }
        key = (text, friendly)
        described = self._described.get(key)
        if described is None:
            if len(self._described) >= CACHED_REPLIES:
                self._described.clear()
            described = self._described[key] = described_fields(explanation, text, friendly)
        return described

    def reconfigure(self, config: Config) -> None:
        """Take the admin's texts from a (re)loaded configuration; sessions pick them up."""
        self.texts = ConfiguredTexts(config.texts, config.banner)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection (the ``start_server`` callback)."""
        session = ProxySession(self, f"proxy-{next(self._ids)}", reader, writer)
        if self.active >= self.settings.max_connections:
            await session.refuse(TOO_MANY, self._cap_tally("global"))
            return
        addr = session.client_addr or ""
        if self.per_address[addr] >= self.settings.max_per_address:
            await session.refuse(TOO_MANY_FROM_YOU, self._cap_tally(f"address {addr}"))
            return
        self.active += 1
        self.per_address[addr] += 1
        try:
            await session.run()
        finally:
            self.active -= 1
            self.per_address[addr] -= 1
            if not self.per_address[addr]:
                del self.per_address[addr]

    def _cap_tally(self, key: str) -> _CapRefusals:
        """The refusals at one cap (global, or one client address). At most
        :data:`MAX_CAP_TALLIES` are kept: a flood from many addresses cannot grow the table;
        the quietest go first, their held counts written out."""
        tally = self._at_cap.get(key)
        if tally is None:
            if len(self._at_cap) >= MAX_CAP_TALLIES:
                now = int(time.monotonic())
                quiet = [k for k, t in self._at_cap.items() if t.second < now]
                for gone in quiet or list(self._at_cap)[: len(self._at_cap) // 2]:
                    self._at_cap.pop(gone).write_held()
            tally = self._at_cap[key] = _CapRefusals()
        return tally

    async def open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to the inner smtpd (TCP or unix socket)."""
        cfg = self.settings
        if cfg.upstream_path is not None:
            return await asyncio.open_unix_connection(cfg.upstream_path)
        return await asyncio.open_connection(cfg.upstream_host, cfg.upstream_port)

    async def connect_upstream(self, session: ProxySession) -> _Upstream:
        """A new connection to the inner smtpd (TCP or unix socket), read by ``session``."""
        cfg = self.settings
        loop = asyncio.get_running_loop()
        if cfg.upstream_path is not None:
            _, upstream = await loop.create_unix_connection(
                lambda: _Upstream(session), cfg.upstream_path
            )
        else:
            _, upstream = await loop.create_connection(
                lambda: _Upstream(session), cfg.upstream_host, cfg.upstream_port
            )
        return upstream

    async def greeting(self) -> ServerReply:
        """Postfix's own greeting, learnt once from the inner listener (then from each session).

        The proxy greets clients itself, before any inner connection, with this reply (the
        admin's ``[banner]`` rewrites it); if Postfix cannot be asked, ``<hostname> ESMTP``.
        """
        if self._greeting is not None:  # known: no lock to take
            return self._greeting
        async with self._greeting_lock:
            if self._greeting is None:
                self._greeting = await self._probe_greeting()
        return self._greeting

    def learn_greeting(self, reply: ServerReply) -> None:
        """Keep Postfix's latest 220 greeting (and the host name it starts with)."""
        if reply.code == 220 and reply.lines:
            self._greeting = reply
            self.hostname = _first_word(reply.lines[0]) or self.hostname

    async def _probe_greeting(self) -> ServerReply:
        fallback = ServerReply(220, (f"{self.hostname} ESMTP",))
        writer = None
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                reader, writer = await self.open_upstream()
                replies = ReplyReader()
                while (reply := replies.next_reply()) is None:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        return fallback
                    replies.feed(data)
                writer.write(encode_command(b"QUIT"))
        except (OSError, TimeoutError, ProtocolError):
            return fallback
        finally:
            if writer is not None:
                writer.close()
        self.learn_greeting(reply)
        return self._greeting or fallback


#: The queue ids a ``session`` event lists at most (its ``messages`` counts them all).
MAX_SESSION_QUEUE_IDS = 100

#: The connection caps whose refusals are tallied at once (one per refusing client address).
MAX_CAP_TALLIES = 1024


@dataclass(slots=True)
class _CapRefusals:
    """The refusals at one connection cap (global, or one client address): at most one
    ``reply`` event a second; the ones between are counted, and the count is written as one
    event with ``repeated`` at the next second's refusal, or a second later."""

    second: int = -1  # the monotonic second of the last recorded refusal
    held: int = 0  # refusals sent since then, not recorded
    wire: bytes = b""  # the last recorded refusal as sent
    record: dict[str, Any] | None = None  # and its event's fields
    recorder: ProxySession | None = None  # the session that wrote it
    flush: asyncio.TimerHandle | None = None

    def write_held(self) -> None:
        """Write the count of the refusals held back (if any) as one event."""
        if self.flush is not None:
            self.flush.cancel()
            self.flush = None
        if self.held and self.record is not None and self.recorder is not None:
            self.recorder.record_repeats(self.record, self.held)
        self.held = 0


@dataclass(slots=True)
class _Pending:
    """A command owed a reply; ``local`` holds the proxy's own reply when it answers itself."""

    verb: str | None
    stage: str
    local: ServerReply | None = None
    done: asyncio.Future[ServerReply] | None = None
    sender: str | None = None
    recipient: str | None = None
    quiet: bool = False  # the proxy's own command (XCLIENT after STARTTLS): no client reply
    origin: str = "proxy"  # who wrote ``local``: the proxy, or Postfix (its refusal at connect)


@dataclass(frozen=True, slots=True)
class _EventParts:
    """What one event of a session says, taken when it happened (written a little later)."""

    event: EventKind
    ts: datetime
    described: Mapping[str, object]
    extra: dict[str, object]
    stage: str | None
    queue_id: str | None
    client_name: str | None
    helo: str | None
    sender: str | None
    recipient: str | None


class _ClientGoneError(Exception):
    """The client closed the connection (or the TLS handshake failed)."""


class _ClientStuckError(Exception):
    """The client leaves its replies unread (past ``max_unread`` bytes, or for idle_timeout)."""


class _UpstreamGoneError(Exception):
    """Postfix closed the connection, went silent or sent something that is not SMTP."""


@dataclass(slots=True)
class _Peer:
    """Who the client is, as far as events and XCLIENT are concerned."""

    addr: str | None = None
    port: int | None = None
    name: str | None = None
    helo: str | None = None
    sender: str | None = None
    hostname: str = ""
    tls: dict[str, object] = field(default_factory=dict)


class _Connection(asyncio.Protocol):
    """One of the session's two connections: its transport, and waiting while its write buffer
    is over the limit (``drain``)."""

    def __init__(self, session: ProxySession) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None
        self.paused = False  # the write buffer is over its limit
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    @property
    def closing(self) -> bool:
        """Whether the connection is closed or closing (nothing more goes out)."""
        return self.transport is None or self.transport.is_closing()

    def write(self, data: bytes | bytearray) -> None:
        """Send ``data`` unless the connection is closing."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the write buffer is over its limit (until it is not)."""
        if self.paused and not self.closing:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def close(self) -> None:
        """Close the connection (what is buffered still goes out)."""
        if self.transport is not None:
            self.transport.close()


class _Upstream(_Connection):
    """The inner connection: Postfix's bytes are handed to the session as they arrive and its
    replies handled in the same callback (no task, no read and no timer per reply)."""

    def data_received(self, data: bytes) -> None:
        self.session.upstream_data(data)

    def eof_received(self) -> bool:
        self.session.upstream_lost("connection closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.upstream_lost("connection closed" if exc is None else _describe(exc))
        super().connection_lost(exc)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.session.upstream_writable()


class _Client(_Connection):
    """The client's connection, taken over from the server's stream once the greeting is out:
    its bytes are handled as they arrive (``ProxySession.client_data``), no task per read."""

    def __init__(self, session: ProxySession, transport: asyncio.Transport) -> None:
        super().__init__(session)
        self.transport = transport
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.session.client_data(data)

    def eof_received(self) -> bool:
        self.session.client_eof()
        # Half-closed: the replies still owed can go out (TLS cannot stay half-open).
        return self.transport is not None and self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.client_eof()
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)


class ProxySession:
    """One client connection and its connection to the inner Postfix."""

    # The client's side (see _pump), each session starting from these: what stops the client's
    # commands being handled as they arrive, and the wait for its bytes.
    _slow: asyncio.Task[None] | None = None  # a step that waits (_start_slow)
    _barrier: _Pending | None = None  # a command whose reply decides what follows
    _held = False  # Postfix's side is over its write-buffer limit (DATA)
    _full = False  # max_pipeline replies are owed
    _pump_again = False  # something unblocked the pump during a callback
    _waiting = False  # the pump waits for client bytes (the idle timer runs)
    _input: asyncio.Future[None] | None = None  # a slow step waits for client bytes
    _wait_started = 0.0  # loop time the current wait for client bytes began
    _idle: asyncio.TimerHandle | None = None
    _eof = False  # the client sent EOF or the connection is gone
    _reading_paused = False  # too many client bytes buffered unhandled
    _flush_scheduled = False  # a call_soon of _flush_io is pending

    def __init__(
        self,
        service: ProxyService,
        session_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._svc = service
        self._cfg = service.settings
        self._id = session_id
        self._client_r = reader
        self._client_w = writer
        self._client_t = cast(asyncio.Transport, writer.transport)  # TLS replaces it
        self._client: _Client | None = None  # the client's protocol, once taken over
        self._up: _Upstream | None = None
        self._commands = CommandReader()
        self._replies = ReplyReader()
        self._pending: deque[_Pending] = deque()
        self._slow_verbs = (
            REFUSED_VERBS | {"STARTTLS"} | (frozenset() if self._cfg.offer_auth else {"AUTH"})
        )
        self._peer = _peer_of(writer)
        self._peer.hostname = service.hostname
        self._in_data = False
        self._in_transaction = False
        self._xclient_sent: dict[str, str] = {}
        self._quit_sent = False
        self._to_client = bytearray()
        self._to_upstream = bytearray()
        self._batching = False  # in a callback that flushes when it ends: no call_soon
        self._deferred: list[_EventParts] = []  # its events, written after its bytes
        self._background: set[asyncio.Task[None]] = set()
        self._relaying = False  # Postfix accepted XCLIENT: its replies answer the client
        self._early: deque[ServerReply] = deque()  # its replies before that (_open reads them)
        self._early_waiter: asyncio.Future[None] | None = None
        self._upstream_gone: str | None = None  # why the inner connection ended, once it has
        self._ended: asyncio.Future[None] | None = None  # set when upstream ends the session
        self._last_heard = 0.0  # loop time of Postfix's last bytes
        self._silence: asyncio.TimerHandle | None = None
        self._errors = 0  # the proxy's own error replies so far
        self._run: tuple[int, str, str | None, str | None] | None = None  # repeated refusal
        self._run_wire = b""
        self._run_record: dict[str, Any] | None = None  # its first event
        self._run_count = 0  # repeats of it sent but not yet recorded
        self._only_failures = self._cfg.reply_events == "failures"
        self._started = time.monotonic()
        self._replies_by_stage: Counter[str] = Counter()  # for the session event
        self._messages = 0
        self._queue_ids: list[str] = []

    # -- lifecycle --------------------------------------------------------------------------

    async def refuse(self, reply: ServerReply, tally: _CapRefusals | None = None) -> None:
        """Answer ``reply`` (421 4.7.0: too many connections) and close, upstream untouched.

        With ``tally`` (the cap's refusals so far), at most one event a second is written;
        the refusals between are counted into one event with ``repeated``.
        """
        second = int(time.monotonic())
        if tally is not None and tally.record is not None and tally.second == second:
            tally.held += 1
            self._to_client += tally.wire
            self._schedule_flush()
            if tally.flush is None:
                tally.flush = asyncio.get_running_loop().call_later(1.0, tally.write_held)
        else:
            if tally is not None:
                tally.write_held()
            record = self._answer(reply, _Pending(None, "connect"), origin="proxy")
            if tally is not None:
                tally.second, tally.wire, tally.record = second, bytes(self._to_client), record
                tally.recorder = self
        await self._close()

    def record_repeats(self, record: dict[str, Any], count: int) -> None:
        """One event for ``count`` more replies like ``record`` that were sent unrecorded."""
        self._emit(EventKind.REPLY, **{**record, "extra": {**record["extra"], "repeated": count}})

    @property
    def client_addr(self) -> str | None:
        """The client's address (IPv4-mapped IPv6 unwrapped)."""
        return self._peer.addr

    async def run(self) -> None:
        """The whole session: greet, open upstream at the first valid command, relay, close."""
        try:
            async with asyncio.timeout(self._cfg.session_timeout):
                greeting = await self._svc.greeting()
                self._answer(greeting, _Pending(None, "connect"), origin="proxy")
                await self._converse()
        except TimeoutError:
            self._error(f"session exceeded {self._cfg.session_timeout:g} s")
            self._answer(TIMED_OUT, _Pending(None, "session"), origin="proxy")
        except Exception as exc:  # a bug must cost this one session, never the server
            self._error(f"internal error: {exc!r}")
            self._answer(UPSTREAM_LOST, _Pending(None, "session"), origin="proxy")
        finally:
            self._end_refusal_run()
            if self._only_failures:
                self._record_session()
            await self._close()

    async def _open(self) -> ServerReply | None:
        """Connect upstream and pass the client on with XCLIENT; None once Postfix greets.

        Otherwise the reply the client's first command gets: Postfix's own refusal of the
        client (421/554 from a milter or policy), or 421 4.3.0 when Postfix cannot be used.
        """
        name = await self._resolve()
        try:
            async with asyncio.timeout(self._cfg.connect_timeout):
                self._up = await self._svc.connect_upstream(self)
                banner = await self._early_reply()
                if banner.code != 220:  # Postfix refuses the proxy itself: pass that on
                    return banner
                self._xclient_sent = self._xclient_attributes(name)
                self._up.write(xclient_command(self._xclient_sent))
                greeting = await self._early_reply()
        except (OSError, TimeoutError, _UpstreamGoneError) as exc:
            self._error(f"upstream unavailable: {_describe(exc)}")
            return UPSTREAM_DOWN
        self._svc.learn_greeting(banner)
        if greeting.code == 220:
            self._start_relaying()
            return None
        if greeting.code in (421, 554):  # a milter or policy refused the client
            if greeting.code == 554:
                self._start_relaying()  # Postfix answers what follows itself
            return greeting
        self._error(
            f"upstream refused XCLIENT ({greeting.text!r}): "
            "is the proxy in smtpd_authorized_xclient_hosts?"
        )
        return UPSTREAM_DOWN

    async def _resolve(self) -> str:
        """NAME for XCLIENT: the forward-confirmed name, [UNAVAILABLE] or [TEMPUNAVAIL]."""
        if self._peer.addr is None:
            return "[UNAVAILABLE]"
        try:
            async with asyncio.timeout(self._cfg.resolve_timeout):
                name = await self._svc.resolver(self._peer.addr)
        except TimeoutError:
            return "[TEMPUNAVAIL]"
        if name is None or not _HOSTNAME.match(name):
            return "[UNAVAILABLE]"
        self._peer.name = name
        return name

    def _xclient_attributes(self, name: str) -> dict[str, str]:
        addr = self._peer.addr
        attributes = {"NAME": name}
        if addr is None:
            attributes["ADDR"] = "[UNAVAILABLE]"
        else:
            attributes["ADDR"] = f"IPV6:{addr}" if ":" in addr else addr
        if self._peer.port is not None:
            attributes["PORT"] = str(self._peer.port)
        return attributes

    async def _converse(self) -> None:
        """Take the client's connection over and handle its bytes as they arrive, until the
        client's side or Postfix's ends the session (``_ended``)."""
        ended = self._ended = asyncio.get_running_loop().create_future()
        try:
            self._take_over()
            await ended  # a cancellation (session_timeout, shutdown) cancels it: nothing more
        finally:
            if self._slow is not None:
                self._slow.cancel()
                await asyncio.gather(self._slow, return_exceptions=True)
            if self._silence is not None:
                self._silence.cancel()
            if self._idle is not None:
                self._idle.cancel()
            if not ended.done():  # what either side sends from now on answers no one
                ended.set_result(None)

    def _take_over(self) -> None:
        """The client's bytes go to a :class:`_Client` protocol from now on (what the server's
        stream already holds first), so that no task has to wake up for each read."""
        transport = self._client_t
        self._client = _Client(self, transport)
        self._commands.feed(_take_stream_buffer(self._client_r))
        self._eof = transport.is_closing() or self._client_r.at_eof()
        transport.set_protocol(self._client)
        if transport.is_closing():  # its connection_lost may have gone to the stream
            self._client.closed.set_result(None)
        elif not self._eof:
            transport.resume_reading()  # the stream may have paused it at its limit
        self._run_pump()

    async def _close(self) -> None:
        self._flush_io()
        if self._up is not None:
            self._up.close()
        if self._client is None:
            self._client_w.close()
            closed: Awaitable[None] = self._client_w.wait_closed()
        else:
            unsent = self._client_t.get_write_buffer_size()
            self._client_t.close()
            closed = self._client.closed
            if not unsent and not self._peer.tls:  # connection_lost comes at once: no timer
                await closed
                return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await closed

    # -- the client's side ------------------------------------------------------------------
    #
    # The client's bytes arrive in _Client.data_received (client_data) and are handled there,
    # as far as the session's state lets them (_pump): a command Postfix answers is queued and
    # forwarded at once, message bytes are passed on. What has to wait (opening the inner
    # session, the proxy's own refusals with their error sleep, STARTTLS, an AUTH
    # continuation, the end of the session) runs as one "slow step" task at a time, and the
    # pump stops until it is done. The pump also stops at a barrier (DATA, AUTH, QUIT: their
    # reply decides how what follows is read), while max_pipeline replies are owed, and while
    # Postfix's side is over its write-buffer limit; past READ_SIZE * 2 unhandled bytes the
    # client's transport stops reading, and TCP pushes back on the client.

    def client_data(self, data: bytes) -> None:
        """Bytes from the client: feed them, and handle what they complete."""
        if self._finished():
            return
        self._commands.feed(data)
        self._waiting = False
        if self._input is not None and not self._input.done():
            self._input.set_result(None)  # a slow step waits for them
        self._run_pump()

    def client_eof(self) -> None:
        """The client closed its side (or the connection is gone)."""
        if self._eof:
            return
        self._eof = True
        if self._input is not None and not self._input.done():
            self._input.set_exception(_ClientGoneError())
        elif self._waiting and not self._finished():
            self._run_pump()

    def _run_pump(self) -> None:
        """Run the pump (again, while something unblocks it), then send what it made."""
        if self._batching:  # the callback that runs now flushes when it ends
            self._pump_again = True
            return
        self._batching = True
        try:
            self._pump_again = True
            while self._pump_again and not self._finished():
                self._pump_again = False
                self._pump()
        except Exception as exc:  # a bug costs this session (run() says so), not the server
            self._end(exc)
        finally:
            self._batching = False
        self._flush_io()

    def _pump(self) -> None:
        """Handle the client's buffered commands and message bytes, until one must wait."""
        while self._slow is None and self._barrier is None and not self._held:
            if self._finished():
                return
            if len(self._pending) >= self._cfg.max_pipeline:
                self._full = True  # _flush wakes the pump when a reply has gone out
                break
            event = self._commands.next_event()
            if event is None:
                if self._eof:
                    self._start_slow(self._client_left())
                else:
                    self._wait_for_input()
                break
            if isinstance(event, Data):
                self._relay_data(event)
            elif not (isinstance(event, Command) and self._fast_command(event)):
                self._start_slow(self._slow_event(event))
        self._limit_reading()

    def _limit_reading(self) -> None:
        """Stop reading the client while more than READ_SIZE * 2 of its bytes wait unhandled."""
        over = self._commands.buffered > 2 * READ_SIZE
        if over != self._reading_paused and not self._client_t.is_closing():
            self._reading_paused = over
            if over:
                self._client_t.pause_reading()
            else:
                self._client_t.resume_reading()

    def _wake_pump(self) -> None:
        """Something that stopped the pump is gone: run it (now, or when the callback ends)."""
        if self._client is not None:
            self._run_pump()

    def _fast_command(self, cmd: Command) -> bool:
        """Forward a command Postfix answers, if nothing needs the proxy's own handling."""
        verb = cmd.verb
        if self._up is None or verb in self._slow_verbs or has_control(cmd.line):
            return False
        self._relay(cmd, verb)
        return True

    def _relay(self, cmd: Command, verb: str) -> None:
        """Note, queue and forward one command; DATA, QUIT and AUTH stop the pump until their
        reply (see :meth:`_passed_barrier`)."""
        self._note(verb, cmd.argument)
        pending = self._forward(cmd.line, verb, _stage(verb))
        if verb in ("DATA", "QUIT", "AUTH"):
            self._barrier = pending

    def _relay_data(self, event: Data) -> None:
        """Pass message bytes on unchanged, up to and including the end-of-data line."""
        assert self._up is not None
        if event.last:
            self._push(_Pending(".", "eom", sender=self._peer.sender))
            self._in_data = False
            self._peer.sender = None  # the transaction ends with the reply to the dot
        if self._to_upstream:  # what was collected before goes first
            collected, self._to_upstream = self._to_upstream, bytearray()
            self._up.write(collected)
        self._up.write(event.data)  # the chunk as the reader made it: no copy here
        self._held = self._up.paused and not self._up.closing

    def upstream_writable(self) -> None:
        """Postfix's side is below its write-buffer limit again."""
        if self._held:
            self._held = False
            self._wake_pump()

    def _passed_barrier(self, pending: _Pending, reply: ServerReply) -> None:
        """The reply to a barrier: 354 starts the message, 334 wants a continuation line."""
        self._barrier = None
        if reply.code == 334:
            self._start_slow(self._continuation(pending.verb or "AUTH"))
            return
        if pending.verb == "DATA" and reply.code == 354:
            self._commands.start_data()
            self._in_data = True
        self._wake_pump()

    def _wait_for_input(self) -> None:
        """The pump waits for client bytes: the idle timer runs."""
        self._waiting = True
        self._arm_idle()

    def _arm_idle(self) -> None:
        """Start a wait for client bytes: one timer, moved on rather than made anew."""
        loop = asyncio.get_running_loop()
        self._wait_started = now = loop.time()
        deadline = now + self._read_timeout()
        if self._idle is None or self._idle.when() > deadline:
            if self._idle is not None:
                self._idle.cancel()
            self._idle = loop.call_at(deadline, self._idle_fired)

    def _idle_fired(self) -> None:
        self._idle = None
        if self._finished():
            return
        reading = self._input is not None and not self._input.done()
        if not (reading or self._waiting):
            return  # the next wait arms it again
        loop = asyncio.get_running_loop()
        deadline = self._wait_started + self._read_timeout()
        if loop.time() < deadline:  # a later wait moved the limit on
            self._idle = loop.call_at(deadline, self._idle_fired)
        elif reading:
            assert self._input is not None
            self._input.set_exception(TimeoutError())
        else:
            self._waiting = False
            self._start_slow(self._idle_out())

    def _read_timeout(self) -> float:
        """The short pre-command timeout until the inner connection opens, then idle_timeout."""
        return self._cfg.idle_timeout if self._up is not None else self._cfg.greet_timeout

    async def _read_client(self) -> None:
        """A slow step waits for more client bytes; TimeoutError after ``_read_timeout()``,
        _ClientGoneError at EOF."""
        if self._eof:
            raise _ClientGoneError
        self._input = asyncio.get_running_loop().create_future()
        self._arm_idle()
        try:
            await self._input
        finally:
            self._input = None

    # -- slow steps -------------------------------------------------------------------------

    def _start_slow(self, step: Coroutine[Any, Any, bool]) -> None:
        """Run ``step`` as a task; the pump waits until it is done (it returns False, or
        raises, when the session ends)."""
        self._waiting = False
        self._slow = asyncio.create_task(self._slow_step(step))

    async def _slow_step(self, step: Coroutine[Any, Any, bool]) -> None:
        try:
            go_on = await step
        except _ClientStuckError:
            self._drop_client()
            self._end()
            return
        except _ClientGoneError:
            go_on = await self._client_left()
        except TimeoutError:
            go_on = await self._idle_out()
        except Exception as exc:  # a bug costs this session (run() says so), not the server
            self._end(exc)
            return
        if go_on and not self._finished():
            self._slow = None
            self._run_pump()
            return
        clean = not self._in_data and not self._quit_sent
        if clean and self._up is not None and not self._up.closing:
            self._send_upstream(encode_command(b"QUIT"))
            self._quit_sent = True
        self._end()

    async def _client_left(self) -> bool:
        """The client is gone: wait (10 s at most) for the replies still owed, then end."""
        if self._pending:
            with contextlib.suppress(TimeoutError):  # a half-closed client still reads
                await asyncio.wait_for(self._settled(), 10)
        return False

    async def _idle_out(self) -> bool:
        """The client said nothing for its read timeout: 421 4.4.2, then end."""
        self._error(f"client idle for {self._read_timeout():g} s")
        with contextlib.suppress(_ClientStuckError):
            await self._local(TIMED_OUT, None, "session")
        return False

    async def _slow_event(self, event: ClientEvent) -> bool:
        """What the pump cannot do at once: an over-long line, a control character, or a
        command the proxy handles itself; False once the session is over."""
        if isinstance(event, LineTooLong):
            return await self._refuse(LINE_TOO_LONG, None, "command")
        assert isinstance(event, Command)
        if has_control(event.line):
            return await self._refuse(CONTROL_CHARACTER, None, "command")
        return await self._command(event)

    async def _command(self, cmd: Command) -> bool:
        """Handle one command; False once the session is over (QUIT answered)."""
        verb = cmd.verb
        if verb in REFUSED_VERBS or (verb == "AUTH" and not self._cfg.offer_auth):
            return await self._refuse(NOT_IMPLEMENTED, verb, _stage(verb))
        if verb == "STARTTLS":
            return await self._starttls(cmd)
        if self._up is None:
            if verb == "QUIT":
                await self._local(GOODBYE, verb, _stage(verb))
                return False
            if verb not in OPENING_VERBS:
                return await self._refuse(NOT_RECOGNIZED, verb or None, "command")
            refusal = await self._open()
            if refusal is not None:
                self._note(verb, cmd.argument)
                origin = "proxy" if refusal is UPSTREAM_DOWN else "upstream"
                await self._local(refusal, verb, _stage(verb), origin=origin)
                return self._relaying
        self._relay(cmd, verb)
        return True

    def _note(self, verb: str, argument: bytes) -> None:
        """Remember what events should carry: HELO name and sender."""
        if verb in ("EHLO", "HELO"):
            self._peer.helo = argument.decode("utf-8", "replace")[:255] or None
            self._peer.sender = None
        elif verb == "MAIL":
            self._peer.sender = mail_path(argument)
        elif verb == "RSET":
            self._peer.sender = None

    def _forward(self, line: bytes, verb: str, stage: str) -> _Pending:
        """Queue ``line`` for a reply and send it upstream (queue first: no reply can overtake)."""
        recipient = mail_path(line) if verb == "RCPT" else None
        pending = _Pending(verb, stage, None, None, self._peer.sender, recipient)
        self._push(pending)
        self._send_upstream(encode_command(line))
        self._quit_sent = self._quit_sent or verb == "QUIT"
        return pending

    async def _continuation(self, verb: str) -> bool:
        """After a 334: the client's next line answers it (never recorded: credentials).

        An over-long answer, or one with a control character, is replaced by "*", which
        cancels the exchange (RFC 4954 §4): Postfix's reply to that tells the client.
        """
        self._commands.expect_continuation()
        while (event := self._commands.next_event()) is None:
            await self._read_client()
        answered = isinstance(event, Continuation) and not has_control(event.line)
        line = event.line if isinstance(event, Continuation) and answered else b"*"
        self._barrier = self._forward(line, verb, _stage(verb))
        return True

    async def _starttls(self, cmd: Command) -> bool:
        """Terminate TLS here: 220, drop anything pipelined after STARTTLS, handshake, reset
        the inner session; False when that fails and the session ends, or when the client's
        errors passed the hard limit (421 sent)."""
        if self._peer.tls:
            return await self._refuse(TLS_ACTIVE, "STARTTLS", "starttls")
        if self._cfg.tls is None:
            return await self._refuse(NOT_IMPLEMENTED, "STARTTLS", "starttls")
        if cmd.argument:
            return await self._refuse(TLS_SYNTAX, "STARTTLS", "starttls")
        await self._settled()  # the replies owed say whether a transaction is open
        if self._in_transaction:
            return await self._refuse(IN_TRANSACTION, "STARTTLS", "starttls")
        # Nothing the client sends from here on may be read as plaintext (CVE-2011-0411):
        # stop reading before the 220 goes out, then drop what was already buffered.
        assert self._client is not None
        self._client_t.pause_reading()
        await self._local(TLS_READY, "STARTTLS", "starttls")
        self._flush_io()  # the 220 must leave in plaintext, before the handshake starts
        dropped = self._commands.discard_buffer()
        try:
            self._client_t = cast(
                asyncio.Transport,
                await asyncio.get_running_loop().start_tls(
                    self._client_t,
                    self._client,
                    self._cfg.tls,
                    server_side=True,
                    ssl_handshake_timeout=self._cfg.tls_handshake_timeout,
                ),
            )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self._error(f"TLS handshake failed: {_describe(exc)}")
            raise _ClientGoneError from None
        self._reading_paused = False
        ssl_object = self._client_t.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            cipher = ssl_object.cipher()
            self._peer.tls = {
                "tls_version": ssl_object.version(),
                "tls_cipher": cipher[0] if cipher else None,
            }
        self._peer.helo = self._peer.sender = None  # RFC 3207 §4.2: the client starts over
        self._emit(EventKind.TLS, stage="starttls", extra={"dropped_plaintext": dropped})
        return await self._reset_upstream()

    async def _reset_upstream(self) -> bool:
        """XCLIENT again: Postfix forgets the plaintext HELO, as if the client had reconnected.

        Its new 220 stays here; anything else means the inner session is not what the client
        now believes: 421 and False (the session ends).
        """
        if self._up is None:
            return True  # no inner session yet: it opens with XCLIENT after the handshake
        done = asyncio.get_running_loop().create_future()
        pending = _Pending("XCLIENT", "starttls", None, done, quiet=True)
        self._push(pending)
        self._send_upstream(xclient_command(self._xclient_sent))
        reply = await done
        if reply.code == 220:
            return True
        self._error(f"upstream answered XCLIENT after STARTTLS with {reply.text!r}")
        await self._local(UPSTREAM_LOST, None, "starttls")
        return False

    # -- Postfix's side ---------------------------------------------------------------------
    #
    # Postfix's bytes arrive in _Upstream.data_received and are handled there: each whole reply
    # answers the command at the head of the queue at once. Until XCLIENT is accepted they are
    # kept for _open instead.

    async def _early_reply(self) -> ServerReply:
        """The next reply before relaying starts (banner, XCLIENT); _UpstreamGoneError."""
        while not self._early:
            if self._upstream_gone is not None:
                raise _UpstreamGoneError(self._upstream_gone)
            self._early_waiter = asyncio.get_running_loop().create_future()
            await self._early_waiter
        return self._early.popleft()

    def _start_relaying(self) -> None:
        """From now on Postfix's replies answer the client; silence while one is owed is
        watched by one timer per ``reply_timeout``, not one per read."""
        self._relaying = True
        loop = asyncio.get_running_loop()
        self._last_heard = loop.time()
        self._silence = loop.call_later(self._cfg.reply_timeout, self._check_silence)
        if self._early:  # Postfix spoke before it was asked: as the pump read it, in order
            early, self._early = list(self._early), deque()
            for reply in early:
                if not self._on_reply(reply):
                    return

    def _check_silence(self) -> None:
        loop = asyncio.get_running_loop()
        quiet_for = loop.time() - self._last_heard
        if quiet_for >= self._cfg.reply_timeout and self._pending:
            self._upstream_failed(f"no reply in {self._cfg.reply_timeout:g} s")
            return
        if quiet_for >= self._cfg.reply_timeout:  # nothing owed: wait on from now
            self._last_heard = loop.time()
        self._silence = loop.call_at(
            self._last_heard + self._cfg.reply_timeout, self._check_silence
        )

    def upstream_data(self, data: bytes) -> None:
        """Bytes from Postfix: feed them, handle each whole reply (or keep it for _open)."""
        if self._finished():
            return
        self._batching = True  # what the replies (and the pump they wake) make goes out once
        try:
            self._replies.feed(data)
            if not self._relaying:
                self._keep_early()
                return
            self._last_heard = asyncio.get_running_loop().time()
            while (reply := self._replies.next_reply()) is not None:
                if not self._on_reply(reply):
                    return
            while self._pump_again and not self._finished():
                self._pump_again = False
                self._pump()
            self._after_replies()
        except ProtocolError as exc:
            self._upstream_failed(str(exc))
        except _ClientStuckError:
            self._drop_client()
            self._end()
        except Exception as exc:  # a bug costs this session (run() says so), not the server
            self._end(exc)
        finally:
            self._batching = False
            if self._to_client or self._to_upstream or self._deferred:
                self._flush_io()

    def _keep_early(self) -> None:
        while (reply := self._replies.next_reply()) is not None:
            self._early.append(reply)
        self._wake_early()

    def _wake_early(self) -> None:
        if self._early_waiter is not None and not self._early_waiter.done():
            self._early_waiter.set_result(None)

    def _on_reply(self, reply: ServerReply) -> bool:
        """One reply of Postfix's to the client; False once it ends the session."""
        pending = self._pending.popleft() if self._pending else _Pending(None, "session")
        self._track_transaction(pending.verb, reply.code)
        if not pending.quiet:
            self._answer(reply, pending, origin="upstream")
        if pending.done is not None and not pending.done.done():
            pending.done.set_result(reply)
        self._flush()
        if reply.code == 421 or pending.verb == "QUIT":
            self._after_replies()
            self._end()
            return False
        if pending is self._barrier:
            self._passed_barrier(pending, reply)
        return True

    def _after_replies(self) -> None:
        """Send what the replies made; a client that leaves them unread is dropped, one over
        its write-buffer limit makes Postfix's side wait until it reads (idle_timeout)."""
        self._flush_io()
        transport = self._client_t
        unread = transport.get_write_buffer_size()
        if unread > self._cfg.max_unread:
            raise _ClientStuckError
        if unread > transport.get_write_buffer_limits()[1] and self._up is not None:
            upstream = self._up.transport
            assert upstream is not None
            upstream.pause_reading()
            waiting = asyncio.create_task(self._wait_for_client_reads(upstream))
            self._background.add(waiting)
            waiting.add_done_callback(self._background.discard)

    async def _wait_for_client_reads(self, upstream: asyncio.Transport) -> None:
        try:
            await self._drain_client()
        except _ClientStuckError:
            self._drop_client()
            self._end()
            return
        if not upstream.is_closing():
            upstream.resume_reading()

    def upstream_lost(self, why: str) -> None:
        """The inner connection ended (EOF, reset)."""
        if self._upstream_gone is None:
            self._upstream_gone = why
        self._wake_early()
        if self._relaying and not self._finished():
            self._upstream_failed(why)

    def _upstream_failed(self, why: str) -> None:
        """Postfix went away, went silent or spoke garbage: 421 to the client, session over."""
        if self._finished():
            return
        self._error(f"upstream lost: {why}")
        self._pending.clear()
        self._answer(UPSTREAM_LOST, _Pending(None, "session"), origin="proxy")
        self._end()

    def _finished(self) -> bool:
        return self._ended is not None and self._ended.done()

    def _end(self, error: Exception | None = None) -> None:
        """Postfix's side ends the session (the client pump is stopped)."""
        if self._ended is None or self._ended.done():
            return
        if error is None:
            self._ended.set_result(None)
        else:
            self._ended.set_exception(error)

    def _track_transaction(self, verb: str | None, code: int) -> None:
        """Whether Postfix holds an open mail transaction, from the replies it gives."""
        if verb == "MAIL" and code < 400:
            self._in_transaction = True
        elif verb == "." or code == 421 or (verb in ("RSET", "EHLO", "HELO") and code < 400):
            self._in_transaction = False

    # -- output -----------------------------------------------------------------------------
    #
    # Writes are collected and flushed when the callback that made them ends (or, from a slow
    # step, once the running task yields), so that what arrived together leaves together: a
    # pipelined group goes upstream in one segment, as the client sent it, and Postfix's
    # replies to it reach the client in one. Sent one by one, Nagle's algorithm on Postfix's
    # side and delayed ACKs here cost 40 ms per group.

    def _send_upstream(self, data: bytes) -> None:
        self._to_upstream += data
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and not self._batching:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_io)

    def _flush_io(self) -> None:
        """Write out what was collected for the client and for Postfix."""
        self._flush_scheduled = False
        if self._to_upstream:
            collected, self._to_upstream = self._to_upstream, bytearray()
            if self._up is not None:
                self._up.write(collected)  # handed over, never changed again: no copy
        if self._to_client:
            collected, self._to_client = self._to_client, bytearray()
            if not self._client_t.is_closing():
                self._client_t.write(collected)
        if self._deferred:  # the events of what just went out
            deferred, self._deferred = self._deferred, []
            for parts in deferred:
                self._write_event(parts)

    # -- the queue --------------------------------------------------------------------------

    def _push(self, pending: _Pending) -> None:
        self._pending.append(pending)

    def _enqueue_local(
        self, reply: ServerReply, verb: str | None, stage: str, *, origin: str = "proxy"
    ) -> _Pending:
        """Queue one of the proxy's own replies behind the replies still owed."""
        done = asyncio.get_running_loop().create_future()
        pending = _Pending(verb, stage, reply, done, self._peer.sender, origin=origin)
        self._push(pending)
        self._flush()
        return pending

    async def _local(
        self, reply: ServerReply, verb: str | None, stage: str, *, origin: str = "proxy"
    ) -> ServerReply:
        """Queue one of the proxy's own replies and wait until it has been sent."""
        pending = self._enqueue_local(reply, verb, stage, origin=origin)
        assert pending.done is not None
        return await pending.done

    async def _refuse(self, reply: ServerReply, verb: str | None, stage: str) -> bool:
        """One of the proxy's own error replies, counted as Postfix's smtpd counts errors.

        Past ``soft_error_limit`` each waits ``error_sleep`` first (the client pump handles
        nothing meanwhile and its transport stops reading past ``2 * READ_SIZE``, so TCP holds
        the client back); past ``hard_error_limit`` the client gets 421 4.7.0 instead, and
        False ends the session.
        """
        self._errors += 1
        if self._errors > self._cfg.hard_error_limit:
            self._error(f"client made more than {self._cfg.hard_error_limit} errors")
            await self._local(TOO_MANY_ERRORS, verb, stage)
            return False
        if self._errors > self._cfg.soft_error_limit:
            self._flush_io()
            await asyncio.sleep(self._cfg.error_sleep)
        if self._client_t.is_closing() or self._eof:
            raise _ClientGoneError  # no more sleeping through what a gone client pipelined
        self._enqueue_local(reply, verb, stage)
        await self._drain_client()
        return True

    async def _drain_client(self) -> None:
        """Wait until the client has read what it was sent; _ClientStuckError if it doesn't."""
        self._flush_io()
        transport = self._client_t
        unread = transport.get_write_buffer_size()
        if unread > self._cfg.max_unread:
            raise _ClientStuckError
        if not unread and not transport.is_closing():
            return  # all of it is in the kernel's hands: drain() would return at once
        try:
            async with asyncio.timeout(self._cfg.idle_timeout):
                if self._client is not None:
                    await self._client.drain()
                else:
                    await self._client_w.drain()
        except TimeoutError:
            raise _ClientStuckError from None
        except ConnectionError:  # the client's side notices it (client_eof)
            pass

    def _drop_client(self) -> None:
        """Cut a client that leaves its replies unread: its buffered replies are discarded."""
        unread = self._client_t.get_write_buffer_size()
        self._error(f"client does not read its replies ({unread} bytes unread)")
        self._pending.clear()
        self._to_client.clear()
        self._client_t.abort()

    def _flush(self) -> None:
        """Send the proxy's own replies that have reached the head of the queue."""
        while self._pending and self._pending[0].local is not None:
            pending = self._pending.popleft()
            assert pending.local is not None
            self._answer(pending.local, pending, origin=pending.origin)
            if pending.done is not None and not pending.done.done():
                pending.done.set_result(pending.local)
        if self._full and len(self._pending) < self._cfg.max_pipeline:
            self._full = False
            self._wake_pump()

    async def _settled(self) -> None:
        """Wait until no reply is owed any more."""
        while self._pending:
            await asyncio.sleep(0.01)

    # -- replies and events -----------------------------------------------------------------

    def _answer(
        self, reply: ServerReply, pending: _Pending, *, origin: str
    ) -> dict[str, Any] | None:
        """Explain, rewrite, sanitize, send and record one reply to the client; the recorded
        event's fields (None for a repeat not recorded).

        A run of identical refusals by the proxy itself is recorded twice: its first reply,
        then (when the run ends) one event with ``repeated``, how many more were sent.
        """
        key = None
        if origin == "proxy" and reply.code >= 500:
            key = (reply.code, reply.text, pending.verb, pending.sender)
            if key == self._run:
                self._to_client += self._run_wire
                self._schedule_flush()
                self._run_count += 1
                return None
        self._end_refusal_run()
        text = reply.text  # worked out on each call: once here
        queue_id = None
        if pending.verb == "." and reply.code == 250:
            found = _QUEUED_AS.search(text)
            queue_id = found[1] if found else None
        explanation = self._svc.explain(text, queue_id)
        lines = self._rewrite(reply, pending, explanation)
        wire, friendly = self._svc.render(reply, lines, queue_id)
        self._to_client += wire
        self._schedule_flush()
        record: dict[str, Any] = {
            "explanation": explanation,
            "original": text,
            "friendly": friendly,
            "stage": pending.stage,
            "sender": pending.sender,
            "recipient": pending.recipient,
            "queue_id": queue_id,
            "extra": {"command": pending.verb, "origin": origin, "rewritten": lines is not None},
        }
        if self._only_failures and reply.code < 400:
            self._count(pending.stage, queue_id)
        else:
            self._emit(EventKind.REPLY, **record)
        if key is not None:
            self._run, self._run_wire, self._run_record = key, wire, record
        return record

    def _count(self, stage: str, queue_id: str | None) -> None:
        """Count a reply that gets no event of its own (``reply_events = failures``)."""
        self._replies_by_stage[stage] += 1
        if stage == "eom":  # a 2xx to the final dot: a message Postfix took
            self._messages += 1
        if queue_id is not None and len(self._queue_ids) < MAX_SESSION_QUEUE_IDS:
            self._queue_ids.append(queue_id)

    def _record_session(self) -> None:
        """The ``session`` event: what the replies without an event of their own said."""
        self._emit(
            EventKind.SESSION,
            stage="close",
            extra={
                "replies": dict(self._replies_by_stage),
                "messages": self._messages,
                "queue_ids": self._queue_ids,
                "duration_ms": round((time.monotonic() - self._started) * 1000, 1),
            },
        )

    def _end_refusal_run(self) -> None:
        """Record how often the last refusal was repeated (if it was), and start afresh."""
        if self._run_count and self._run_record is not None:
            record = self._run_record
            extra = {**record["extra"], "repeated": self._run_count}
            self._emit(EventKind.REPLY, **{**record, "extra": extra})
        self._run, self._run_wire, self._run_record, self._run_count = None, b"", None, 0

    def _rewrite(
        self, reply: ServerReply, pending: _Pending, explanation: Explanation
    ) -> Sequence[str] | None:
        """The admin's (or the EHLO filter's) lines for this reply, or None to keep it."""
        texts = self._svc.texts
        if pending.verb == "EHLO" and reply.code == 250:
            return self._svc.ehlo_lines(reply, self._cfg.tls is not None and not self._peer.tls)
        if pending.stage == "connect" and reply.code == 220:
            self._peer.hostname = _first_word(reply.lines[0]) or self._peer.hostname
            return texts.greeting(explanation, self._context(pending))
        if pending.verb == "QUIT" and reply.code == 221:
            return texts.goodbye(explanation, self._context(pending))
        if reply.code >= 400:
            return texts.rewrite(explanation, self._context(pending))
        return None

    def _context(self, pending: _Pending) -> dict[str, str]:
        """What the admin's templates may say about this session and reply."""
        peer = self._peer
        return {
            "hostname": peer.hostname,
            "date": _date_text(),
            "client_addr": peer.addr or "",
            "client_name": peer.name or "",
            "sender": (pending.sender or "").strip("<>"),
            "recipient": (pending.recipient or "").strip("<>"),
            "queue_id": "",
        }

    def _emit(
        self,
        event: EventKind,
        *,
        explanation: Explanation | None = None,
        original: str | None = None,
        friendly: str | None = None,
        stage: str | None = None,
        sender: str | None = None,
        recipient: str | None = None,
        queue_id: str | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        """Record one event: at once, or (in a callback that flushes when it ends) right after
        the bytes that callback made went out, so that no reply waits for an event's write."""
        peer = self._peer
        parts = _EventParts(
            event,
            datetime.now(UTC),
            self._svc.described(explanation, original, friendly, queue_id),
            {**(extra or {}), "client_port": peer.port, **peer.tls},
            stage,
            queue_id,
            peer.name,
            peer.helo,
            sender,
            recipient,
        )
        if self._batching:
            self._deferred.append(parts)
        else:
            self._write_event(parts)

    def _write_event(self, parts: _EventParts) -> None:
        self._svc.events.emit_fields(
            event_fields(
                parts.event,
                Source.PROXY,
                parts.ts,
                parts.described,
                parts.extra,
                direction=Direction.UPSTREAM if parts.event == EventKind.REPLY else None,
                stage=parts.stage,
                session=self._id,
                queue_id=parts.queue_id,
                client_addr=self._peer.addr,
                client_name=parts.client_name,
                helo=parts.helo,
                sender=parts.sender,
                recipient=parts.recipient,
            )
        )

    def _error(self, message: str) -> None:
        self._emit(EventKind.ERROR, original=message)


# -- helpers ----------------------------------------------------------------------------------


def _peer_of(writer: asyncio.StreamWriter) -> _Peer:
    """The client's address and port, IPv4-mapped IPv6 addresses unwrapped."""
    peername = writer.get_extra_info("peername")
    if not isinstance(peername, tuple) or len(peername) < 2:
        return _Peer()
    addr = str(peername[0])
    if ":" not in addr:  # IPv4: nothing to unwrap
        return _Peer(addr=addr, port=int(peername[1]))
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(addr)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            addr = str(ip.ipv4_mapped)
    return _Peer(addr=addr, port=int(peername[1]))


def _split_enhanced(reply: ServerReply) -> tuple[EnhancedCode | None, list[str]]:
    """The reply's enhanced code (if its class matches) and its lines without that prefix."""
    m = _ENHANCED_PREFIX.match(reply.lines[0]) if reply.lines else None
    if m is None or int(m[1]) != reply.code // 100:
        return None, list(reply.lines)
    enhanced = EnhancedCode(int(m[1]), int(m[2]), int(m[3]))
    prefix = str(enhanced)
    lines = [
        line[len(prefix) :].lstrip(" ") if line == prefix or line.startswith(prefix + " ") else line
        for line in reply.lines
    ]
    return enhanced, lines


def _take_stream_buffer(reader: asyncio.StreamReader) -> bytes:
    """Empty a StreamReader's internal buffer and return what it held.

    asyncio has no public way to take what a StreamReader already holds without a read, and
    the client's protocol takes the connection over from the stream (``_take_over``).
    """
    buffer = getattr(reader, "_buffer", None)
    if not isinstance(buffer, bytearray):
        return b""
    held = bytes(buffer)
    buffer.clear()
    return held


def _date_text() -> str:
    """Now as RFC 5322 writes dates (``[banner]``'s ``{date}``), worked out once a second."""
    second = int(time.time())
    if _DATE[0] != second:
        _DATE[0], _DATE[1] = second, format_datetime(datetime.fromtimestamp(second, UTC))
    return cast(str, _DATE[1])


#: :func:`_date_text`'s second and text.
_DATE: list[int | str] = [-1, ""]


def _queue_id_mask(queue_id: str) -> str:
    """What stands for a queue id in the reply caches: as long as the id, so that the reply
    is sanitized (and any long line folded) the same way."""
    return "Q" * len(queue_id)


#: The reply part of an event about no reply (``session``).
_NOTHING_DESCRIBED: Mapping[str, object] = MappingProxyType(described_fields(None, None, None))


def _stage(verb: str) -> str:
    """The event stage of a command: the schema's names where it has one (helo, mail, ...)."""
    return "helo" if verb in ("EHLO", "HELO") else verb.lower() or "command"


def _first_word(text: str) -> str | None:
    words = text.split(None, 1)
    return words[0] if words else None


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
