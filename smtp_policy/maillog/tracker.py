"""Turn parsed mail log records into reply events and one record per message.

Theory of operation: a mail log is many processes talking at once about many messages. The
parser (``smtp_policy.maillog.parse``) reads one line at a time and knows nothing of the others;
:class:`MessageTracker` is the one place that remembers across lines. It is pure: records in,
:class:`~smtp_policy.core.events.Event` values out (:meth:`MessageTracker.feed`), no I/O and no
clock. :meth:`MessageTracker.track` gives the same without building events: a
:class:`SeenReply` per reply line and a :class:`DoneMessage` per message that left, each
holding what its event is made of; ``report`` counts from them, the follower writes their JSON
form (``to_form``, the event's ``to_dict()`` without the event), anything else calls
``to_event``. Time is the log's own (each record's timestamp); when a record has none, the
caller's ``observed_at`` or the last log time stands in.

Every line that carries a reply (an smtpd/postscreen/milter reject upstream; a delivery status,
a non-final attempt or a connection error downstream; a Sendmail ``stat=``/``reject=``) becomes
one ``reply`` event at once, explained by the core. The parser has already read the reply's
code (and, for Postfix's ``host ... said: ... (in reply to ... command)``, the command), so the
reply is built from those parts (``core.parse.reply_from_parts``) instead of parsing the text
again; texts the parser could not take apart (no code, Sendmail's ``stat=``) are parsed whole.
Explaining costs tens of microseconds, and logs repeat the same few texts with other addresses
and queue ids in them, so explanations are cached (LRU) by those parts (or the text) with the
volatile parts masked; the event keeps the real text.

Alongside, the tracker keeps one entry per queue id in flight: the inbound session (client and
HELO, from smtpd's ``connect``/``client=`` lines and any reject that names the HELO), the
message id (cleanup), sender, size and recipient count (qmgr, or Sendmail's ``from=``), each
delivery attempt per recipient with its reply, and bounce notices (``sender non-delivery
notification: NEWQID`` links the old message to the new one, both ways). When the message
leaves the queue it yields one ``message`` event that joins all of that:

- Postfix: qmgr's ``removed`` (after an expiry, ``removed`` follows too), or a reject at
  END-OF-MESSAGE (the message was never queued, nothing else will be logged);
- Sendmail (which logs no removal): once every recipient has a final status.

Memory is bounded in log time: an entry (or smtpd session) idle for longer than ``max_idle``
seconds is flushed as an incomplete record. Recently finished queue ids are remembered (a
bounded set) so that a late line cannot resurrect a finished message. The whole state is plain
JSON (:meth:`MessageTracker.to_json`), saved beside the file positions for ``--state``.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any, Final, NamedTuple

from smtp_policy.core.classify import classify
from smtp_policy.core.events import (
    DETAIL_CAP,
    NAME_CAP,
    TEXT_CAP,
    BounceNotice,
    Direction,
    Event,
    EventKind,
    MessageReply,
    RecipientSummary,
    Source,
    bare_address,
    capped,
    capped_detail,
    event_head,
    new_event,
    new_message_reply,
    new_message_summary,
    new_recipient_summary,
    reply_fields,
)
from smtp_policy.core.explain import explain, explain_text
from smtp_policy.core.knowledge import KnowledgeBase
from smtp_policy.core.model import Explanation, ReplyForm
from smtp_policy.core.parse import MAX_PARSE_CHARS, reply_from_parts
from smtp_policy.core.policy import OwnReply, recognise_reply
from smtp_policy.core.stages import stage_of
from smtp_policy.maillog.record import LogRecord

STATE_VERSION = 1
#: Entries idle for longer than this (seconds of log time) are flushed as incomplete. Postfix
#: retries a deferred message at least every maximal_backoff_time (4000 s) and logs each try,
#: so a queued message is rarely silent this long (on hold, or its log lines were lost).
DEFAULT_MAX_IDLE = 3 * 3600.0
#: Idle entries are looked for at most this often (seconds of log time).
SWEEP_EVERY = 60.0
#: How many finished queue ids are remembered, so late lines do not start a new entry.
FINISHED_MEMORY = 16_384
#: Explanations cached by masked reply text.
EXPLAIN_CACHE = 8192

#: Record kinds whose line carries a reply.
REPLY_KINDS = frozenset(
    {
        "smtpd_reject",
        "postscreen_reject",
        "milter_reject",
        "delivery",
        "attempt",
        "connection_error",
        "expired",
        "sendmail_delivery",
        "sendmail_ruleset_reject",
        "sendmail_milter_reject",
        "sendmail_reject",
    }
)
#: Record kinds that may start an entry for their queue id.
_STARTS = frozenset(
    {
        "client",
        "pickup",
        "message_id",
        "queued",
        "delivery",
        "attempt",
        "expired",
        "smtpd_reject",
        "milter_reject",
        "sendmail_from",
        "sendmail_delivery",
        "sendmail_ruleset_reject",
        "sendmail_milter_reject",
        "sendmail_reject",
        "bounce_notice",
    }
)
_DELIVERIES = frozenset({"delivery", "sendmail_delivery"})
_UPSTREAM_REJECTS = frozenset(
    {
        "smtpd_reject",
        "milter_reject",
        "sendmail_ruleset_reject",
        "sendmail_milter_reject",
        "sendmail_reject",
    }
)
#: Recipient statuses after which nothing more happens to that recipient.
FINAL_STATUSES = frozenset(
    {"sent", "discarded", "bounced", "expired", "deliverable", "undeliverable"}
)
#: Accepted for the recipient; ``discarded``: by Postfix's discard transport, not delivered.
_DELIVERED = frozenset({"sent", "deliverable", "discarded"})
#: Stages at which a reject ends the whole message (it is not queued).
_WHOLE_MESSAGE_STAGES = frozenset({"data", "eom"})
#: Actions that refuse a whole message when taken at DATA or END-OF-MESSAGE (hold keeps it).
_REFUSING = frozenset({"reject", "discard"})
#: Reply kinds that are a step of a delivery attempt: a later line gives the outcome (a
#: ``status=`` line), so counting them too would count one failure twice.
DETAIL_KINDS = frozenset({"attempt", "connection_error"})
#: Who took an action (``by``, as in the milter's events), by the prefix the MTA puts on its
#: action word (``milter-reject``); without one, the MTA's own checks.
_ACTION_BY = {"milter": "milter", "proxy": "proxy"}

_VOLATILE = re.compile(
    r"<[^<>@\s]{0,256}@|queued as [\w.-]+|\b(?:id|ID|Id)[=:]\s?[\w.@-]+"
    r"|\[\d{1,3}(?:\.\d{1,3}){3}\]"
)
#: What ends the common success reply ``250 2.0.0 Ok: queued as 4XZR7Q9PLM2K``.
_QUEUED_AS = " queued as "
#: A queue id as ``_VOLATILE`` masks it after ``queued as``.
_QUEUED_ID = re.compile(r"[\w.-]+")
#: The masked form of that ending.
_QUEUED_MASKED = " queued as X"


@dataclass(slots=True)
class _Recipient:
    address: str
    orig: str | None = None
    status: str | None = None
    attempts: list[MessageReply] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "orig": self.orig, "status": self.status,
                "attempts": [a.to_dict() for a in self.attempts]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Recipient:
        attempts = [MessageReply.from_dict(a) for a in data.get("attempts", [])]
        return cls(data["address"], data.get("orig"), data.get("status"), attempts)


@dataclass(slots=True)
class _Message:
    queue_id: str
    first_seen: float
    last_seen: float
    mta: str | None = None
    origin: str | None = None
    client_name: str | None = None
    client_addr: str | None = None
    helo: str | None = None
    session: str | None = None
    connected: float | None = None
    sender: str | None = None
    message_id: str | None = None
    size: int | None = None
    nrcpt: int | None = None
    queued: bool = False
    expired: bool = False
    rejected: bool = False
    recipients: dict[str, _Recipient] = field(default_factory=dict)
    upstream: list[MessageReply] = field(default_factory=list)
    attempts: list[MessageReply] = field(default_factory=list)
    notifications: list[BounceNotice] = field(default_factory=list)
    notification_for: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _MESSAGE_SAVED:
            value = getattr(self, name)
            out[name] = [v.to_dict() for v in value] if name in _MESSAGE_LISTS else value
        out["recipients"] = [r.to_dict() for r in self.recipients.values()]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Message:
        msg = cls(**{k: data[k] for k in _MESSAGE_SAVED if k in data and k not in _MESSAGE_LISTS})
        msg.upstream = [MessageReply.from_dict(u) for u in data.get("upstream", [])]
        msg.attempts = [MessageReply.from_dict(a) for a in data.get("attempts", [])]
        msg.notifications = [BounceNotice.from_dict(n) for n in data.get("notifications", [])]
        for r in data.get("recipients", []):
            msg.recipients[r["address"]] = _Recipient.from_dict(r)
        return msg


#: The fields saved in the state, in order (recipients follow); the lists hold typed values.
_MESSAGE_SAVED = tuple(n for n in _Message.__dataclass_fields__ if n != "recipients")
_MESSAGE_LISTS = frozenset({"upstream", "attempts", "notifications"})


@dataclass(slots=True)
class _Session:
    client_name: str | None
    client_addr: str | None
    connected: float
    last_seen: float
    helo: str | None = None
    queue_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Known:
    """A cached explanation, with what every event built from it needs, computed once."""

    explanation: Explanation
    fields: dict[str, Any]  # code, enhanced, klass, reason, summary, rule (not text)
    stage: str | None  # from "(in reply to RCPT TO command)", when the text says
    #: ``class`` and ``reason``, then ``summary``, ``rule`` and ``decided_by``, as an event's
    #: JSON form writes them (capped, null ones left out): the parts before and after ``text``.
    before_text: tuple[tuple[str, object], ...] = ()
    after_text: tuple[tuple[str, object], ...] = ()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: What a tracker that does not keep replies (``keep_replies=False``) keeps of each one.
UNKEPT_REPLY: Final = MessageReply(ts="")
_NO_FIELDS: dict[str, Any] = {}


class SeenReply(NamedTuple):
    """A reply line as the tracker saw it: the record, its time, its (cached) explanation, and
    what its message had said by then (client, HELO, sender, this attempt's number).

    Cheap to make (no event yet): ``report`` counts from it (the properties below), ``follow``
    writes :meth:`to_event`. The properties are the values that event carries.
    """

    record: LogRecord
    ts: datetime
    known: _Known | None
    msg_client_addr: str | None
    msg_client_name: str | None
    msg_helo: str | None
    msg_sender: str | None
    attempt: int | None

    @property
    def direction(self) -> str | None:
        """``upstream`` or ``downstream``, as the event's ``direction``."""
        direction = self.record.direction
        return direction if direction in _DIRECTIONS else None

    @property
    def detail(self) -> bool:
        """Only a step of a delivery attempt (the event's ``detail``): its outcome counts."""
        return self.record.kind in DETAIL_KINDS

    @property
    def status(self) -> str | None:
        """The line's ``status=`` word, as it wrote it."""
        return self.record.status

    @property
    def delay(self) -> float | None:
        """The line's ``delay=`` (seconds)."""
        return self.record.delay

    @property
    def text(self) -> str | None:
        """The reply as the line wrote it."""
        return self.record.reply

    @property
    def queue_id(self) -> str | None:
        """The line's queue id."""
        return self.record.queue_id

    @property
    def action(self) -> str | None:
        """What the MTA did (``reject``, ``hold``...), in the one action vocabulary."""
        return _action(self.record.action)[0]

    @property
    def klass(self) -> str | None:
        """The reply's class (``transient``, ``permanent``...)."""
        return self.known.fields.get("klass") if self.known is not None else None

    @property
    def reason(self) -> str | None:
        """The reason the explanation found."""
        return self.known.fields.get("reason") if self.known is not None else None

    @property
    def summary(self) -> str | None:
        """The one-line explanation."""
        return self.known.fields.get("summary") if self.known is not None else None

    @property
    def code(self) -> int | None:
        """The reply code: the line's, else the explanation's."""
        code = self.record.code
        if code is not None or self.known is None:
            return code
        value: int | None = self.known.fields.get("code")
        return value

    @property
    def enhanced(self) -> str | None:
        """The enhanced status code: the line's (or its ``dsn=``), else the explanation's."""
        record = self.record
        enhanced = record.enhanced or record.dsn
        if enhanced or self.known is None:
            return enhanced
        value: str | None = self.known.fields.get("enhanced")
        return value

    @property
    def recipient(self) -> str | None:
        """The recipient, without angle brackets."""
        return _bare(self.record.recipient)

    @property
    def sender(self) -> str | None:
        """The sender (the line's, else its message's), without angle brackets."""
        sender = self.record.sender
        return _bare(sender if sender is not None else self.msg_sender)

    def to_event(self) -> Event:
        """The ``reply`` event."""
        record, known = self.record, self.known
        fields: dict[str, Any] = {**known.fields} if known is not None else {}
        fields["text"] = record.reply
        if record.code is not None:
            fields["code"] = record.code
        enhanced = record.enhanced or record.dsn
        if enhanced:
            fields["enhanced"] = enhanced
        kind = record.kind
        extra: dict[str, Any] = {"kind": kind}  # then what the line says, in this order
        if record.status is not None:
            extra["status"] = record.status
        if record.action is not None:
            extra["action"], extra["by"] = _action(record.action)
        if kind in DETAIL_KINDS:
            extra["detail"] = True
        if record.program == "discard":
            extra["transport"] = "discard"
        if record.relay is not None:
            extra["relay"] = record.relay
        if record.delay is not None:
            extra["delay"] = record.delay
        if record.delays is not None:
            extra["delays"] = record.delays
        if record.dsn is not None:
            extra["dsn"] = record.dsn
        if record.orig_recipient is not None:
            extra["orig_recipient"] = _bare(record.orig_recipient)
        if self.attempt is not None:
            extra["attempt"] = self.attempt
        if record.host is not None:
            extra["host"] = record.host
        if record.program is not None:
            extra["program"] = record.program
        if record.pid is not None:
            extra["pid"] = record.pid
        return new_event(
            event=EventKind.REPLY,
            source=Source.LOG,
            ts=self.ts,
            direction=_direction(record),
            stage=_stage(record, known),
            queue_id=record.queue_id,
            client_addr=record.client_addr or self.msg_client_addr,
            client_name=record.client_name or self.msg_client_name,
            helo=record.helo or self.msg_helo,
            sender=self.sender,
            recipient=_bare(record.recipient),
            mta=record.mta,
            friendly=record.extra_value("friendly") if record.extra else None,
            extra=extra,
            **fields,
        )

    def to_form(self) -> dict[str, object]:
        """:meth:`to_event`'s JSON form (``to_event().to_dict()``, key order included), built
        without the event: the follower writes hundreds of thousands."""
        record, known = self.record, self.known
        out = event_head(EventKind.REPLY, Source.LOG, self.ts)
        direction = _DIRECTIONS.get(record.direction) if record.direction else None
        if direction is not None:
            out["direction"] = direction
        stage = _stage(record, known)
        if stage is not None:
            out["stage"] = _schema_text(stage, NAME_CAP)
        sender, recipient = self.sender, _bare(record.recipient)
        for key, value in (
            ("queue_id", record.queue_id),
            ("client_addr", record.client_addr or self.msg_client_addr),
            ("client_name", record.client_name or self.msg_client_name),
            ("helo", record.helo or self.msg_helo),
            ("sender", None if sender is None else bare_address(sender)),
            ("recipient", None if recipient is None else bare_address(recipient)),
        ):
            if value is not None:
                out[key] = (
                    value if len(value) <= NAME_CAP and value.isascii() else capped(value, NAME_CAP)
                )
        fields = known.fields if known is not None else _NO_FIELDS
        code = record.code if record.code is not None else fields.get("code")
        if code is not None:
            out["code"] = code
        enhanced = record.enhanced or record.dsn or fields.get("enhanced")
        if enhanced is not None:
            out["enhanced"] = _schema_text(enhanced, NAME_CAP)
        if known is not None:
            out.update(known.before_text)
        if record.reply is not None:
            out["text"] = _schema_text(record.reply, TEXT_CAP)
        if record.extra:
            friendly = record.extra_value("friendly")
            if friendly is not None:
                out["friendly"] = _schema_text(friendly, TEXT_CAP)
        if known is not None:
            out.update(known.after_text)
        out["mta"] = record.mta  # postfix or sendmail
        _add_extras_form(out, record, self.attempt)
        return out


class DoneMessage(NamedTuple):
    """A message that left the queue (or was flushed: ``flushed`` says why) at ``now`` (log
    time, epoch seconds): ``report`` counts from it, ``follow`` writes :meth:`to_event`."""

    message: _Message
    now: float
    flushed: str | None
    tz: tzinfo
    iso: Callable[[float], str]

    @property
    def ts(self) -> datetime:
        """When the message left (the ``message`` event's ``ts``)."""
        return datetime.fromtimestamp(self.now, self.tz)

    @property
    def queue_id(self) -> str:
        """The message's queue id."""
        return self.message.queue_id

    @property
    def origin(self) -> str | None:
        """How it came in (the record's ``origin``)."""
        return self.message.origin

    @property
    def size(self) -> int | None:
        """Its size in bytes, when the log said."""
        return self.message.size

    @property
    def notification_for(self) -> str | None:
        """The queue id of the message this one is a notice about."""
        return self.message.notification_for

    @property
    def status(self) -> str:
        """The message record's ``status``."""
        return _message_status(self.message, self.flushed)

    @property
    def received_at(self) -> datetime:
        """When it came in, to the second (its record's ``received``), in UTC."""
        return datetime.fromtimestamp(int(self.message.first_seen), UTC)

    @property
    def sender(self) -> str | None:
        """The sender, without angle brackets."""
        return _bare(self.message.sender)

    def recipient_statuses(self) -> list[tuple[str | None, str | None]]:
        """Each recipient (without angle brackets) with its status, in the record's order."""
        return [(_bare(r.address), r.status) for r in self.message.recipients.values()]

    def to_event(self) -> Event:
        """The ``message`` event."""
        return _message_event(self.message, self.now, self.flushed, self.tz, self.iso)

    def to_form(self) -> dict[str, object]:
        """:meth:`to_event`'s JSON form (``to_event().to_dict()``, key order included), built
        without the event and its record's dataclasses. What the tracker computed (status,
        flushed, ISO times) is written as it is: nothing in it to cap."""
        msg, iso = self.message, self.iso
        rcpts = list(msg.recipients.values())
        out = event_head(EventKind.MESSAGE, Source.LOG, self.ts)
        for key, value in (
            ("queue_id", msg.queue_id),
            ("client_addr", msg.client_addr),
            ("client_name", msg.client_name),
            ("helo", msg.helo),
            ("sender", None if msg.sender is None else bare_address(msg.sender)),
            ("recipient", bare_address(rcpts[0].address) if len(rcpts) == 1 else None),
        ):
            if value is not None:
                out[key] = (
                    value if len(value) <= NAME_CAP and value.isascii() else capped(value, NAME_CAP)
                )
        deciding = _deciding_attempt(msg)
        if deciding is not None:
            _add_deciding_form(out, deciding)
        if msg.mta is not None:
            out["mta"] = _schema_text(msg.mta, NAME_CAP)
        flushed = self.flushed
        out["status"] = _message_status(msg, flushed)
        out["complete"] = flushed is None
        if flushed is not None:
            out["flushed"] = flushed
        if msg.message_id is not None:
            out["message_id"] = _detail_text(msg.message_id)
        if msg.size is not None:
            out["size"] = msg.size
        if msg.nrcpt is not None:
            out["nrcpt"] = msg.nrcpt
        out["received"] = iso(msg.first_seen)
        if msg.connected is not None:
            out["connected"] = iso(msg.connected)
        out["delay"] = _message_delay(msg, self.now)
        out["recipients"] = [_recipient_form(r) for r in rcpts]
        if msg.upstream:
            out["upstream"] = [u.to_dict(capped_detail) for u in msg.upstream]
        if msg.attempts:
            out["attempts"] = [a.to_dict(capped_detail) for a in msg.attempts]
        if msg.notifications:
            out["notifications"] = [n.to_dict(capped_detail) for n in msg.notifications]
        if msg.notification_for is not None:
            out["notification_for"] = _detail_text(msg.notification_for)
        if msg.origin is not None:
            out["origin"] = _detail_text(msg.origin)
        return out


def _add_deciding_form(out: dict[str, object], deciding: MessageReply) -> None:
    """The reply that explains a message's outcome, as its event's schema fields."""
    if deciding.code is not None:
        out["code"] = deciding.code
    for key, value, cap in (
        ("enhanced", deciding.enhanced, NAME_CAP),
        ("class", deciding.klass, NAME_CAP),
        ("reason", deciding.reason, NAME_CAP),
        ("text", deciding.text, TEXT_CAP),
        ("summary", deciding.summary, DETAIL_CAP),
        ("rule", deciding.rule, NAME_CAP),
    ):
        if value is not None:
            out[key] = value if len(value) <= cap and value.isascii() else capped(value, cap)


def _add_extras_form(out: dict[str, object], record: LogRecord, attempt: int | None) -> None:
    """A reply event's extras (what the line says), as its JSON form writes them, into ``out``:
    the keys and order of :meth:`SeenReply.to_event`'s ``extra``."""
    kind = record.kind
    out["kind"] = kind  # one of KINDS
    if record.status is not None:
        out["status"] = (
            record.status
            if len(record.status) <= DETAIL_CAP and record.status.isascii()
            else capped(record.status, DETAIL_CAP)
        )
    if record.action is not None:
        action, by = _action(record.action)
        out["action"] = None if action is None else _detail_text(action)
        out["by"] = by  # mta, milter or proxy
    if kind in DETAIL_KINDS:
        out["detail"] = True
    if record.program == "discard":
        out["transport"] = "discard"
    if record.relay is not None:
        out["relay"] = (
            record.relay
            if len(record.relay) <= DETAIL_CAP and record.relay.isascii()
            else capped(record.relay, DETAIL_CAP)
        )
    if record.delay is not None:
        out["delay"] = record.delay
    if record.delays is not None:
        out["delays"] = capped_detail(record.delays)
    if record.dsn is not None:
        out["dsn"] = (
            record.dsn
            if len(record.dsn) <= DETAIL_CAP and record.dsn.isascii()
            else capped(record.dsn, DETAIL_CAP)
        )
    if record.orig_recipient is not None:
        out["orig_recipient"] = _detail_text(_bare(record.orig_recipient) or "")
    if attempt is not None:
        out["attempt"] = attempt
    if record.host is not None:
        out["host"] = (
            record.host
            if len(record.host) <= DETAIL_CAP and record.host.isascii()
            else capped(record.host, DETAIL_CAP)
        )
    if record.program is not None:
        out["program"] = (
            record.program
            if len(record.program) <= DETAIL_CAP and record.program.isascii()
            else capped(record.program, DETAIL_CAP)
        )
    if record.pid is not None:
        out["pid"] = record.pid


def _recipient_form(rcpt: _Recipient) -> dict[str, object]:
    """A recipient in a message event's JSON form (``RecipientSummary.to_dict``'s)."""
    last = rcpt.attempts[-1] if rcpt.attempts else None
    out: dict[str, object] = {}
    for key, value in (
        ("recipient", _bare(rcpt.address)),
        ("orig_recipient", _bare(rcpt.orig)),
        ("status", rcpt.status),
        ("dsn", last.dsn if last else None),
        ("relay", last.relay if last else None),
    ):
        if value is not None:
            out[key] = (
                value if len(value) <= DETAIL_CAP and value.isascii() else capped(value, DETAIL_CAP)
            )
    out["attempts"] = [a.to_dict(capped_detail) for a in rcpt.attempts]
    return out


#: What the tracker gives back: replies and messages, in the order the log completed them.
Tracked = SeenReply | DoneMessage


@dataclass(slots=True)
class LogClock:
    """The log's own time. Syslog stamps carry no year: it is ``year`` if the caller fixed it,
    else the year of the first ``observed_at`` (the year before, if that would put the line in
    the future); from then on it only moves forward when December is followed by January."""

    tz: tzinfo = UTC
    year: int | None = None
    last_month: int | None = None
    _key: tuple[int, int | None, str | None] | None = None
    _value: datetime | None = None

    def time_of(self, record: LogRecord, observed_at: datetime | None) -> datetime | None:
        """An aware timestamp for the record, or None when it has none."""
        parsed = record.parsed_time
        if parsed is not None:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=self.tz)
        month = record.month
        if month is None:
            return None
        key = (month, record.day, record.clock)
        if key == self._key:
            return self._value
        year = self._year_for(record, observed_at)
        self._key, self._value = key, record.at(year, self.tz)
        return self._value

    def _year_for(self, record: LogRecord, observed_at: datetime | None) -> int:
        month = record.month or 1
        if self.year is None:
            ref = observed_at or _EPOCH
            self.year = ref.year
            guess = record.at(ref.year, self.tz)
            if guess is not None and guess > ref + timedelta(days=1):
                self.year -= 1
        elif self.last_month == 12 and month == 1:
            self.year += 1
        self.last_month = month
        return self.year


