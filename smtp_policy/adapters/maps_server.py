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
import contextlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ..core.errors import ProtocolError
from ..core.events import Direction, Event, Source, reply_fields
from ..core.explain import explain_text
from ..core.knowledge import KnowledgeBase
from ..core.model import Explanation
from ..core.rewrite import default_lines, dsn_text, footer
from ..emit import EventWriter
from ..wire.netstring import NetstringDecoder
from ..wire.socketmap import NOT_FOUND, Reply, Request, Status

#: Renders the admin's text for an explanation and a map name ("footer" or "dsn").
TextRenderer = Callable[[Explanation, str], Sequence[str]]

IDLE_TIMEOUT = 300.0  # Postfix closes idle socketmap connections after 10 s itself


@dataclass(frozen=True, slots=True)
class MapsSettings:
    """What the maps server needs besides the knowledge base."""

    footer_same_line: bool = False
    idle_timeout: float = IDLE_TIMEOUT


def default_renderer(explanation: Explanation, map_name: str) -> Sequence[str]:
    """Our own wording, used when the admin configured no text."""
    return default_lines(explanation)


class MapsService:
    """Answers socketmap lookups; pure apart from emitting one event per lookup."""

    def __init__(
        self,
        kb: KnowledgeBase,
        events: EventWriter,
        render: TextRenderer = default_renderer,
        settings: MapsSettings = MapsSettings(),
    ) -> None:
        self._kb = kb
        self._events = events
        self._render = render
        self._settings = settings
        self._ids = itertools.count(1)

    def lookup(self, request: Request, session: str) -> Reply:
        """Answer one lookup and record it as one event."""
        explanation: Explanation | None = None
        text: str | None = None
        if request.name == "footer":
            explanation = explain_text(request.key, self._kb)
            lines = self._render(explanation, "footer")
            text = footer(explanation, lines, same_line=self._settings.footer_same_line)
        elif request.name == "dsn":
            status, _, original = request.key.partition(" ")
            explanation = explain_text(original, self._kb)
            text = (
                dsn_text(status, original, self._render(explanation, "dsn")) if original else None
            )
        if explanation is None:
            reply = Reply(
                Status.PERM, f"unknown map {request.name!r}: smtp-policy serves footer and dsn"
            )
        else:
            reply = Reply(Status.OK, text) if text else NOT_FOUND
        self._events.emit(
            Event(
                event="lookup",
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

    def _answer(self, request: Request, session: str) -> Reply:
        try:
            return self.lookup(request, session)
        except Exception as exc:  # a bug must not cost Postfix more than this one lookup
            self.error(session, f"internal error on {request.name} lookup: {exc!r}")
            return Reply(Status.TEMP, "smtp-policy internal error")

    def error(self, session: str, message: str) -> None:
        """Record a connection-level problem."""
        self._events.emit(
            Event(
                event="error",
                source=Source.MAPS,
                ts=datetime.now(UTC),
                session=session,
                text=message,
            )
        )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one Postfix connection until it closes, idles out or misbehaves."""
        session = f"maps-{next(self._ids)}"
        decoder = NetstringDecoder()
        try:
            while True:
                data = await asyncio.wait_for(reader.read(65536), self._settings.idle_timeout)
                if not data:
                    break
                decoder.feed(data)
                while (payload := decoder.next()) is not None:
                    writer.write(self._answer(Request.decode(payload), session).encode())
                await writer.drain()
        except ProtocolError as exc:
            self.error(session, f"closing connection: {exc}")
        except TimeoutError:
            self.error(session, f"closing connection idle for {self._settings.idle_timeout:.0f} s")
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
