"""The one event schema of smtp_policy (documented in docs/events.md).

Every adapter builds :class:`Event` values; only ``smtp_policy.emit`` turns them into JSON
lines. The fields below are a public contract: add fields, never rename or remove one, and bump
:data:`SCHEMA_VERSION` if their meaning ever has to change.

Every string an event writes has a size cap (:func:`capped`, docs/events.md "Size caps"), so a
hostile key, address, HELO or reply cannot make one event large.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from datetime import UTC, datetime
from enum import StrEnum
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Final, TypedDict, TypeVar

from smtp_policy.core.model import Explanation
from smtp_policy.core.sanitize import without_surrogates

SCHEMA_VERSION = 1
_T = TypeVar("_T")

#: The end of a value that was cut to its cap (it counts in the cap).
CUT_MARKER = "…[cut]"
#: ``text`` and ``friendly``: the longest reply smtp_policy can send (32 lines of 512 octets).
TEXT_CAP = 16384
#: ``summary``, and every string inside the extras and a message record.
DETAIL_CAP = 4096
#: Every other string field (addresses, names, HELO, ids, codes, reasons) and the extras' keys.
NAME_CAP = 512
_FIELD_CAPS: Mapping[str, int] = MappingProxyType(
    {"text": TEXT_CAP, "friendly": TEXT_CAP, "summary": DETAIL_CAP}
)


def capped(text: str, cap: int) -> str:
    """``text`` as an event writes it: encodable as UTF-8 (lone surrogates spelt as
    :func:`~smtp_policy.core.sanitize.without_surrogates` does) and at most ``cap``
    characters, a longer value cut to end with :data:`CUT_MARKER`."""
    if len(text) <= cap and text.isascii():  # the common case: nothing to do
        return text
    text = without_surrogates(text)
    return text if len(text) <= cap else text[: cap - len(CUT_MARKER)] + CUT_MARKER


def capped_detail(value: object) -> object:
    """An extra's value as an event writes it: every string in it :func:`capped` (object keys
    at :data:`NAME_CAP`, other strings at :data:`DETAIL_CAP`), at any depth."""
    if type(value) is str:  # the common cases first, without a call to capped()
        return value if len(value) <= DETAIL_CAP and value.isascii() else capped(value, DETAIL_CAP)
    if type(value) in _SCALARS:
        return value
    if isinstance(value, str):
        return capped(value, DETAIL_CAP)
    if isinstance(value, Mapping):
        return _capped_object(value)
    if isinstance(value, list | tuple):
        return _capped_list(value)
    return value


#: Types whose values an event writes as they are (no string inside to cap).
_SCALARS: frozenset[type] = frozenset({int, float, bool, type(None)})


def _fits(text: str, cap: int) -> bool:
    """Whether :func:`capped` would give ``text`` back as it is (short, and ASCII)."""
    return len(text) <= cap and text.isascii()


def _capped_list(values: list[object] | tuple[object, ...]) -> list[object]:
    return [
        v
        if type(v) in _SCALARS or (type(v) is str and len(v) <= DETAIL_CAP and v.isascii())
        else capped_detail(v)
        for v in values
    ]


def _capped_object(data: Mapping[Any, object]) -> dict[Any, object]:
    """An object's keys at :data:`NAME_CAP` and its values as :func:`capped_detail` writes
    them; a short ASCII key or value and a number are taken as they are, without a call."""
    return {
        (
            k
            if type(k) is str and len(k) <= NAME_CAP and k.isascii()
            else k
            if not isinstance(k, str)
            else capped(k, NAME_CAP)
        ): (
            v
            if type(v) in _SCALARS or (type(v) is str and len(v) <= DETAIL_CAP and v.isascii())
            else capped_detail(v)
        )
        for k, v in data.items()
    }


class Source(StrEnum):
    """Which part of smtp_policy saw the reply."""

    MILTER = "milter"
    MAPS = "maps"
    POLICY = "policy"
    LOG = "log"
    PROXY = "proxy"


class Direction(StrEnum):
    """Whose reply it is: ours to a client, or a remote server's to us."""

    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