class MessageTracker:
    """Consume parsed log records; yield reply events and, per message, one message record.

    With ``keep_replies=False`` a message keeps, of each of its replies (attempts, upstream
    rejects), only that there was one (:data:`UNKEPT_REPLY`): its statuses, counts and
    everything a :class:`SeenReply` carries are the same, its record's replies are not
    (``report`` reads none of them; ``follow`` and ``trace`` keep them).
    """

    def __init__(
        self,
        kb: KnowledgeBase,
        *,
        max_idle: float = DEFAULT_MAX_IDLE,
        tz: tzinfo = UTC,
        year: int | None = None,
        explain_cache: int = EXPLAIN_CACHE,
        own: Iterable[OwnReply] = (),
        keep_replies: bool = True,
    ) -> None:
        self._kb = kb
        self._keep_replies = keep_replies
        self._own = tuple(own)
        self._own_known: dict[str, _Known] = {}
        self.max_idle = max_idle
        self._tz = tz
        self._clock = LogClock(tz, year)
        self._messages: dict[str, _Message] = {}
        self._sessions: dict[str, _Session] = {}
        self._finished: OrderedDict[str, bool] = OrderedDict()  # queue id -> complete
        self._now = 0.0
        self._last_sweep = 0.0
        self._known: Callable[[str], _Known] = lru_cache(maxsize=explain_cache)(self._learn)
        self._known_parts: Callable[[_Parts], _Known | None] = lru_cache(maxsize=explain_cache)(
            self._learn_parts
        )
        # reply text before `` queued as <id>`` -> (its code, its explanation or None: no shortcut)
        self._queued_known: dict[str, tuple[int, _Known | None]] = {}
        self._queued_cap = explain_cache
        self._iso_second = -1
        self._iso_text = ""
        self._epoch_of: datetime | None = None
        self._epoch_value = 0.0

    # -- public ------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """How many messages are being tracked now."""
        return len(self._messages)

    def feed(self, record: LogRecord, observed_at: datetime | None = None) -> list[Event]:
        """Consume one record; the events it completes (replies first, then message records)."""
        return [seen.to_event() for seen in self.track(record, observed_at)]

    def track(self, record: LogRecord, observed_at: datetime | None = None) -> list[Tracked]:
        """Consume one record; what it completes, as :meth:`feed` but not yet made events: a
        :class:`SeenReply` for a reply line, a :class:`DoneMessage` per message that left."""
        ts = self._clock.time_of(record, observed_at)
        if ts is None:  # the log gave no time: it does not move the log's clock
            ts = self._untimed(observed_at)
            now = self._epoch(ts)
        else:
            # _epoch inline: most lines share the last one's second
            now = self._epoch_value if ts is self._epoch_of else self._epoch(ts)
            if now > self._now:  # noqa: PLR1730 (max() is a call per line)
                self._now = now
        out: list[Tracked] = []
        kind = record.kind
        known = None
        reply = kind in REPLY_KINDS
        if reply:
            known = self._explain_record(record)
        msg = self._message_for(record, now)
        if reply:
            out.append(self._seen_reply(record, ts, known, msg))
        if msg is not None:
            done = self._update(msg, record, ts, known)
            if done is not None:
                out.append(done)
        else:
            self._session_only(record, now)
        if self._now - self._last_sweep >= SWEEP_EVERY:
            self._last_sweep = self._now
            out += self._flush_idle()
        return out

    def flush_idle(self) -> list[Event]:
        """Flush entries idle for longer than ``max_idle`` (log time) as incomplete records."""
        return [done.to_event() for done in self._flush_idle()]

    def _flush_idle(self) -> list[DoneMessage]:
        limit = self._now - self.max_idle
        stale = [q for q, m in self._messages.items() if m.last_seen < limit]
        for key in [k for k, s in self._sessions.items() if s.last_seen < limit]:
            del self._sessions[key]
        return [self._finish(self._messages[q], self._now, flushed="idle") for q in stale]

    def flush_all(self) -> list[Event]:
        """The input is over: every message still in flight as an incomplete record."""
        return [done.to_event() for done in self.track_end()]

    def track_end(self) -> list[DoneMessage]:
        """:meth:`flush_all`, not yet made events."""
        out = [self._finish(m, self._now, flushed="end") for m in list(self._messages.values())]
        self._sessions.clear()
        return out

    def explain(self, text: str) -> Explanation:
        """The (cached) explanation of a reply text, volatile parts masked."""
        return self._known(_VOLATILE.sub(_mask, text)).explanation

    def to_json(self) -> dict[str, Any]:
        """The whole in-flight state as plain JSON data."""
        return {
            "version": STATE_VERSION,
            "now": self._now,
            "last_sweep": self._last_sweep,
            "year": self._clock.year,
            "last_month": self._clock.last_month,
            "messages": [m.to_dict() for m in self._messages.values()],
            "sessions": {
                k: {**{n: getattr(s, n) for n in _Session.__dataclass_fields__}}
                for k, s in self._sessions.items()
            },
            "finished": [[q, c] for q, c in self._finished.items()],
        }

    @classmethod
    def from_json(
        cls,
        data: Mapping[str, Any],
        kb: KnowledgeBase,
        *,
        max_idle: float = DEFAULT_MAX_IDLE,
        tz: tzinfo = UTC,
        year: int | None = None,
        own: Iterable[OwnReply] = (),
    ) -> MessageTracker:
        """Rebuild a tracker from :meth:`to_json`; raise ValueError on an unknown version."""
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unknown tracker state version {data.get('version')!r}")
        tracker = cls(kb, max_idle=max_idle, tz=tz, year=year or data.get("year"), own=own)
        tracker._clock.last_month = data.get("last_month")
        tracker._now = float(data.get("now", 0.0))
        tracker._last_sweep = float(data.get("last_sweep", 0.0))
        for raw in data.get("messages", []):
            msg = _Message.from_dict(raw)
            tracker._messages[msg.queue_id] = msg
        for key, raw in data.get("sessions", {}).items():
            tracker._sessions[key] = _Session(**raw)
        tracker._finished = OrderedDict((str(q), bool(c)) for q, c in data.get("finished", []))
        return tracker

    # -- replies -------------------------------------------------------------------------------

    def _own_reply(self, text: str) -> _Known | None:
        """What a rejection one of our rules made means: the rule's reason, and its name."""
        own = recognise_reply(self._own, text)
        if own is None or own.decision.explanation is None:
            return None
        known = self._own_known.get(own.rule)
        if known is None:
            known = _known(own.decision.explanation, own.rule)
            self._own_known[own.rule] = known
        return known

    def _learn(self, text: str) -> _Known:
        return _known(explain_text(text, self._kb))

    def _learn_parts(self, parts: _Parts) -> _Known | None:
        code, body, form, command, remote = parts
        reply = reply_from_parts(
            body, code, body, form=form, command=command, remote=remote, codes=self._kb.codebook
        )
        if reply is None:
            return None
        return _known(explain(classify(reply, self._kb), self._kb))

    def _epoch(self, ts: datetime) -> float:
        """``ts.timestamp()``; the log clock hands out one object per second of log time."""
        if ts is not self._epoch_of:
            self._epoch_of, self._epoch_value = ts, ts.timestamp()
        return self._epoch_value

    def _iso(self, epoch: float) -> str:
        """``2026-11-28T12:31:59Z``; consecutive lines mostly share their second."""
        second = int(epoch)
        if second != self._iso_second:
            self._iso_second = second
            self._iso_text = _iso(second, UTC)
        return self._iso_text

    def _explain_record(self, record: LogRecord) -> _Known | None:
        text = record.reply
        if text and self._own and record.kind in _UPSTREAM_REJECTS:
            own = self._own_reply(text)
            if own is not None:
                return own
        if not text:
            if record.kind != "expired":
                return None
            text = "message expired, returned to sender"
        elif record.code is not None and record.kind != "expired":
            cut = text.rfind(_QUEUED_AS)
            if cut > 0 and len(text) <= MAX_PARSE_CHARS:
                seen = self._queued_known.get(text[:cut])
                if seen is not None and seen[0] == record.code and seen[1] is not None:
                    if _QUEUED_ID.fullmatch(text, cut + len(_QUEUED_AS)):
                        return seen[1]
                elif seen is None:
                    return self._learn_queued(record, record.code, text, cut)
            masked = _VOLATILE.sub(_mask, text)
            parts = _parts(record, text, masked)
            known = self._known_parts(parts) if parts is not None else None
            return known if known is not None else self._known(masked)
        enhanced = _str(record.enhanced) or record.dsn
        if record.code is None and enhanced and enhanced not in text:
            text = f"{enhanced} {text}"
        elif record.kind == "expired" and "4.4.7" not in text:
            text = f"4.4.7 {text}"
        return self._known(_VOLATILE.sub(_mask, text))

    def _learn_queued(self, record: LogRecord, code: int, text: str, cut: int) -> _Known:
        """Explain a reply ending ``queued as <id>`` and remember it by the text before the id.

        The shortcut is kept only when the masked text ends `` queued as X`` (no mask reached
        across the id's beginning) and does not start ``host `` (whose parts depend on the
        record): every reply with the same beginning and code then masks, and so is explained,
        the same.
        """
        masked = _VOLATILE.sub(_mask, text)
        parts = _parts(record, text, masked)
        known = self._known_parts(parts) if parts is not None else None
        if known is None:
            known = self._known(masked)
        head = text[:cut]
        shortcut = (
            _QUEUED_ID.fullmatch(text, cut + len(_QUEUED_AS)) is not None
            and masked.endswith(_QUEUED_MASKED)
            and not masked.startswith("host ")
            and parts is not None
        )
        if len(self._queued_known) >= self._queued_cap:
            self._queued_known.clear()
        self._queued_known[head] = (code, known if shortcut else None)
        return known

    def _seen_reply(
        self,
        record: LogRecord,
        ts: datetime,
        known: _Known | None,
        msg: _Message | None,
    ) -> SeenReply:
        if msg is None:
            return SeenReply(record, ts, known, None, None, None, None, None)
        return SeenReply(
            record,
            ts,
            known,
            msg.client_addr,
            msg.client_name,
            msg.helo,
            msg.sender,
            self._attempt_number(msg, record),
        )

    def _attempt_number(self, msg: _Message | None, record: LogRecord) -> int | None:
        if msg is None or record.kind not in _DELIVERIES:
            return None
        rcpts = _recipients(record.recipient)
        if not rcpts:
            return None
        known = msg.recipients.get(rcpts[0])
        return (len(known.attempts) if known else 0) + 1

    # -- messages ------------------------------------------------------------------------------

    def _message_for(self, record: LogRecord, now: float) -> _Message | None:
        qid = record.queue_id
        if not qid or qid == "NOQUEUE":
            return None
        msg = self._messages.get(qid)
        if msg is not None:
            msg.last_seen = now
            return msg
        kind = record.kind
        if kind not in _STARTS:
            return None
        complete = self._finished.get(qid)
        if complete is not None:
            if complete and kind not in ("client", "pickup", "message_id", "sendmail_from"):
                return None  # a late line about a message already recorded
            del self._finished[qid]  # a reused queue id, or more of an incomplete record
        msg = _Message(qid, now, now, mta=record.mta)
        self._messages[qid] = msg
        return msg

    def _update(
        self,
        msg: _Message,
        record: LogRecord,
        ts: datetime,
        known: _Known | None,
    ) -> DoneMessage | None:
        """Apply one record to its message; the message, if this finished it."""
        kind = record.kind
        now = msg.last_seen
        self._fill_client(msg, record)
        if kind == "client":
            msg.origin = msg.origin or "smtpd"
            self._link_session(msg, record, now)
        elif kind == "pickup":
            msg.origin = msg.origin or "pickup"
        elif kind == "message_id":
            msg.message_id = record.message_id or msg.message_id
        elif kind in ("queued", "sendmail_from"):
            if kind == "sendmail_from":
                msg.origin = msg.origin or "sendmail"
            self._queued(msg, record)
        elif kind in _DELIVERIES:
            self._delivered(msg, record, ts, known)
        elif kind == "attempt":
            msg.attempts.append(self._attempt(record, ts, known))
        elif kind == "expired":
            self._expire(msg, record, ts, known)
        elif kind == "bounce_notice":
            self._bounce_notice(msg, record, now)
        elif kind in _UPSTREAM_REJECTS:
            self._rejected(msg, record, ts, known)
        if self._done(msg, kind, record):
            return self._finish(msg, now, flushed=None)
        return None

    def _fill_client(self, msg: _Message, record: LogRecord) -> None:
        """What the message does not know yet, from the line (written only then)."""
        if not msg.client_name:
            msg.client_name = record.client_name
        if not msg.client_addr:
            msg.client_addr = record.client_addr
        if not msg.helo:
            msg.helo = record.helo
        if not msg.mta:
            msg.mta = record.mta
        if record.sender is not None and msg.sender is None:
            msg.sender = record.sender

    def _link_session(self, msg: _Message, record: LogRecord, now: float) -> None:
        session = self._sessions.get(_session_key(record))
        if session is None:
            return
        session.last_seen = now
        session.queue_ids.append(msg.queue_id)
        msg.session = _session_key(record)
        msg.connected = session.connected
        msg.helo = msg.helo or session.helo
        msg.client_name = msg.client_name or session.client_name
        msg.client_addr = msg.client_addr or session.client_addr

    def _queued(self, msg: _Message, record: LogRecord) -> None:
        msg.queued = True
        msg.size = _int(record.extra_value("size")) or msg.size
        nrcpt = record.extra_value("nrcpt") or record.extra_value("nrcpts")
        msg.nrcpt = _int(nrcpt) or msg.nrcpt
        msg.message_id = msg.message_id or record.message_id

    def _delivered(
        self,
        msg: _Message,
        record: LogRecord,
        ts: datetime,
        known: _Known | None,
    ) -> None:
        msg.queued = True
        for address in _recipients(record.recipient) or ["(unknown)"]:
            rcpt = msg.recipients.get(address)
            if rcpt is None:
                rcpt = msg.recipients[address] = _Recipient(address, record.orig_recipient)
            rcpt.attempts.append(self._attempt(record, ts, known, attempt=len(rcpt.attempts) + 1))
            rcpt.status = _delivery_status(record)

    def _expire(self, msg: _Message, record: LogRecord, ts: datetime, known: _Known | None) -> None:
        msg.expired = True
        for rcpt in msg.recipients.values():
            if rcpt.status not in FINAL_STATUSES:
                rcpt.status = "expired"
                rcpt.attempts.append(
                    self._attempt(record, ts, known, attempt=len(rcpt.attempts) + 1)
                )

    def _bounce_notice(self, msg: _Message, record: LogRecord, now: float) -> None:
        new = record.new_queue_id
        notice = BounceNotice(self._iso(now), new, record.extra_value("notice"))
        msg.notifications.append(notice)
        if not new:
            return
        child = self._messages.get(new)
        if child is None:
            child = self._messages[new] = _Message(new, now, now, mta=record.mta)
        child.notification_for = msg.queue_id
        child.origin = "notice"

    def _rejected(
        self, msg: _Message, record: LogRecord, ts: datetime, known: _Known | None
    ) -> None:
        stage = _stage(record, known)
        recipient = _bare(record.recipient)
        action = _action(record.action)[0]
        msg.upstream.append(
            self._attempt(record, ts, known, stage=stage, recipient=recipient, action=action)
        )
        refusing = (action or "reject") in _REFUSING
        if stage in _WHOLE_MESSAGE_STAGES and refusing:
            msg.rejected = True

    def _attempt(
        self,
        record: LogRecord,
        ts: datetime,
        known: _Known | None,
        *,
        stage: str | None = None,
        recipient: str | None = None,
        action: str | None = None,
        attempt: int | None = None,
    ) -> MessageReply:
        """One reply as kept in a message record: when, what happened, what it means."""
        if not self._keep_replies:
            return UNKEPT_REPLY
        fields = known.fields if known is not None else _NO_FIELDS
        return new_message_reply(
            ts=self._iso(self._epoch(ts)),
            status=_delivery_status(record) if record.status else None,
            code=record.code if record.code is not None else fields.get("code"),
            enhanced=record.enhanced or record.dsn or fields.get("enhanced"),
            dsn=record.dsn,
            relay=record.relay,
            delay=record.delay,
            klass=fields.get("klass"),
            reason=fields.get("reason"),
            summary=fields.get("summary"),
            rule=fields.get("rule"),
            text=record.reply,
            stage=stage,
            recipient=recipient,
            action=action,
            attempt=attempt,
        )

    def _done(self, msg: _Message, kind: str, record: LogRecord) -> bool:
        if kind == "removed" or (kind in _UPSTREAM_REJECTS and msg.rejected):
            return True
        if (record.mta or msg.mta) != "sendmail" or kind != "sendmail_delivery":
            return False
        statuses = [r.status for r in msg.recipients.values()]
        enough = msg.nrcpt is None or len(statuses) >= msg.nrcpt
        return enough and all(s in FINAL_STATUSES for s in statuses)

    def _finish(self, msg: _Message, now: float, flushed: str | None) -> DoneMessage:
        del self._messages[msg.queue_id]
        self._finished[msg.queue_id] = flushed is None
        if len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)
        if msg.session and msg.session in self._sessions:
            with contextlib.suppress(ValueError):
                self._sessions[msg.session].queue_ids.remove(msg.queue_id)
        return DoneMessage(msg, now, flushed, self._tz, self._iso)

    # -- sessions ----------------------------------------------------------------------------

    def _session_only(self, record: LogRecord, now: float) -> None:
        kind = record.kind
        if kind == "connect":
            self._sessions[_session_key(record)] = _Session(
                record.client_name, record.client_addr, now, now
            )
        elif kind == "disconnect":
            self._sessions.pop(_session_key(record), None)
        elif record.helo and kind in _UPSTREAM_REJECTS:
            session = self._sessions.get(_session_key(record))
            if session is not None:
                session.helo = session.helo or record.helo
                session.last_seen = now
                for qid in session.queue_ids:
                    queued = self._messages.get(qid)
                    if queued is not None and queued.helo is None:
                        queued.helo = record.helo

    def _untimed(self, observed_at: datetime | None) -> datetime:
        """The time of a record the log gave none: the last log time, else ``observed_at``."""
        if self._now:
            return datetime.fromtimestamp(self._now, UTC)
        return observed_at or _EPOCH


