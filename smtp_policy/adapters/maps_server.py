"""A Postfix socketmap server for friendlier reject footers and DSN texts.

Theory of operation: Postfix daemons (smtpd for ``smtpd_reject_footer_maps``, the delivery
agents for ``*_delivery_status_filter``) open a connection, send one netstring per lookup
(``footer <reply>`` / ``dsn <X.Y.Z text>``) and reuse the connection. Each lookup is
classified by the core and answered at once; everything runs on one asyncio loop, since a
lookup costs tens of microseconds. A malformed or oversized request is logged and the
connection closed (the protocol cannot resynchronise); Postfix then retries once and, failing
that, carries on without the footer or filter: both hooks fail open.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime

from smtp_policy.adapters._serve import serve_requests
from smtp_policy.config import Config
from smtp_policy.core.bounce import dsn_lines
from smtp_policy.core.events import Direction, Event, EventKind, Source, reply_fields
from smtp_policy.core.explain import explain_text
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import Explanation
from smtp_policy.core.rewrite import dsn_text, footer
from smtp_policy.core.texts import render_reply_text
from smtp_policy.data.i18n import bounce_words
from smtp_policy.emit import EventWriter
from smtp_policy.wire.netstring import NetstringDecoder
from smtp_policy.wire.socketmap import NOT_FOUND, Request, SocketmapReply, Status

IDLE_TIMEOUT = 300.0  # Postfix closes idle socketmap connections after 10 s itself

#: Who reads the text: a footer goes to the connecting client, a DSN to our own sender.
AUDIENCE = {"footer": "external", "dsn": "internal"}


class MapsService:
    """Answers socketmap lookups; pure apart from emitting one event per lookup."""

    def __init__(
        self,
        kb: KnowledgeBase,
        events: EventWriter,
        config: Config,
        *,
        same_line: bool | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._kb = kb
        self._events = events
        self._same_line_option = same_line
        self._idle_timeout = idle_timeout
        self._ids = itertools.count(1)
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Use the texts and settings of a newly loaded configuration."""
        self._texts = config.texts
        self._bounce_words = bounce_words(config.bounce.language)
        option = self._same_line_option
        self._same_line = config.maps.same_line if option is None else option

    def _lines(self, explanation: Explanation, map_name: str) -> list[str]:
        return render_reply_text(self._texts, explanation, {}, AUDIENCE[map_name])

    def lookup(self, request: Request, session: str) -> SocketmapReply:
        """Answer one lookup and record it as one event."""
        explanation: Explanation | None = None
        text: str | None = None
        if request.name == "footer":
            explanation = explain_text(request.key, self._kb)
            lines = self._lines(explanation, "footer")
            text = footer(explanation, lines, same_line=self._same_line)
        elif request.name == "dsn":
            status, _, original = request.key.partition(" ")
            explanation = explain_text(original, self._kb)
            # a recipient's entry in a bounce, in the [bounce] layout; now = the final attempt
            now = datetime.now(UTC)
            lines = dsn_lines(explanation, self._texts, self._bounce_words, now)
            text = dsn_text(status, original, lines) if original else None
        if explanation is None:
            reply = SocketmapReply(
                Status.PERM, f"unknown map {request.name!r}: smtp-policy serves footer and dsn"
            )
        else:
            reply = SocketmapReply(Status.OK, text) if text else NOT_FOUND
        self._events.emit(
            Event(
                event=EventKind.LOOKUP,
                source=Source.MAPS,
                ts=datetime.now(UTC),
                direction=Direction.DOWNSTREAM if request.name == "dsn" else Direction.UPSTREAM,
                session=session,
                friendly=text,
                extra={"map": request.name, "status": reply.status.value},
                **reply_fields(explanation, text=request.key),
            )
        )
        return reply

    def _answer(self, request: Request, session: str) -> SocketmapReply:
        try:
            return self.lookup(request, session)
        except Exception as exc:  # a bug must not cost Postfix more than this one lookup
            self.error(session, f"internal error on {request.name} lookup: {exc!r}")
            return SocketmapReply(Status.TEMP, "smtp-policy internal error")

    def error(self, session: str, message: str) -> None:
        """Record a connection-level problem."""
        self._events.error(Source.MAPS, message, session)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one Postfix connection until it closes, idles out or misbehaves."""
        session = f"maps-{next(self._ids)}"
        await serve_requests(
            reader,
            writer,
            NetstringDecoder(),
            lambda payload: self._answer(Request.decode(payload), session).encode(),
            idle_timeout=self._idle_timeout,
            on_error=lambda message: self.error(session, message),
        )
