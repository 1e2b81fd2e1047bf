"""A pflogsumm-like, reason-aware summary of log events (pure: events in, data and text out).

:class:`ReportBuilder` consumes the events ``smtp-policy follow`` writes (``reply`` and
``message``) one at a time (:meth:`ReportBuilder.add`), or what the tracker makes of the log
without building those events (:meth:`ReportBuilder.add_tracked`: ``smtp-policy report``,
reading the tracker's values directly; tests hold both to the same report), and the log lines
no event carries (warnings, fatal and panic lines, SASL failures, TLS) through
:meth:`ReportBuilder.add_line` (only the kinds of :data:`LINE_KINDS` matter). It keeps counters
only (and the distinct senders and recipients, as pflogsumm does; the queue ids of
deferred messages only while they are in flight:
:class:`~smtp_policy.maillog.tally.DistinctMessages`). What is counted (docs/report.md):

- *received*: messages that came from a client, as :func:`smtp_policy.maillog.tally.counted_as`
  (and pflogsumm) count them: a queue id and a client; bounce notices count as *generated*. A
  message refused whole at DATA or end-of-message was received, and is also counted as
  *rejected_messages*;
- *delivered*, *forwarded*, *bounced*: per-recipient delivery results, as pflogsumm counts them;
  *deferred*: deferral lines, and the distinct messages deferred;
- *rejected*: upstream rejects (smtpd, postscreen, milter, Sendmail rulesets); a
  ``reject_warning`` is counted as *warned*, ``hold`` as *held*, ``discard`` as *discarded*;
- *top reasons*, per direction, each with the first reply seen and the one-line explanation;
- per hour of the day and per day; per recipient domain (deliveries, bytes, deferrals, delays,
  deferral and bounce reasons); top senders, recipients and sending domains;
- warnings, errors, fatal and panic lines; SASL failures; TLS connections;
- *timeline*: non-success replies per time bucket and direction (at most 48 buckets).

Renderers turn :meth:`ReportBuilder.result` into text, JSON-ready data, or one self-contained
HTML page (inline CSS and SVG, no external reference).
"""

from __future__ import annotations

import collections
import html
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from typing import Any, NamedTuple, Protocol

from smtp_policy.core.events import Event, EventKind, MessageSummary
from smtp_policy.core.sanitize import printable
from smtp_policy.maillog.record import LogRecord
from smtp_policy.maillog.tally import DistinctMessages, counted_as
from smtp_policy.maillog.tracker import DETAIL_KINDS, SeenReply, Tracked

#: Candidate widths of one bar in "reasons over time", smallest first (seconds).
BUCKET_WIDTHS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)
MAX_BARS = 48
#: Distinct warning texts kept per level; the rest are counted as "(other)".
MAX_WARNING_TEXTS = 1000
#: Received seconds whose hour and day are remembered (the cache is emptied when full).
_RECEIVED_CELLS = 4096
#: The record kinds :meth:`ReportBuilder.add_line` reads (it ignores every other line).
LINE_KINDS = frozenset({"warning", "noise", "connect", "client"})
_FAILURE_CLASSES = frozenset({"transient", "permanent", "unknown"})
_NOT_RECEIVED = frozenset({"rejected", "not_queued"})
#: Recipient statuses Postfix logged as status=sent (pflogsumm's "delivered"): the discard
#: transport's included, as in the reply events' counts.
_DELIVERED = frozenset({"sent", "discarded"})
_WARN_ACTIONS = frozenset({"reject_warning", "warn"})
#: Upstream actions that accept the message but hold or drop it: the total each counts in.
_KEPT_ACTIONS: Mapping[str, str] = {"hold": "held", "discard": "discarded"}
_DIRECTIONS = ("upstream", "downstream")
_TRAFFIC = ("received", "delivered", "deferred", "bounced", "rejected")
_LEVELS = ("warning", "error", "fatal", "panic")
_PALETTE = {"upstream": "#e15759", "downstream": "#4e79a7"}
_SASL_FAILED = re.compile(
    r"(?P<client>\S+\[[^]\s]*\]): SASL (?P<method>\S+) authentication failed(?:: (?P<why>.*))?"
)
_TLS = re.compile(
    r"(?P<trust>Anonymous|Untrusted|Trusted|Verified) TLS connection established "
    r"(?P<way>to|from) (?P<peer>\S+?)(?::\d+)?: (?P<protocol>\S+) with cipher (?P<cipher>\S+)"
)
#: What varies between otherwise equal warnings: addresses in brackets, bare IPv4, numbers.
_VARYING = re.compile(r"(\[[0-9a-fA-F.:]+\])|\b(\d{1,3}(?:\.\d{1,3}){3})\b|\b\d+\b")


@dataclass(slots=True)
class _Reason:
    count: int = 0
    example: str | None = None
    summary: str | None = None
    code: int | None = None
    enhanced: str | None = None


@dataclass(slots=True)
class _Delivery:
    """One recipient domain's deliveries."""

    sent: int = 0
    bytes: int = 0
    deferrals: int = 0
    delay_total: float = 0.0
    delays: int = 0
    delay_max: float = 0.0


class _Reply(Protocol):
    """What the report reads of a reply: a :class:`~smtp_policy.maillog.tracker.SeenReply`,
    or a ``reply`` event (:func:`_reply_of`)."""

    @property
    def ts(self) -> datetime: ...
    @property
    def direction(self) -> str | None: ...
    @property
    def detail(self) -> bool: ...
    @property
    def status(self) -> str | None: ...
    @property
    def action(self) -> str | None: ...
    @property
    def klass(self) -> str | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def summary(self) -> str | None: ...
    @property
    def code(self) -> int | None: ...
    @property
    def enhanced(self) -> str | None: ...
    @property
    def text(self) -> str | None: ...
    @property
    def queue_id(self) -> str | None: ...
    @property
    def recipient(self) -> str | None: ...
    @property
    def delay(self) -> float | None: ...