# -- helpers ------------------------------------------------------------------------------------


#: What a reply is explained from when the log parser took it apart: code, the reply itself
#: (volatile parts masked), the form it was wrapped in, the command it answered, the server.
_Parts = tuple[int, str, ReplyForm, str | None, str | None]
_SAID = (" said: ", " refused to talk to me: ")


def _parts(record: LogRecord, text: str, masked: str) -> _Parts | None:
    """The reply of a line whose parser read its code, as parts; None to parse the whole text.

    Postfix's ``host mx[ip] said: 550 ... (in reply to RCPT TO command)`` is unwrapped with
    what the parser found (``in_reply_to``) exactly as the core's parser would unwrap it.
    """
    code = record.code
    if code is None or len(text) > MAX_PARSE_CHARS or text != text.strip():
        return None
    if not masked.startswith("host "):
        return code, masked, ReplyForm.SMTP, None, None
    for said in _SAID:
        head, sep, inner = masked.partition(said)
        if sep:
            break
    else:
        return None
    remote = head[5:]
    if not remote or any(c.isspace() for c in remote):
        return None
    command = record.extra_value("in_reply_to") if record.extra else None
    if command is not None:
        suffix = f" (in reply to {command} command)"
        if not command.replace(" ", "").isalpha() or not command.isascii():
            return None
        if inner.endswith(suffix + ")"):
            inner = inner[: -len(suffix) - 1]
        elif inner.endswith(suffix):
            inner = inner[: -len(suffix)]
        else:
            return None
    elif "(in reply to " in inner:
        return None
    elif inner.endswith(")"):
        inner = inner[:-1]
    if command is None and said == " refused to talk to me: ":
        command = "CONNECT"
    return code, inner, ReplyForm.POSTFIX, command, remote