class EventKind(StrEnum):
    """What an event reports; its value is the ``event`` field of the JSON form."""

    STAGE = "stage"
    REPLY = "reply"
    TLS = "tls"
    SESSION = "session"
    ERROR = "error"
    WARNING = "warning"
    STARTED = "started"
    STOPPED = "stopped"
    RELOADED = "reloaded"
    MESSAGE = "message"
    STATS = "stats"
    LOOKUP = "lookup"
    POLICY_REQUEST = "policy_request"


_EMPTY: Mapping[str, object] = MappingProxyType({})

#: What a record's ``to_dict`` does to each value: nothing (state, tests), or
#: :func:`capped_detail` (an event, as it is written).
#: What a record's ``to_dict`` passes its values through: :func:`capped_detail`, or as they are.
#: It must give a number and a short ASCII text back unchanged (``to_dict`` skips the call).
Cap = Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class MessageReply:
    """One reply in a message record: a delivery attempt's result, or an upstream reject.

    ``stage``, ``recipient`` and ``action`` are set for upstream rejects only; ``attempt`` (the
    try's number, from 1) for a recipient's delivery attempts only. ``ts`` is ISO 8601 text.
    """

    ts: str
    status: str | None = None
    code: int | None = None
    enhanced: str | None = None
    dsn: str | None = None
    relay: str | None = None
    delay: float | None = None
    klass: str | None = None
    reason: str | None = None
    summary: str | None = None
    rule: str | None = None
    text: str | None = None
    stage: str | None = None
    recipient: str | None = None
    action: str | None = None
    attempt: int | None = None

    def to_dict(self, cap: Cap = _same) -> dict[str, Any]:
        """The JSON form: the fields that are known, ``klass`` written as ``class``; each value
        as ``cap`` gives it (an event caps them: :func:`capped_detail`)."""
        out: dict[str, Any] = {}
        for key, value in (  # in REPLY_KEYS' order; a plain loop: no zip, no comprehension
            ("ts", self.ts),
            ("status", self.status),
            ("code", self.code),
            ("enhanced", self.enhanced),
            ("dsn", self.dsn),
            ("relay", self.relay),
            ("delay", self.delay),
            ("class", self.klass),
            ("reason", self.reason),
            ("summary", self.summary),
            ("rule", self.rule),
            ("text", self.text),
            ("stage", self.stage),
            ("recipient", self.recipient),
            ("action", self.action),
            ("attempt", self.attempt),
        ):
            if value is not None:  # a number or a short ASCII text is what ``cap`` gives back
                out[key] = (
                    value
                    if type(value) in _SCALARS
                    or (type(value) is str and len(value) <= DETAIL_CAP and value.isascii())
                    else cap(value)
                )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MessageReply:
        """Read :meth:`to_dict`'s form back."""
        values: dict[str, Any] = {name: data.get(_json_name(name)) for name in _REPLY_FIELDS}
        return cls(**values)