class _Message(Protocol):
    """What the report reads of a message that left: a
    :class:`~smtp_policy.maillog.tracker.DoneMessage`, or a ``message`` event
    (:func:`_message_of`)."""

    @property
    def ts(self) -> datetime: ...
    @property
    def queue_id(self) -> str | None: ...
    @property
    def sender(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def origin(self) -> str | None: ...
    @property
    def size(self) -> int | None: ...
    @property
    def notification_for(self) -> str | None: ...
    def recipient_statuses(self) -> list[tuple[str | None, str | None]]: ...


class _EventReply(NamedTuple):
    """A ``reply`` event as the report reads it."""

    ts: datetime
    direction: str | None
    detail: bool
    status: str | None
    action: str | None
    klass: str | None
    reason: str | None
    summary: str | None
    code: int | None
    enhanced: str | None
    text: str | None
    queue_id: str | None
    recipient: str | None
    delay: float | None


def _reply_of(event: Event) -> _EventReply:
    extra = event.extra
    action = extra.get("action")
    delay = extra.get("delay")
    status = extra.get("status")
    return _EventReply(
        ts=event.ts,
        direction=event.direction.value if event.direction else None,
        detail=bool(extra.get("detail")),
        status=status if isinstance(status, str) else None,
        action=None if action is None else str(action),
        klass=event.klass,
        reason=event.reason,
        summary=event.summary,
        code=event.code,
        enhanced=event.enhanced,
        text=event.text,
        queue_id=event.queue_id,
        recipient=event.recipient,
        delay=float(delay) if isinstance(delay, int | float) else None,
    )


class _EventMessage(NamedTuple):
    """A ``message`` event as the report reads it."""

    ts: datetime
    queue_id: str | None
    sender: str | None
    status: str
    origin: str | None
    received_at: datetime
    size: int | None
    notification_for: str | None
    recipients: list[tuple[str | None, str | None]]

    def recipient_statuses(self) -> list[tuple[str | None, str | None]]:
        """Each recipient with its status."""
        return self.recipients


def _message_of(event: Event, record: MessageSummary) -> _EventMessage:
    return _EventMessage(
        ts=event.ts,
        queue_id=event.queue_id,
        sender=event.sender,
        status=record.status,
        origin=record.origin,
        received_at=_parse_time(record.received, event.ts),
        size=record.size,
        notification_for=record.notification_for,
        recipients=[(r.recipient, r.status) for r in record.recipients],
    )


class ReportBuilder:
    """Counts events (:meth:`add`) and log lines (:meth:`add_line`); :meth:`result` gives the
    report as plain data."""

    def __init__(self, *, top: int = 10) -> None:
        self.top = top
        self.totals: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[str] = collections.Counter()
        self.reasons: dict[str, dict[str, _Reason]] = {d: {} for d in _DIRECTIONS}
        self.domains: dict[str, collections.Counter[str]] = {}
        self.bounce_domains: dict[str, collections.Counter[str]] = {}
        self.deliveries: dict[str, _Delivery] = {}
        self.minutes: collections.Counter[tuple[int, str, str]] = collections.Counter()
        self.hours: collections.Counter[tuple[int, str]] = collections.Counter()
        self.days: collections.Counter[tuple[int, str]] = collections.Counter()
        self.senders: collections.Counter[str] = collections.Counter()
        self.sender_bytes: collections.Counter[str] = collections.Counter()
        self.sending_domains: collections.Counter[str] = collections.Counter()
        self.sending_domain_bytes: collections.Counter[str] = collections.Counter()
        self.recipients: collections.Counter[str] = collections.Counter()
        self.warnings: dict[str, collections.Counter[tuple[str, str]]] = {
            level: collections.Counter() for level in _LEVELS
        }
        self.sasl_failures: collections.Counter[tuple[str, str]] = collections.Counter()
        self.sasl_logins: collections.Counter[str] = collections.Counter()
        self.tls: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.tls_ciphers: collections.Counter[str] = collections.Counter()
        self._deferred_ids = DistinctMessages()
        # a message's received second -> its (hour, day ordinal) in the log's clock: messages
        # that leave together mostly arrived in the same second
        self._received_cells: dict[int, tuple[int, int]] = {}
        self._received_tz: tzinfo | None = None
        self.first: datetime | None = None
        self.last: datetime | None = None

    def add_all(self, events: Iterable[Event]) -> ReportBuilder:
        """Add every event; return self."""
        for event in events:
            self.add(event)
        return self

    def add(self, event: Event) -> None:
        """Count one event (events other than reply and message are ignored)."""
        if event.event == EventKind.REPLY:
            self._span(event.ts)
            self._reply(_reply_of(event))
        elif event.event == EventKind.MESSAGE:
            self._span(event.ts)
            if event.message is None:
                self.statuses["unknown"] += 1
                self._deferred_ids.finish(event.queue_id)
                return
            msg = _message_of(event, event.message)
            self._message(msg, int(msg.received_at.timestamp()), msg.ts.tzinfo)

    def add_tracked(self, items: Iterable[Tracked]) -> ReportBuilder:
        """Count what the tracker gives (:meth:`MessageTracker.track
        <smtp_policy.maillog.tracker.MessageTracker.track>`), as :meth:`add` counts the events
        made of it, without making them; return self."""
        left_at, left_tz, ts = -1.0, None, None  # messages mostly leave in a shared second
        for item in items:
            if isinstance(item, SeenReply):
                self._span(item.ts)
                self._seen_reply(item)
            else:
                if item.now != left_at or item.tz is not left_tz or ts is None:
                    left_at, left_tz, ts = item.now, item.tz, item.ts
                self._span(ts)
                self._message(item, int(item.message.first_seen), ts.tzinfo)
        return self

    def _seen_reply(self, seen: SeenReply) -> None:
        """:meth:`_reply` for the tracker's reply: its hot fields read directly (no property
        per value)."""
        record = seen.record
        if record.kind in DETAIL_KINDS:
            return
        known = seen.known
        klass = known.fields.get("klass") if known is not None else None
        self._count_reply(seen, record.direction == "upstream", record.status, klass)

    def _received_cell(self, second: int, tz: tzinfo | None) -> tuple[int, int]:
        """The hour and day ordinal of a received second in ``tz`` (cached by second)."""
        cells = self._received_cells
        if tz is not self._received_tz or len(cells) >= _RECEIVED_CELLS:
            cells.clear()
            self._received_tz = tz
        cell = cells.get(second)
        if cell is None:
            received = datetime.fromtimestamp(second, tz)
            cell = cells[second] = (received.hour, received.toordinal())
        return cell

    def add_line(self, line: str, record: LogRecord) -> None:
        """Count what a parsed log line says that no event carries: warning, error, fatal and
        panic lines, SASL failures and logins, TLS connections and inbound connections."""
        kind = record.kind
        if kind == "warning":
            self._warning(record)
        elif kind == "noise":
            if "TLS connection established" in line and (m := _TLS.search(line)):
                way = "inbound" if m["way"] == "from" else "outbound"
                self.tls[(way, m["trust"], m["protocol"])] += 1
                self.tls_ciphers[m["cipher"]] += 1
        elif kind == "connect":
            self.totals["connections"] += 1
        elif kind == "client" and record.extra:
            method = record.extra_value("sasl_method")
            if method:
                self.sasl_logins[method] += 1

    def _warning(self, record: LogRecord) -> None:
        level = record.extra_value("level") or "warning"
        message = record.extra_value("message") or ""
        if level == "warning" and "SASL" in message and (m := _SASL_FAILED.search(message)):
            self.sasl_failures[(m["client"], m["method"])] += 1
        texts = self.warnings.setdefault(level, collections.Counter())
        key = (record.service_name or record.program, _VARYING.sub(_placeholder, message)[:300])
        if key not in texts and len(texts) >= MAX_WARNING_TEXTS:
            key = (key[0], "(other)")
        texts[key] += 1

    def _span(self, ts: datetime) -> None:
        if self.first is None or ts < self.first:
            self.first = ts
        if self.last is None or ts > self.last:
            self.last = ts

    def _traffic(self, ts: datetime, what: str) -> None:
        self.hours[(ts.hour, what)] += 1
        self.days[(ts.toordinal(), what)] += 1  # named at the end: cheaper than isoformat here

    def _message(self, msg: _Message, received_second: int, tz: tzinfo | None) -> None:
        """Count a message that left; it came in at ``received_second`` (Unix time), counted
        per hour and day in ``tz``, the log's clock, as every other column."""
        status = msg.status
        self.statuses[status] += 1
        self._deferred_ids.finish(msg.queue_id)
        counted = counted_as(msg)
        if counted is not None:
            self.totals[counted] += 1
            if counted == "received":
                hour, day = self._received_cell(received_second, tz)
                self.hours[(hour, "received")] += 1
                self.days[(day, "received")] += 1
        if status in _NOT_RECEIVED:
            return
        size = msg.size or 0
        if size:
            for recipient, rcpt_status in msg.recipient_statuses():
                if rcpt_status in _DELIVERED:
                    self.totals["bytes_delivered"] += size
                    self._delivery(_domain_of(recipient)).bytes += size
        if msg.notification_for is not None:  # senders and bytes: of the messages queued
            return
        self.totals["bytes_received"] += size
        sender = _address(msg.sender)
        if sender:
            self.senders[sender] += 1
            self.sender_bytes[sender] += size
            domain = _domain_of(sender)
            self.sending_domains[domain] += 1
            self.sending_domain_bytes[domain] += size

    def _delivery(self, domain: str) -> _Delivery:
        stat = self.deliveries.get(domain)
        if stat is None:
            stat = self.deliveries[domain] = _Delivery()
        return stat

    def _reply(self, reply: _Reply) -> None:
        if reply.detail:  # one step of an attempt; the attempt's outcome line counts
            return
        self._count_reply(reply, reply.direction == "upstream", reply.status, reply.klass)

    def _count_reply(
        self, reply: _Reply, upstream: bool, status: str | None, klass: str | None
    ) -> None:
        """Count one reply (the fields every reply needs given, the rest read from ``reply``
        where a branch needs them): a refusal, warning or hold of ours, or a delivery
        attempt's outcome."""
        if upstream:
            action = reply.action or ""
            if action in _WARN_ACTIONS:
                self.totals["warned"] += 1
            elif action in _KEPT_ACTIONS:  # not a refusal: the message is held or dropped
                self.totals[_KEPT_ACTIONS[action]] += 1
                return
            elif klass != "success":
                self.totals["rejected"] += 1
                self._traffic(reply.ts, "rejected")
        elif status == "sent":
            self._sent(reply)
        elif status == "bounced":
            self.totals["bounced"] += 1
            self._traffic(reply.ts, "bounced")
            domain = _domain_of(reply.recipient)
            self.bounce_domains.setdefault(domain, collections.Counter())[
                reply.reason or "undefined"
            ] += 1
        elif status == "deferred":
            self.totals["deferred"] += 1
            self._traffic(reply.ts, "deferred")
            if reply.queue_id:
                self._deferred_ids.add(reply.queue_id)
            self._domain(reply)
        if klass in _FAILURE_CLASSES:
            self._reason("upstream" if upstream else "downstream", reply)

    def _sent(self, reply: _Reply) -> None:
        if "forwarded as " in (reply.text or ""):
            self.totals["forwarded"] += 1
            return
        self.totals["delivered"] += 1
        self._traffic(reply.ts, "delivered")
        recipient = _address(reply.recipient)
        if recipient:
            self.recipients[recipient] += 1
        stat = self._delivery(_domain_of(recipient))
        stat.sent += 1
        delay = reply.delay
        if delay is not None:
            stat.delay_total += delay
            stat.delays += 1
            stat.delay_max = max(stat.delay_max, float(delay))

    def _reason(self, direction: str, reply: _Reply) -> None:
        reason = reply.reason or "undefined"
        reasons = self.reasons[direction]
        stat = reasons.get(reason)
        if stat is None:
            stat = reasons[reason] = _Reason()
        stat.count += 1
        if stat.example is None:
            stat.example, stat.summary = reply.text, reply.summary
            stat.code, stat.enhanced = reply.code, reply.enhanced
        self.minutes[(int(reply.ts.timestamp()) // 60 * 60, direction, reason)] += 1

    def _domain(self, reply: _Reply) -> None:
        domain = _domain_of(reply.recipient)
        self.domains.setdefault(domain, collections.Counter())[reply.reason or "undefined"] += 1
        self._delivery(domain).deferrals += 1

    def result(self) -> dict[str, Any]:
        """The report as JSON-ready data (keys documented in docs/report.md)."""
        t = self.totals
        totals = {
            k: t.get(k, 0)
            for k in ("received", "delivered", "deferred", "bounced", "rejected", "warned")
        }
        totals["rejected_messages"] = self.statuses.get("rejected", 0)
        totals["deferred_messages"] = len(self._deferred_ids)
        totals["expired"] = self.statuses.get("expired", 0)
        for key in ("forwarded", "held", "discarded", "generated"):
            totals[key] = t.get(key, 0)
        totals["bytes_received"] = t.get("bytes_received", 0)
        totals["bytes_delivered"] = t.get("bytes_delivered", 0)
        totals["senders"] = len(self.senders)
        totals["sending_domains"] = len(self.sending_domains)
        totals["recipients"] = len(self.recipients)
        totals["recipient_domains"] = sum(1 for d in self.deliveries.values() if d.sent)
        return {
            "period": {"first": _iso(self.first), "last": _iso(self.last)},
            "totals": totals,
            "messages": dict(self.statuses.most_common()),
            "reasons": {d: self._top_reasons(d) for d in _DIRECTIONS},
            "deferral_domains": self._top_domains(self.domains, "deferrals"),
            "bounce_domains": self._top_domains(self.bounce_domains, "bounces"),
            "per_hour": self._per_hour(),
            "per_day": self._per_day(),
            "domain_deliveries": self._domain_deliveries(),
            "top_senders": self._top_addresses(self.senders, self.sender_bytes, "sender"),
            "top_sending_domains": self._top_addresses(
                self.sending_domains, self.sending_domain_bytes, "domain"
            ),
            "top_recipients": [
                {"recipient": a, "messages": n} for a, n in _ranked(self.recipients, self.top)
            ],
            "problems": {level: self._problems(level) for level in _LEVELS},
            "sasl": self._sasl(),
            "tls": self._tls(),
            "timeline": self._timeline(),
        }

    def _top_reasons(self, direction: str) -> list[dict[str, Any]]:
        ranked = sorted(self.reasons[direction].items(), key=lambda kv: (-kv[1].count, kv[0]))
        return [
            {
                "reason": reason,
                "count": stat.count,
                "summary": stat.summary,
                "example": stat.example,
                "code": stat.code,
                "enhanced": stat.enhanced,
            }
            for reason, stat in ranked[: self.top]
        ]

    def _top_domains(
        self, domains: Mapping[str, collections.Counter[str]], key: str
    ) -> list[dict[str, Any]]:
        ranked = sorted(domains.items(), key=lambda kv: (-kv[1].total(), kv[0]))
        return [
            {"domain": d, key: c.total(), "reasons": dict(c.most_common())}
            for d, c in ranked[: self.top]
        ]

    def _per_hour(self) -> list[dict[str, Any]]:
        return [{"hour": h, **{k: self.hours.get((h, k), 0) for k in _TRAFFIC}} for h in range(24)]

    def _per_day(self) -> list[dict[str, Any]]:
        days = sorted({d for d, _ in self.days})
        return [
            {
                "date": date.fromordinal(d).isoformat(),
                **{k: self.days.get((d, k), 0) for k in _TRAFFIC},
            }
            for d in days
        ]

    def _domain_deliveries(self) -> list[dict[str, Any]]:
        ranked = sorted(
            self.deliveries.items(), key=lambda kv: (-kv[1].sent, -kv[1].deferrals, kv[0])
        )
        return [
            {
                "domain": domain,
                "sent": d.sent,
                "bytes": d.bytes,
                "deferrals": d.deferrals,
                "average_delay": round(d.delay_total / d.delays, 3) if d.delays else None,
                "max_delay": round(d.delay_max, 3) if d.delays else None,
            }
            for domain, d in ranked[: self.top]
        ]

    def _top_addresses(
        self, counts: collections.Counter[str], sizes: collections.Counter[str], key: str
    ) -> list[dict[str, Any]]:
        return [
            {key: a, "messages": n, "bytes": sizes.get(a, 0)} for a, n in _ranked(counts, self.top)
        ]

    def _problems(self, level: str) -> dict[str, Any]:
        texts = self.warnings.get(level, collections.Counter())
        return {
            "count": texts.total(),
            "top": [
                {"program": program, "message": message, "count": n}
                for (program, message), n in _ranked(texts, self.top)
            ],
        }

    def _sasl(self) -> dict[str, Any]:
        clients: collections.Counter[str] = collections.Counter()
        methods: collections.Counter[str] = collections.Counter()
        for (client, method), n in self.sasl_failures.items():
            clients[client] += n
            methods[method] += n
        return {
            "failures": self.sasl_failures.total(),
            "failures_by_method": dict(methods.most_common()),
            "top_failing_clients": [
                {"client": c, "failures": n} for c, n in _ranked(clients, self.top)
            ],
            "logins": self.sasl_logins.total(),
            "logins_by_method": dict(self.sasl_logins.most_common()),
        }

    def _tls(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for way in ("inbound", "outbound"):
            rows = {k: n for k, n in self.tls.items() if k[0] == way}
            protocols: collections.Counter[str] = collections.Counter()
            trust: collections.Counter[str] = collections.Counter()
            for (_, level, protocol), n in rows.items():
                protocols[protocol] += n
                trust[level] += n
            out[way] = {
                "connections": sum(rows.values()),
                "by_protocol": dict(protocols.most_common()),
                "by_trust": dict(trust.most_common()),
            }
        out["inbound"]["of_connections"] = self.totals.get("connections", 0)
        out["ciphers"] = dict(self.tls_ciphers.most_common(self.top))
        return out

    def _timeline(self) -> dict[str, Any]:
        if not self.minutes:
            return {"bucket_seconds": 60, "reasons": [], "buckets": []}
        start = min(m for m, _, _ in self.minutes)
        end = max(m for m, _, _ in self.minutes)
        width = next((w for w in BUCKET_WIDTHS if (end - start) // w < MAX_BARS), BUCKET_WIDTHS[-1])
        totals: collections.Counter[str] = collections.Counter()
        bins: dict[int, collections.Counter[str]] = {}
        ways: dict[int, collections.Counter[str]] = {}
        for (minute, direction, reason), n in self.minutes.items():
            totals[reason] += n
            bucket = minute // width * width
            bins.setdefault(bucket, collections.Counter())[reason] += n
            ways.setdefault(bucket, collections.Counter())[direction] += n
        return {
            "bucket_seconds": width,
            "reasons": [r for r, _ in totals.most_common()],
            "buckets": [
                {
                    "start": _iso(datetime.fromtimestamp(b, UTC)),
                    "counts": dict(bins[b]),
                    "directions": {d: ways[b].get(d, 0) for d in _DIRECTIONS},
                }
                for b in sorted(bins)
            ],
        }


def _placeholder(match: re.Match[str]) -> str:
    if match[1]:
        return "[address]"
    return "address" if match[2] else "N"


def _ranked(counts: Mapping[Any, int], top: int) -> list[tuple[Any, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:top]


def _address(value: str | None) -> str:
    return (value or "").strip().strip("<>").lower()


def _domain_of(address: str | None) -> str:
    address = _address(address)
    return address.rpartition("@")[2] if "@" in address else "(none)"


def _parse_time(text: str | None, default: datetime) -> datetime:
    if not text:
        return default
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        return default
    return ts if ts.tzinfo is not None else default


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- text ---------------------------------------------------------------------------------------

#: The totals a person reads, in pflogsumm's order: (label, JSON key of the number, note).
TOTAL_ROWS: tuple[tuple[str, str, str], ...] = (
    ("Received", "received", "messages from clients (a queue id and a client)"),
    ("Refused whole", "rejected_messages", "of them refused at DATA or end-of-message"),
    ("Delivered", "delivered", "recipient deliveries"),
    ("Forwarded", "forwarded", "recipient deliveries forwarded"),
    ("Deferred", "deferred_messages", "messages deferred at least once"),
    ("Deferrals", "deferred", "deferral replies"),
    ("Bounced", "bounced", "recipients bounced"),
    ("Rejected", "rejected", "upstream rejects"),
    ("Reject warnings", "warned", "would have been rejected"),
    ("Held", "held", "messages put on hold"),
    ("Discarded", "discarded", "messages discarded"),
    ("Expired", "expired", "messages returned after the maximal queue lifetime"),
    ("Notices generated", "generated", "bounce, delay or success notices this MTA sent"),
    ("Bytes received", "bytes_received", "in messages received"),
    ("Bytes delivered", "bytes_delivered", "in recipient deliveries"),
    ("Senders", "senders", "distinct sender addresses"),
    ("Sending domains", "sending_domains", "distinct sender domains"),
    ("Recipients", "recipients", "distinct recipients delivered to"),
    ("Recipient domains", "recipient_domains", "distinct recipient domains delivered to"),
)
#: Titles of the sections, shared by the text and the HTML page.
TITLES: Mapping[str, str] = {
    "totals": "Grand totals",
    "per_day": "Traffic per day",
    "per_hour": "Traffic per hour of the day",
    "timeline": "Refusals over time",
    "upstream": "Upstream: why we refused clients",
    "downstream": "Downstream: why remote servers refused us",
    "domain_deliveries": "Deliveries per recipient domain",
    "deferral_domains": "Deferrals per recipient domain, by reason",
    "bounce_domains": "Bounces per recipient domain, by reason",
    "top_senders": "Top senders",
    "top_sending_domains": "Top sending domains",
    "top_recipients": "Top recipients",
    "problems": "Warnings, errors, fatal and panic lines",
    "sasl": "SASL authentication",
    "tls": "TLS use",
}
_TRAFFIC_LABELS = ("Received", "Delivered", "Deferrals", "Bounced", "Rejected")
_LEVEL_TITLES = {"warning": "Warnings", "error": "Errors", "fatal": "Fatal", "panic": "Panic"}


def render_text(data: Mapping[str, Any]) -> str:
    """The report as plain text, pflogsumm style; what the logs said is shown with its control
    characters escaped (:func:`~smtp_policy.core.sanitize.printable`), one line per line."""
    t = data["totals"]
    period = data["period"]
    out = [f"Mail log report, {period['first'] or '-'} to {period['last'] or '-'}"]
    out += _heading(TITLES["totals"])
    for label, key, note in TOTAL_ROWS:
        share = _rejected_share(t) if key == "rejected" else ""
        out.append(f"  {label:<18} {t[key]:>11,}  {note}{share}")
    out += _heading(TITLES["per_day"])
    out += _text_traffic("date", data["per_day"])
    out += _heading(TITLES["per_hour"])
    out += _text_traffic("hour", data["per_hour"])
    for direction in ("upstream", "downstream"):
        out += _heading(TITLES[direction])
        out += _text_reasons(data["reasons"][direction])
    out += _heading(TITLES["domain_deliveries"])
    out += _text_table(
        ("Sent", "Bytes", "Deferrals", "Avg delay", "Max delay", "Domain"),
        [
            (d["sent"], d["bytes"], d["deferrals"], _seconds(d["average_delay"]),
             _seconds(d["max_delay"]), d["domain"])
            for d in data["domain_deliveries"]
        ],
    )  # fmt: skip
    for key, count in (("deferral_domains", "deferrals"), ("bounce_domains", "bounces")):
        out += _heading(TITLES[key])
        out += [
            f"  {d[count]:>9,}  {d['domain']}  "
            + ", ".join(f"{r} {n}" for r, n in d["reasons"].items())
            for d in data[key]
        ] or ["  (none)"]
    for key, name in (
        ("top_senders", "sender"),
        ("top_sending_domains", "domain"),
        ("top_recipients", "recipient"),
    ):
        out += _heading(TITLES[key])
        rows = [
            (r["messages"], *([r["bytes"]] if "bytes" in r else []), r[name]) for r in data[key]
        ]
        columns = (
            ("Messages", "Bytes", name.title())
            if "sender" in key or "sending" in key
            else ("Messages", name.title())
        )
        out += _text_table(columns, rows)
    out += _heading(TITLES["problems"])
    for level, title in _LEVEL_TITLES.items():
        problems = data["problems"][level]
        out.append(f"  {title}: {problems['count']:,}")
        out += [
            f"  {p['count']:>9,}  {p['program']}: {_cut(p['message'], 100)}"
            for p in problems["top"]
        ]
    out += _heading(TITLES["sasl"])
    sasl = data["sasl"]
    out.append(
        f"  Failed logins:     {sasl['failures']:>9,}  " + _pairs(sasl["failures_by_method"])
    )
    out += [f"  {c['failures']:>9,}  {c['client']}" for c in sasl["top_failing_clients"]]
    out.append(f"  Logins (messages): {sasl['logins']:>9,}  " + _pairs(sasl["logins_by_method"]))
    out += _heading(TITLES["tls"])
    tls = data["tls"]
    inbound, outbound = tls["inbound"], tls["outbound"]
    out.append(
        f"  Inbound:  {inbound['connections']:>9,} TLS connections of "
        f"{inbound['of_connections']:,} connections  " + _pairs(inbound["by_protocol"])
    )
    out.append(
        f"  Outbound: {outbound['connections']:>9,} TLS connections  "
        + _pairs(outbound["by_protocol"])
    )
    if tls["ciphers"]:
        out.append("  Ciphers: " + _pairs(tls["ciphers"]))
    return "\n".join(printable(line).rstrip() for line in out) + "\n"


def _rejected_share(totals: Mapping[str, int]) -> str:
    """The rejects' share of the messages clients tried to send, as pflogsumm shows it."""
    tried = totals["received"] + totals["rejected"]
    return f" ({100 * totals['rejected'] / tried:.0f}% of messages tried)" if tried else ""


def _heading(title: str) -> list[str]:
    return ["", title, "-" * len(title)]


def _pairs(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in counts.items())


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _text_traffic(key: str, rows: list[dict[str, Any]]) -> list[str]:
    if key == "hour":
        label = "Hour"
        cells = [(f"{r['hour']:02d}00-{r['hour'] + 1:02d}00", r) for r in rows]
    else:
        label = "Date"
        cells = [(r["date"], r) for r in rows]
    return _text_table(
        (label, *_TRAFFIC_LABELS), [(name, *(r[k] for k in _TRAFFIC)) for name, r in cells]
    )


def _text_table(columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    """Numbers right-aligned, text left-aligned, the last text column unpadded."""
    if not rows:
        return ["  (none)"]
    shown = [[f"{v:,}" if isinstance(v, int) else str(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in shown)) for i, c in enumerate(columns)]
    numeric = [isinstance(v, int) or str(v).endswith(" s") for v in rows[0]]

    def line(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            last = i == len(cells) - 1
            if numeric[i]:
                out.append(cell.rjust(widths[i]))
            else:
                out.append(cell if last else cell.ljust(widths[i]))
        return "  " + "  ".join(out).rstrip()

    return [line(list(columns)), line(["-" * w for w in widths]), *(line(r) for r in shown)]


def _text_reasons(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["  (none)"]
    out = []
    for row in rows:
        out.append(f"  {row['count']:>9,}  {row['reason']:<18} {row['summary'] or ''}")
        if row["example"]:
            out.append(f"  {'':>9}  e.g. {_cut(row['example'], 110)}")
    return out


def _cut(text: str, width: int) -> str:
    """``text`` at most ``width`` characters, cut at a space where one is near the end."""
    if len(text) <= width:
        return text
    head = text[: width - 1]
    space = head.rfind(" ")
    if space >= width * 2 // 3:
        head = head[:space]
    return head.rstrip() + "…"


# -- HTML ---------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.8em}h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;width:100%}td,th{padding:.25em .6em;text-align:left;
vertical-align:top;border-bottom:1px solid #ddd}td.n,th.n{text-align:right;white-space:nowrap}
.note{color:#666}.ex{color:#555;font-family:ui-monospace,monospace;font-size:.85em;
white-space:normal;overflow-wrap:normal;word-break:normal}
.bar{background:#4e79a7;height:.8em;display:inline-block}.legend span{margin-right:1.5em}
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.3em}
svg text{font:11px system-ui,sans-serif;fill:#333}
"""
#: Longest example reply shown whole; a longer one is cut at a space, the full text in a tooltip.
EXAMPLE_CHARS = 160
_BREAK_AFTER = re.compile(r"([/.,;=:@])")
_DIRECTION_LABELS = {
    "upstream": "Upstream: we refused clients",
    "downstream": "Downstream: remote servers refused us",
}


def render_html(data: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, nothing external); each
    section is a ``<section id=KEY>`` with the key of its JSON part."""
    period = data["period"]
    sections = [
        ("totals", _html_totals(data["totals"])),
        ("timeline", _html_timeline(data["timeline"])),
        ("per_day", _html_traffic("date", data["per_day"])),
        ("per_hour", _html_traffic("hour", data["per_hour"])),
        ("upstream", _html_reasons(data["reasons"]["upstream"])),
        ("downstream", _html_reasons(data["reasons"]["downstream"])),
        ("domain_deliveries", _html_deliveries(data["domain_deliveries"])),
        ("deferral_domains", _html_domains(data["deferral_domains"], "deferrals")),
        ("bounce_domains", _html_domains(data["bounce_domains"], "bounces")),
        ("top_senders", _html_addresses(data["top_senders"], "sender", "Sender")),
        ("top_sending_domains", _html_addresses(data["top_sending_domains"], "domain", "Domain")),
        ("top_recipients", _html_addresses(data["top_recipients"], "recipient", "Recipient")),
        ("problems", _html_problems(data["problems"])),
        ("sasl", _html_sasl(data["sasl"])),
        ("tls", _html_tls(data["tls"])),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Mail log report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Mail log report</h1>",
        f"<p>{_e(period['first'] or '-')} to {_e(period['last'] or '-')}</p>",
        *(
            f'<section id="{key}"><h2>{_e(TITLES[key])}</h2>{body}</section>'
            for key, body in sections
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(head: list[tuple[str, bool]], rows: Iterable[list[str]]) -> str:
    """A table; ``head`` is (label, numeric) per column, rows are cells already escaped."""
    body = "".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    if not body:
        return "<p>None.</p>"
    th = "".join(f"<th{' class=n' if numeric else ''}>{_e(label)}</th>" for label, numeric in head)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _n(value: int | float | None, unit: str = "") -> str:
    if value is None:
        return '<td class="n">-</td>'
    shown = f"{value:,}" if isinstance(value, int) else f"{value:.1f}"
    return f'<td class="n">{shown}{unit}</td>'


def _html_totals(totals: Mapping[str, int]) -> str:
    rows = [
        [
            f"<th>{_e(label)}</th>",
            _n(totals[key]),
            f'<td class="note">{_e(note)}{_e(_rejected_share(totals)) if key == "rejected" else ""}'
            "</td>",
        ]
        for label, key, note in TOTAL_ROWS
    ]
    return _table([("Total", False), ("Count", True), ("What it counts", False)], rows)


def _html_traffic(key: str, rows: list[dict[str, Any]]) -> str:
    def name(row: dict[str, Any]) -> str:
        if key == "hour":
            return f"{row['hour']:02d}:00–{row['hour'] + 1:02d}:00"
        return str(row["date"])

    head = [("Hour" if key == "hour" else "Date", False), *((t, True) for t in _TRAFFIC_LABELS)]
    return _table(head, ([f"<td>{_e(name(r))}</td>", *(_n(r[k]) for k in _TRAFFIC)] for r in rows))


def _example(text: str | None) -> str:
    """A reply for reading: cut at a space with an ellipsis (the whole text in the title),
    long tokens (URLs, addresses) breakable only after punctuation, never mid-word."""
    if not text:
        return ""
    shown = _cut(text, EXAMPLE_CHARS)
    words = []
    for word in shown.split(" "):
        escaped = _e(word)
        words.append(_BREAK_AFTER.sub(r"\1<wbr>", escaped) if len(word) > 30 else escaped)
    title = f' title="{_e(text)}"' if shown != text else ""
    return f'<div class="ex"{title}>{" ".join(words)}</div>'


def _html_reasons(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>None.</p>"
    top = max(r["count"] for r in rows)
    return _table(
        [("Count", True), ("", False), ("Reason, what it means, an example reply", False)],
        (
            [
                _n(r["count"]),
                f'<td><span class="bar" style="width:{max(1, round(8 * r["count"] / top))}em">'
                "</span></td>",
                f"<td><b>{_e(r['reason'])}</b><br>{_e(r['summary'])}{_example(r['example'])}</td>",
            ]
            for r in rows
        ),
    )


def _html_deliveries(rows: list[dict[str, Any]]) -> str:
    head = [
        ("Domain", False),
        ("Sent", True),
        ("Bytes", True),
        ("Deferrals", True),
        ("Average delay", True),
        ("Maximum delay", True),
    ]
    return _table(
        head,
        (
            [
                f"<td>{_e(d['domain'])}</td>",
                _n(d["sent"]),
                _n(d["bytes"]),
                _n(d["deferrals"]),
                _n(d["average_delay"], " s"),
                _n(d["max_delay"], " s"),
            ]
            for d in rows
        ),
    )


def _html_domains(rows: list[dict[str, Any]], count: str) -> str:
    return _table(
        [("Domain", False), (count.title(), True), ("By reason", False)],
        (
            [
                f"<td>{_e(d['domain'])}</td>",
                _n(d[count]),
                f"<td>{_e(_pairs(d['reasons']))}</td>",
            ]
            for d in rows
        ),
    )


def _html_addresses(rows: list[dict[str, Any]], key: str, label: str) -> str:
    with_bytes = any("bytes" in r for r in rows)
    head = [(label, False), ("Messages", True), *([("Bytes", True)] if with_bytes else [])]
    return _table(
        head,
        (
            [
                f"<td>{_e(r[key])}</td>",
                _n(r["messages"]),
                *([_n(r["bytes"])] if with_bytes else []),
            ]
            for r in rows
        ),
    )


def _html_problems(problems: Mapping[str, Any]) -> str:
    out = []
    for level, title in _LEVEL_TITLES.items():
        found = problems[level]
        out.append(f"<h3>{_e(title)}: {found['count']:,}</h3>")
        rows = [
            [_n(p["count"]), f"<td>{_e(p['program'])}</td>", f"<td>{_example(p['message'])}</td>"]
            for p in found["top"]
        ]
        if rows:
            out.append(_table([("Count", True), ("Program", False), ("Message", False)], rows))
    return "".join(out)


def _html_sasl(sasl: Mapping[str, Any]) -> str:
    summary = _table(
        [("", False), ("Count", True), ("By method", False)],
        [
            ["<th>Failed logins</th>", _n(sasl["failures"]),
             f"<td>{_e(_pairs(sasl['failures_by_method']))}</td>"],
            ["<th>Messages from logged-in clients</th>", _n(sasl["logins"]),
             f"<td>{_e(_pairs(sasl['logins_by_method']))}</td>"],
        ],
    )  # fmt: skip
    clients = _table(
        [("Client failing to log in", False), ("Failures", True)],
        ([f"<td>{_e(c['client'])}</td>", _n(c["failures"])] for c in sasl["top_failing_clients"]),
    )
    return summary + (clients if sasl["top_failing_clients"] else "")


def _html_tls(tls: Mapping[str, Any]) -> str:
    inbound, outbound = tls["inbound"], tls["outbound"]
    rows = [
        [
            "<th>Inbound (clients to us)</th>",
            _n(inbound["connections"]),
            _n(inbound["of_connections"]),
            f"<td>{_e(_pairs(inbound['by_protocol']))}</td>",
            f"<td>{_e(_pairs(inbound['by_trust']))}</td>",
        ],
        [
            "<th>Outbound (us to remote servers)</th>",
            _n(outbound["connections"]),
            _n(None),
            f"<td>{_e(_pairs(outbound['by_protocol']))}</td>",
            f"<td>{_e(_pairs(outbound['by_trust']))}</td>",
        ],
    ]
    head = [
        ("", False),
        ("TLS connections", True),
        ("All connections", True),
        ("Protocols", False),
        ("Certificate trust", False),
    ]
    ciphers = f"<p>Ciphers: {_e(_pairs(tls['ciphers']))}</p>" if tls["ciphers"] else ""
    return _table(head, rows) + ciphers


def _html_timeline(timeline: Mapping[str, Any]) -> str:
    """Grouped bars, one series per direction, with labelled axes."""
    buckets = timeline["buckets"]
    if not buckets:
        return "<p>No refusals.</p>"
    seconds = timeline["bucket_seconds"]
    first = _parse_time(buckets[0]["start"], datetime.now(UTC)).timestamp()
    last = _parse_time(buckets[-1]["start"], datetime.now(UTC)).timestamp()
    slots = int(last - first) // seconds + 1  # the x axis is time: empty buckets keep a place
    left, top, plot_w, plot_h, bottom = 64, 12, 680, 200, 46
    width, height = left + plot_w + 48, top + plot_h + bottom  # room for the last time label
    peak = max(max(b["directions"].values()) for b in buckets) or 1
    slot = plot_w / slots
    bar = max(1.0, (slot - 2) / 2)
    out = []
    for b in buckets:
        i = int(_parse_time(b["start"], datetime.now(UTC)).timestamp() - first) // seconds
        for j, direction in enumerate(_DIRECTIONS):
            n = b["directions"][direction]
            if not n:
                continue
            h = max(1.0, plot_h * n / peak)
            x = left + i * slot + 1 + j * bar
            out.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{_PALETTE[direction]}"><title>{_e(b["start"])} '
                f"{_e(_DIRECTION_LABELS[direction])}: {n:,}</title></rect>"
            )
    axis = 'stroke="#333" stroke-width="1"'
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" {axis}/>')
    out.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" {axis}/>'
    )
    for value in sorted({0, peak // 2, peak}):
        y = top + plot_h - plot_h * value / peak
        out.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" {axis}/>')
        out.append(f'<text x="{left - 7}" y="{y + 4:.1f}" text-anchor="end">{value:,}</text>')
    for i in sorted({0, slots // 2, slots - 1}):
        x = left + i * slot + slot / 2
        start = datetime.fromtimestamp(first + i * seconds, UTC).strftime("%m-%d %H:%M")
        tick = f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}"'
        out.append(f"{tick} {axis}/>")
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 17}" text-anchor="middle">{start}</text>')
    per = _span_words(seconds)
    out.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">'
        "Time (UTC, month-day hour:minute; start of each bar)</text>"
    )
    out.append(
        f'<text transform="translate(14 {top + plot_h / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">Refusals per {per}</text>'
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="refusals over time, upstream and downstream">{"".join(out)}</svg>'
    )
    legend = "".join(
        f'<span><i class="sw" style="background:{_PALETTE[d]}"></i>{_e(_DIRECTION_LABELS[d])}'
        "</span>"
        for d in _DIRECTIONS
    )
    totals = {d: sum(b["directions"][d] for b in buckets) for d in _DIRECTIONS}
    caption = (
        f"<p>{_e(buckets[0]['start'])} to {_e(buckets[-1]['start'])}, one pair of bars per "
        f"{per}; upstream {totals['upstream']:,}, downstream {totals['downstream']:,}"
        f", highest bar {peak:,}</p>"
    )
    return f'{svg}<div class="legend">{legend}</div>{caption}'


def _span_words(seconds: int) -> str:
    """A bucket's width for a person: "5 min", "hour", "3 hours", "day", "7 days"."""
    for size, unit in ((86400, "day"), (3600, "hour")):
        if seconds % size == 0:
            n = seconds // size
            return unit if n == 1 else f"{n} {unit}s"
    return f"{seconds // 60} min"