def _known(explanation: Explanation, rule: str | None = None) -> _Known:
    """An explanation with the event fields and the stage it gives, computed once; ``rule``
    names the admin's rule that made the reply, if one did."""
    fields: dict[str, Any] = dict(reply_fields(explanation))
    del fields["text"]
    if rule is not None:
        fields["rule"] = rule
    command = explanation.reply.command
    return _Known(
        explanation,
        fields,
        _stage_name(command) if command else None,
        _form_pairs(fields, (("class", "klass", NAME_CAP), ("reason", "reason", NAME_CAP))),
        _form_pairs(
            fields,
            (
                ("summary", "summary", DETAIL_CAP),
                ("rule", "rule", NAME_CAP),
                ("decided_by", "decided_by", NAME_CAP),
            ),
        ),
    )


def _form_pairs(
    fields: Mapping[str, Any], keys: tuple[tuple[str, str, int], ...]
) -> tuple[tuple[str, object], ...]:
    """The fields named, as an event's JSON form writes them: (key, value) in order, strings
    capped, null ones left out."""
    return tuple(
        (key, capped(value, cap) if isinstance(value, str) else value)
        for key, name, cap in keys
        if (value := fields.get(name)) is not None
    )


def _schema_text(value: str | None, cap: int) -> str | None:
    """A schema field's text as :meth:`Event.to_dict` writes it (None stays None)."""
    if value is None or (len(value) <= cap and value.isascii()):
        return value
    return capped(value, cap)