@dataclass(frozen=True, slots=True)
class BounceNotice:
    """A notice (bounce, delay, success) the MTA sent about a message, as a new message."""

    ts: str
    queue_id: str | None = None
    type: str | None = None

    def to_dict(self, cap: Cap = _same) -> dict[str, Any]:
        """The JSON form: the fields that are known, each as ``cap`` gives it."""
        pairs = (("queue_id", self.queue_id), ("type", self.type), ("ts", self.ts))
        return {k: cap(v) for k, v in pairs if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BounceNotice:
        """Read :meth:`to_dict`'s form back."""
        return cls(str(data["ts"]), data.get("queue_id"), data.get("type"))


@dataclass(frozen=True, slots=True)
class RecipientSummary:
    """What happened to one recipient of a message: its final status and every attempt."""

    recipient: str | None
    orig_recipient: str | None = None
    status: str | None = None
    dsn: str | None = None
    relay: str | None = None
    attempts: tuple[MessageReply, ...] = ()

    def to_dict(self, cap: Cap = _same) -> dict[str, Any]:
        """The JSON form: the fields that are known, each as ``cap`` gives it; ``attempts``
        always."""
        out: dict[str, Any] = {
            k: v if type(v) is str and _fits(v, DETAIL_CAP) else cap(v)
            for k, v in (
                ("recipient", self.recipient),
                ("orig_recipient", self.orig_recipient),
                ("status", self.status),
                ("dsn", self.dsn),
                ("relay", self.relay),
            )
            if v is not None
        }
        out["attempts"] = [a.to_dict(cap) for a in self.attempts]
        return out


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """The record of one message that left the queue (or was flushed): a ``message`` event.

    ``status`` is one of delivered, discarded (by the discard transport), bounced, partial,
    expired, rejected, removed, incomplete, not_queued; ``complete`` is False when the record
    was ``flushed`` (``idle`` or ``end``) before the log said the message was gone. Times are
    ISO 8601 text, ``delay`` seconds.
    """

    status: str
    complete: bool
    received: str
    delay: float
    flushed: str | None = None
    message_id: str | None = None
    size: int | None = None
    nrcpt: int | None = None
    connected: str | None = None
    recipients: tuple[RecipientSummary, ...] = ()
    upstream: tuple[MessageReply, ...] = ()
    attempts: tuple[MessageReply, ...] = ()
    notifications: tuple[BounceNotice, ...] = ()
    notification_for: str | None = None
    #: How the message came in: ``smtpd`` (a client), ``pickup`` (local submission),
    #: ``sendmail``, or ``notice`` (a bounce/delay notice the MTA itself generated); None when
    #: the log did not say (it began after the message arrived).
    origin: str | None = None

    def to_dict(self, cap: Cap = _same) -> dict[str, Any]:
        """The JSON form (the ``message`` event's extra fields), in the documented order; each
        value as ``cap`` gives it (an event caps them: :func:`capped_detail`)."""
        out: dict[str, Any] = {"status": cap(self.status), "complete": cap(self.complete)}
        for key, value in (
            ("flushed", self.flushed),
            ("message_id", self.message_id),
            ("size", self.size),
            ("nrcpt", self.nrcpt),
            ("received", self.received),
            ("connected", self.connected),
            ("delay", self.delay),
        ):
            if value is not None:
                out[key] = cap(value)
        out["recipients"] = [r.to_dict(cap) for r in self.recipients]
        if self.upstream:
            out["upstream"] = [u.to_dict(cap) for u in self.upstream]
        if self.attempts:
            out["attempts"] = [a.to_dict(cap) for a in self.attempts]
        if self.notifications:
            out["notifications"] = [n.to_dict(cap) for n in self.notifications]
        if self.notification_for is not None:
            out["notification_for"] = cap(self.notification_for)
        if self.origin is not None:
            out["origin"] = cap(self.origin)
        return out


#: A ``session`` record carries at most this many transactions (later ones are counted in
#: ``transactions_omitted``), ...
MAX_SESSION_TRANSACTIONS: Final = 10
#: ... at most this many recipients over all its transactions (the rest are counted in their
#: transaction's ``recipients_omitted``) ...
MAX_SESSION_RECIPIENTS: Final = 100
#: ... and at most this many replies outside the recipients (connect/HELO decisions, and per
#: transaction MAIL, DATA and end-of-message ones); the rest are counted in ``replies_omitted``.
MAX_SESSION_REPLIES: Final = 8
#: A reply's ``text`` inside a session record keeps this many characters (the ``reply`` event
#: of a policy decision, always written at once, has the whole text).
SESSION_TEXT_CAP: Final = NAME_CAP


@dataclass(frozen=True, slots=True)
class SessionReply:
    """One stage's outcome in a ``session`` record: a recipient's, or a reply we or the MTA
    gave at a stage.

    ``outcome``: ``accepted``, ``rejected`` (5xx), ``tempfailed`` (4xx), ``discarded`` or
    ``quarantined``; ``by``: ``mta`` (the MTA's own rejection) or ``policy`` (an admin's rule,
    named in ``rule``, whose action is ``action``). The reply fields are those of the
    ``reply`` event; ``text`` is cut at :data:`SESSION_TEXT_CAP`, ``recipient`` at
    :data:`NAME_CAP` (as the event fields are).
    """

    stage: str
    outcome: str
    recipient: str | None = None
    by: str | None = None
    action: str | None = None
    code: int | None = None
    enhanced: str | None = None
    klass: str | None = None
    reason: str | None = None
    rule: str | None = None
    text: str | None = None

    def to_dict(self, cap: Cap = _same) -> dict[str, Any]:
        """The JSON form: the fields that are known, ``klass`` written as ``class``, the
        recipient without angle brackets; each value as ``cap`` gives it."""
        out: dict[str, Any] = {}
        for key, value in zip(_SESSION_REPLY_KEYS, _session_reply_values(self), strict=True):
            if value is None:
                continue
            if key == "recipient":  # capped as the event's own ``recipient`` field is
                out[key] = cap(capped(bare_address(value), NAME_CAP))
            elif key == "text":
                out[key] = cap(capped(value, SESSION_TEXT_CAP))
            else:
                out[key] = cap(value)
        return out


@dataclass(frozen=True, slots=True)
class SessionTransaction:
    """One MAIL transaction of a ``session`` record.

    ``end``: ``eom`` (the message reached end of data), ``abort`` (RSET, a rejection, the
    client left mid-transaction) or ``open`` (the connection ended without either).
    """

    end: str
    sender: str | None = None
    queue_id: str | None = None
    size: int | None = None
    recipients: tuple[SessionReply, ...] = ()
    recipients_omitted: int = 0
    replies: tuple[SessionReply, ...] = ()

    def to_dict(self, cap: Cap = _same) -> dict[str, Any]:
        """The JSON form: known fields, ``recipients`` always, ``replies`` when there are."""
        out: dict[str, Any] = {}
        for key, value in (
            (
                "sender",
                None if self.sender is None else capped(bare_address(self.sender), NAME_CAP),
            ),
            ("queue_id", None if self.queue_id is None else capped(self.queue_id, NAME_CAP)),
            ("size", self.size),
        ):
            if value is not None:
                out[key] = cap(value)
        out["recipients"] = [r.to_dict(cap) for r in self.recipients]
        if self.recipients_omitted:
            out["recipients_omitted"] = self.recipients_omitted
        if self.replies:
            out["replies"] = [r.to_dict(cap) for r in self.replies]
        out["end"] = cap(self.end)
        return out


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """The record of one SMTP session as the milter saw it: a ``session`` event's fields.

    The counters are always there; ``transactions`` (each with its recipients' outcomes and
    replies) and ``replies`` (connect and HELO decisions) only when the milter records
    sessions (``[milter] events`` = ``session`` or ``both``): None leaves them out.
    ``counts`` is Postfix's ``disconnect`` summary in the milter's words
    (``connect=1 helo=1 mail=1 rcpt=1/2 data=1 eom=1``).
    """

    commands: Mapping[str, int]
    counts: str
    recipients_accepted: int
    rejected_by_mta: int
    rejected_by_policy: int
    messages: int
    aborted: int
    errors: int
    queue_ids: tuple[str, ...]
    duration_ms: float
    transactions: tuple[SessionTransaction, ...] | None = None
    transactions_omitted: int = 0
    replies: tuple[SessionReply, ...] = ()
    replies_omitted: int = 0

    def to_dict(self, cap: Cap = _same) -> dict[str, Any]:
        """The JSON form (the ``session`` event's extra fields), in the documented order."""
        out: dict[str, Any] = {
            "commands": {cap(k): v for k, v in self.commands.items()},
            "counts": cap(self.counts),
            "recipients_accepted": self.recipients_accepted,
            "recipients_rejected": self.rejected_by_mta + self.rejected_by_policy,
            "rejected_by_mta": self.rejected_by_mta,
            "rejected_by_policy": self.rejected_by_policy,
            "messages": self.messages,
            "aborted": self.aborted,
            "errors": self.errors,
            "queue_ids": [cap(q) for q in self.queue_ids],
            "duration_ms": self.duration_ms,
        }
        if self.transactions is None:
            return out
        out["transactions"] = [t.to_dict(cap) for t in self.transactions]
        if self.transactions_omitted:
            out["transactions_omitted"] = self.transactions_omitted
        out["replies"] = [r.to_dict(cap) for r in self.replies]
        if self.replies_omitted:
            out["replies_omitted"] = self.replies_omitted
        return out


_REPLY_FIELDS = tuple(f.name for f in fields(MessageReply))
_SESSION_REPLY_FIELDS = tuple(f.name for f in fields(SessionReply))


#: Schema fields that hold an envelope address: written without angle brackets.
_ADDRESS_FIELDS = frozenset({"sender", "recipient"})


def bare_address(address: str) -> str:
    """An envelope address as events write it: no angle brackets; ``<>`` (null sender) is ``""``."""
    if address[:1] == "<" and address[-1:] == ">":
        return address[1:-1]
    return address


def _json_name(name: str) -> str:
    return "class" if name == "klass" else name


#: The JSON names of a :class:`MessageReply`'s fields, in order (``to_dict`` writes them so).
REPLY_KEYS = tuple(_json_name(name) for name in _REPLY_FIELDS)
_SESSION_REPLY_KEYS = tuple(_json_name(name) for name in _SESSION_REPLY_FIELDS)
_session_reply_values = attrgetter(*_SESSION_REPLY_FIELDS)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, with the reply and its explanation when there is one."""

    event: EventKind
    source: Source
    ts: datetime
    direction: Direction | None = None
    stage: str | None = None
    session: str | None = None
    queue_id: str | None = None
    client_addr: str | None = None
    client_name: str | None = None
    helo: str | None = None
    sender: str | None = None
    recipient: str | None = None
    code: int | None = None
    enhanced: str | None = None
    klass: str | None = None
    reason: str | None = None
    text: str | None = None
    friendly: str | None = None
    summary: str | None = None
    rule: str | None = None
    decided_by: str | None = None
    mta: str | None = None
    extra: Mapping[str, object] = field(default_factory=lambda: _EMPTY)
    #: A ``message`` event's record; written after the extras, as extra fields.
    message: MessageSummary | None = None
    #: A ``session`` event's record; written after the extras, as extra fields.
    session_record: SessionSummary | None = None

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None:
            raise ValueError("event timestamps must be timezone-aware")
        if self.extra and not FIELD_NAMES.isdisjoint(self.extra):
            clash = set(self.extra) & FIELD_NAMES
            raise ValueError(f"extra keys shadow schema fields: {sorted(clash)}")
        if self.message is not None and self.extra:
            raise ValueError("a message event's fields are its record, not extras")
        if self.session_record is not None and (self.extra or self.message is not None):
            raise ValueError("a session event's fields are its record, not extras")

    def to_dict(self) -> dict[str, object]:
        """The JSON form: the schema fields that are known (a null one is left out), then the
        extras; every string :func:`capped`."""
        out: dict[str, object] = {
            "schema": SCHEMA_VERSION,
            "event": self.event,
            "source": self.source,
            "ts": _utc_text(self.ts),
        }
        for (key, cap, address), value in zip(_OPTIONAL_KEYS, _optional_values(self), strict=True):
            if value is None:
                continue
            if isinstance(value, str):
                text = bare_address(value) if address else value
                out[key] = text if len(text) <= cap and text.isascii() else capped(text, cap)
            else:
                out[key] = value
        if self.extra:
            out.update(_capped_object(self.extra))
        if self.message is not None:  # its keys are the schema's: capped where they are built
            out.update(self.message.to_dict(capped_detail))
        if self.session_record is not None:
            out.update(self.session_record.to_dict(capped_detail))
        return out


class ReplyFields(TypedDict, total=False):
    """The event fields that describe a reply, for ``Event(**reply_fields(...))``."""

    code: int | None
    enhanced: str | None
    klass: str | None
    reason: str | None
    text: str | None
    summary: str | None
    rule: str | None
    decided_by: str | None


def reply_fields(explanation: Explanation | None, text: str | None = None) -> ReplyFields:
    """The fields of a reply and its explanation; ``text`` overrides the reply's raw text."""
    if explanation is None:
        return {"text": text}
    c = explanation.classification
    r = c.reply
    return {
        "code": r.code,
        "enhanced": str(r.enhanced) if r.enhanced else None,
        "klass": c.klass.value,
        "reason": c.reason.value if c.reason else None,
        "text": r.raw if text is None else text,
        "summary": explanation.summary,
        "rule": c.rule,
        "decided_by": c.decided_by.value,
    }


def _utc_text(ts: datetime) -> str:
    """``2026-11-28T12:31:59.000000Z``: ISO 8601 in UTC with microseconds. The last answer
    is kept: events written one after another mostly share their time (a log's second)."""
    last = _LAST_UTC[0]
    if last[0] == ts:  # the same instant: the same UTC text, whatever its zone
        return last[1]
    text = ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    _LAST_UTC[0] = (ts, text)
    return text


def event_head(event: EventKind, source: Source, ts: datetime) -> dict[str, object]:
    """The first fields of an event's JSON form (``schema``, ``event``, ``source``, ``ts``),
    as :meth:`Event.to_dict` writes them: where a writer that builds the form itself starts."""
    return {"schema": SCHEMA_VERSION, "event": event, "source": source, "ts": _utc_text(ts)}


#: :func:`_utc_text`'s last time and text (one tuple, replaced whole: safe between threads).
_LAST_UTC: list[tuple[datetime, str]] = [
    (datetime(1970, 1, 1, tzinfo=UTC), "1970-01-01T00:00:00.000000Z")
]


_ORDER = tuple(
    f.name for f in fields(Event) if f.name not in ("extra", "message", "session_record")
)
#: The fields after ``event``, ``source`` and ``ts``, each with its JSON name and size cap.
_OPTIONAL = tuple(
    (name, _json_name(name), _FIELD_CAPS.get(name, NAME_CAP))
    for name in _ORDER
    if name not in ("event", "source", "ts")
)
#: Per optional field, in order: its JSON name, its cap, whether it holds an address.
_OPTIONAL_KEYS = tuple((key, cap, name in _ADDRESS_FIELDS) for name, key, cap in _OPTIONAL)
#: Every optional field's value of an event at once (one C call, not a ``getattr`` each).
_optional_values = attrgetter(*(name for name, _, _ in _OPTIONAL))
#: The JSON names of the schema's fields (``klass`` is written as ``class``).
FIELD_NAMES = frozenset({"schema", *("class" if n == "klass" else n for n in _ORDER)})


def _fast(cls: type[_T]) -> Callable[..., _T]:
    """A constructor of ``cls`` (a frozen, slotted dataclass) that does not pay a frozen
    dataclass's ``object.__setattr__`` per field: a non-frozen twin with the same fields and
    slots, whose ``__post_init__`` runs ``cls``'s checks and then makes the object a ``cls``
    (identical slot layouts: CPython allows the ``__class__`` switch; afterwards it is an
    ordinary, frozen ``cls``). For the log follower, which builds hundreds of thousands."""
    check = getattr(cls, "__post_init__", None)

    def post_init(self: Any) -> None:
        if check is not None:
            check(self)
        self.__class__ = cls

    spec: list[Any] = [
        (f.name, f.type)
        if f.default is MISSING and f.default_factory is MISSING
        else (f.name, f.type, field(default=f.default, default_factory=f.default_factory))
        for f in fields(cls)  # type: ignore[arg-type]
    ]
    twin: Callable[..., _T] = make_dataclass(
        f"_Fast{cls.__name__}",
        spec,
        slots=True,
        eq=False,
        repr=False,
        namespace={"__post_init__": post_init},
    )
    return twin


#: ``new_event(...)`` is ``Event(...)`` (the same checks, the same object), built faster.
new_event: Final = _fast(Event)
#: ``new_message_reply(...)`` is ``MessageReply(...)``, built faster.
new_message_reply: Final = _fast(MessageReply)
#: ``new_recipient_summary(...)`` is ``RecipientSummary(...)``, built faster.
new_recipient_summary: Final = _fast(RecipientSummary)
#: ``new_message_summary(...)`` is ``MessageSummary(...)``, built faster.
new_message_summary: Final = _fast(MessageSummary)


# -- a lighter path for hot writers ---------------------------------------------------------
#
# A daemon that writes several events per message (the proxy: one per reply) spends most of
# an event's cost building an Event and reading its twenty fields back in to_dict. The two
# functions below build the very same JSON form (same fields, order and caps) from the parts
# that vary per event and the parts that depend on the reply alone, worked out once per reply.

#: The fields of the JSON form that describe a reply (``code`` through ``decided_by``).
DESCRIBED_FIELDS = frozenset(
    {"code", "enhanced", "class", "reason", "text", "friendly", "summary", "rule", "decided_by"}
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def described_fields(
    explanation: Explanation | None, text: str | None, friendly: str | None
) -> dict[str, object]:
    """The reply's part of an event's JSON form (code, enhanced, class, reason, text,
    friendly, summary, rule, decided_by; null ones left out, strings capped), as
    :meth:`Event.to_dict` writes it: the same for every event about the same reply."""
    stub = Event(
        EventKind.REPLY, Source.PROXY, _EPOCH, friendly=friendly, **reply_fields(explanation, text)
    )
    return {key: value for key, value in stub.to_dict().items() if key in DESCRIBED_FIELDS}


def event_fields(
    event: EventKind,
    source: Source,
    ts: datetime,
    described: Mapping[str, object],
    extra: Mapping[str, object],
    *,
    direction: Direction | None = None,
    stage: str | None = None,
    session: str | None = None,
    queue_id: str | None = None,
    client_addr: str | None = None,
    client_name: str | None = None,
    helo: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
) -> dict[str, object]:
    """``Event(...).to_dict()`` for an event without ``mta`` or a message record, its reply
    part given as :func:`described_fields` made it; the same dict, key order included."""
    if not FIELD_NAMES.isdisjoint(extra):
        raise ValueError(f"extra keys shadow schema fields: {sorted(FIELD_NAMES & set(extra))}")
    out: dict[str, object] = {
        "schema": SCHEMA_VERSION,
        "event": event,
        "source": source,
        "ts": _utc_text(ts),
    }
    if direction is not None:
        out["direction"] = direction
    for key, value in (
        ("stage", stage),
        ("session", session),
        ("queue_id", queue_id),
        ("client_addr", client_addr),
        ("client_name", client_name),
        ("helo", helo),
    ):
        if value is not None:
            out[key] = capped(value, NAME_CAP)
    if sender is not None:
        out["sender"] = capped(bare_address(sender), NAME_CAP)
    if recipient is not None:
        out["recipient"] = capped(bare_address(recipient), NAME_CAP)
    out.update(described)
    if extra:
        out.update(_capped_object(extra))
    return out
