"""A Postfix socketmap server for friendlier reject footers and DSN texts.

Theory of operation: Postfix daemons (smtpd for ``smtpd_reject_footer_maps``, the delivery
agents for ``*_delivery_status_filter``) open a connection, send one netstring per lookup
(``footer <reply>`` / ``dsn <X.Y.Z text>``) and reuse the connection. Each lookup is
classified by the core and answered at once; everything runs on one asyncio loop, since a
lookup costs tens of microseconds. A malformed or oversized request is logged and the
connection closed (the protocol cannot resynchronise); Postfix then retries once and, failing
that, carries on without the footer or filter: both hooks fail open.

One rejection, one story: a reply that one of our own rules produced (the milter's, the
policy service's, the proxy's) already says what it means, so its footer lookup is answered
NOTFOUND. The server knows those replies from the same configuration and the same rendering
as the daemons that send them (:func:`smtp_policy.core.policy.own_replies`): the code, the
enhanced code and every word of the rule's text must be there, session values aside, so a
remote cannot pass a rejection of Postfix's own off as ours. The lookup's event carries the
rule's reason and name, as the milter's event and the follower's do.

The DSN filter's text is also what Postfix writes to the mail log. By default only bounces
(5.x.x) are rewritten; deferrals (4.x.x) are answered NOTFOUND unless ``[maps]
dsn_deferrals`` is on (docs/dsn-filter.md).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from smtp_policy.adapters._serve import EventBudget, flood_warning, serve_requests
from smtp_policy.config import Config
from smtp_policy.core.events import Direction, Event, EventKind, Source, reply_fields
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.policy import OwnReply, own_replies, recognised_rule
from smtp_policy.core.rewrite import MapAnswer, answer_lookup
from smtp_policy.data.i18n import bounce_words
from smtp_policy.emit import EventWriter
from smtp_policy.wire.netstring import NetstringDecoder
from smtp_policy.wire.socketmap import NOT_FOUND, Request, SocketmapReply, Status

IDLE_TIMEOUT = 300.0  # Postfix closes idle socketmap connections after 10 s itself
#: How many rendered answers are remembered, per (map, key); emptied on reconfigure.
ANSWER_CACHE_SIZE = 4096


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
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._kb = kb
        self._clock = clock  # the time a bounce entry names: this lookup's, the final attempt
        self._events = events
        self._own: tuple[OwnReply, ...] = ()
        self._same_line_option = same_line
        self._idle_timeout = idle_timeout
        self._ids = itertools.count(1)
        self._budget = EventBudget()
        #: (map, key) -> the answer, and the second it was rendered in for a dsn answer
        #: (a bounce entry names the time, to the second); None: it holds at any time.
        self._answers: dict[tuple[str, str], tuple[MapAnswer | None, int | None]] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Use the texts and settings of a newly loaded configuration."""
        self._budget.per_second = config.maps.events_per_second
        self._texts = config.texts
        self._own = own_replies(config.rules, kb=self._kb, texts=config.texts)
        self._dsn_deferrals = config.maps.dsn_deferrals
        self._bounce_words = bounce_words(config.bounce.language)
        option = self._same_line_option
        self._same_line = config.maps.same_line if option is None else option
        self._answers.clear()

    def lookup(self, request: Request, session: str) -> SocketmapReply:
        """Answer one lookup and record it as one event."""
        answer = self._answer_for(request.name, request.key)
        explanation = None if answer is None else answer.explanation
        text = None if answer is None else answer.text
        extra: dict[str, object] = {"map": request.name}
        if answer is not None and answer.rule is not None:
            extra["by"] = "policy"
        if answer is not None and answer.skipped is not None:
            extra["skipped"] = answer.skipped
        if explanation is None:
            reply = SocketmapReply(
                Status.PERM, f"unknown map {request.name!r}: smtp-policy serves footer and dsn"
            )
        else:
            reply = SocketmapReply(Status.OK, text) if text else NOT_FOUND
        fields = reply_fields(explanation, text=request.key)
        if answer is not None and answer.rule is not None:
            fields["rule"] = answer.rule  # the admin's rule, as in the milter's event
        write, held = self._budget.take()
        if held:
            self._events.emit(flood_warning(Source.MAPS, held, self._budget.per_second))
        if not write:
            return reply
        self._events.emit(
            Event(
                event=EventKind.LOOKUP,
                source=Source.MAPS,
                ts=datetime.now(UTC),
                direction=Direction.DOWNSTREAM if request.name == "dsn" else Direction.UPSTREAM,
                session=session,
                friendly=text,
                extra={**extra, "status": reply.status.value},
                **fields,
            )
        )
        return reply

    def _answer_for(self, name: str, key: str) -> MapAnswer | None:
        """The answer to ``key`` in map ``name``: rendered once, then remembered.

        It depends on the key and the configuration alone, except that a dsn text laid out
        as a bounce entry names the time to the second: that one is reused within its second.
        """
        now = self._clock()
        second = int(now.timestamp())
        cached = self._answers.get((name, key))
        if cached is not None and cached[1] in (None, second):
            return cached[0]
        answer = answer_lookup(
            name,
            key,
            self._kb,
            self._texts,
            same_line=self._same_line,
            dsn_deferrals=self._dsn_deferrals,
            own_rule=partial(recognised_rule, self._own),
            bounce=(self._bounce_words, now),
        )
        if len(self._answers) >= ANSWER_CACHE_SIZE and (name, key) not in self._answers:
            del self._answers[next(iter(self._answers))]  # the oldest entry
        timed = answer is not None and answer.entry == "bounce"
        self._answers[(name, key)] = (answer, second if timed else None)
        return answer

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