def _detail_text(value: str) -> str:
    """A string inside the extras or a message record, as an event writes it."""
    return value if len(value) <= DETAIL_CAP and value.isascii() else capped(value, DETAIL_CAP)


def _stage_name(command: str) -> str:
    """The stage a command names (``RCPT TO`` is ``rcpt``), else the command in lower case."""
    stage = stage_of(command)
    return stage.value if stage is not None else command.strip().lower()


def _mask(match: re.Match[str]) -> str:
    text = match.group(0)
    if text.startswith("<"):
        return "<x@"
    if text.startswith("["):
        return "[192.0.2.1]"
    if text.startswith("queued"):
        return "queued as X"
    return text[:3] + "X"


def _message_event(
    msg: _Message, now: float, flushed: str | None, tz: tzinfo, iso: Callable[[float], str]
) -> Event:
    deciding = _deciding_attempt(msg)
    rcpts = list(msg.recipients.values())
    summary = new_message_summary(
        status=_message_status(msg, flushed),
        complete=flushed is None,
        flushed=flushed,
        message_id=msg.message_id,
        size=msg.size,
        nrcpt=msg.nrcpt,
        received=iso(msg.first_seen),
        connected=iso(msg.connected) if msg.connected is not None else None,
        delay=_message_delay(msg, now),
        recipients=tuple(_recipient_summary(r) for r in rcpts),
        upstream=tuple(msg.upstream),
        attempts=tuple(msg.attempts),
        notifications=tuple(msg.notifications),
        notification_for=msg.notification_for,
        origin=msg.origin,
    )
    return new_event(
        event=EventKind.MESSAGE,
        source=Source.LOG,
        ts=datetime.fromtimestamp(now, tz),
        queue_id=msg.queue_id,
        client_addr=msg.client_addr,
        client_name=msg.client_name,
        helo=msg.helo,
        sender=_bare(msg.sender),
        recipient=_bare(rcpts[0].address) if len(rcpts) == 1 else None,
        mta=msg.mta,
        code=deciding.code if deciding else None,
        enhanced=deciding.enhanced if deciding else None,
        klass=deciding.klass if deciding else None,
        reason=deciding.reason if deciding else None,
        text=deciding.text if deciding else None,
        summary=deciding.summary if deciding else None,
        rule=deciding.rule if deciding else None,
        message=summary,
    )


def _message_status(msg: _Message, flushed: str | None) -> str:
    if msg.rejected:
        return "rejected"
    if flushed is not None:
        return "incomplete" if msg.queued else "not_queued"
    if msg.expired:
        return "expired"
    if len(msg.recipients) == 1:  # most messages: the one status, without a set
        (only,) = msg.recipients.values()
        final = only.status
        if final in _DELIVERED:
            return "discarded" if final == "discarded" else "delivered"
        return "bounced" if final in FINAL_STATUSES else "incomplete"
    finals = {r.status for r in msg.recipients.values()}
    if not finals:
        return "removed"
    if finals == {"discarded"}:
        return "discarded"
    if finals <= _DELIVERED:
        return "delivered"
    if not finals & _DELIVERED:
        return "bounced" if finals <= FINAL_STATUSES else "incomplete"
    return "partial"


def _deciding_attempt(msg: _Message) -> MessageReply | None:
    """The reply that explains the outcome: the first failure, else the last reply."""
    if msg.rejected and msg.upstream:
        return msg.upstream[-1]
    last: MessageReply | None = None
    for rcpt in msg.recipients.values():
        if rcpt.attempts:
            last = rcpt.attempts[-1]
            if rcpt.status not in _DELIVERED:
                return last
    return last or (msg.attempts[-1] if msg.attempts else None)


def _message_delay(msg: _Message, now: float) -> float:
    delays = [_float(r.attempts[-1].delay) for r in msg.recipients.values() if r.attempts]
    known = [d for d in delays if d is not None]
    if known:
        return max(known)
    return round(max(0.0, now - msg.first_seen), 3)


def _recipient_summary(rcpt: _Recipient) -> RecipientSummary:
    last = rcpt.attempts[-1] if rcpt.attempts else None
    return new_recipient_summary(
        recipient=_bare(rcpt.address),
        orig_recipient=_bare(rcpt.orig),
        status=rcpt.status,
        dsn=last.dsn if last else None,
        relay=last.relay if last else None,
        attempts=tuple(rcpt.attempts),
    )


def _action(word: str | None) -> tuple[str | None, str | None]:
    """One action vocabulary across sources: ``milter-reject`` is ``reject`` by ``milter``,
    ``reject`` is ``reject`` by ``mta``; no action, no one."""
    if word is None:
        return None, None
    by, dash, action = word.partition("-")
    if dash and by in _ACTION_BY:
        return action, _ACTION_BY[by]
    return word, "mta"


def _delivery_status(record: LogRecord) -> str:
    """A recipient's status after this line; the discard transport's ``sent`` is ``discarded``."""
    status = _status(record.status, record.dsn)
    return "discarded" if status == "sent" and record.program == "discard" else status


def _status(status: str | None, dsn: str | None) -> str:
    word = (status or "").lower()
    if word.startswith("sent"):
        return "sent"
    if word.startswith("deferred") or word == "softbounce":
        return "deferred"
    if word in FINAL_STATUSES:
        return word
    if word and dsn and dsn[:1] == "5":
        return "bounced"
    return word or "unknown"


_DIRECTIONS = {d.value: d for d in Direction}


def _direction(record: LogRecord) -> Direction | None:
    return _DIRECTIONS.get(record.direction) if record.direction else None


def _stage(record: LogRecord, known: _Known | None) -> str | None:
    if record.stage:
        return _stage_name(record.stage)
    command = record.extra_value("in_reply_to") if record.extra else None
    if command:
        return _stage_name(command)
    if known is not None and known.stage:
        return known.stage
    if record.kind == "connection_error" or (record.reply or "").startswith("connect to "):
        return "connect"
    if record.kind == "delivery" and record.code is not None and 200 <= record.code < 300:
        return "eom"  # "250 2.0.0 Ok: queued as ..." answers the end of DATA
    return None


def _session_key(record: LogRecord) -> str:
    return f"{record.host or ''}/{record.program or ''}[{record.pid or ''}]"


def _recipients(value: str | None) -> list[str]:
    if not value:
        return []
    if "," not in value:
        return [value.strip("<> ")]
    return [part.strip("<> ") for part in value.split(",") if part.strip("<> ")]


def _bare(address: str | None) -> str | None:
    """An address as the event schema writes it: no angle brackets, ``""`` for the null one."""
    if address is None:
        return None
    if address.startswith("<") and address.endswith(">"):
        return address[1:-1]
    return address


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value is not None else None
    except ValueError:
        return None


def _float(value: object) -> float | None:
    try:
        return float(str(value)) if value is not None else None
    except ValueError:
        return None


def _iso(epoch: float, tz: tzinfo) -> str:
    return datetime.fromtimestamp(epoch, tz).astimezone(UTC).isoformat().replace("+00:00", "Z")
